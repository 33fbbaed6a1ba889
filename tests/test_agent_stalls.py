"""No silent stuck job: work whose Ray tasks cannot start says why, then is retried and failed.

The indexer tasks ask for a resource the cluster does not have (the
``agent.task_resources`` setting), on the session's Ray instance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lance
import pytest

from lancedb_ray import cli
from lancedb_ray.agent import core
from lancedb_ray.agent.core import LanceAgent
from lancedb_ray.agent.jobs import Job, JobKind, JobState
from lancedb_ray.agent.store import LocalJobStore
from lancedb_ray.errors import JobStalled
from lancedb_ray.indexers import TableHandle, compact, optimize_indices
from lancedb_ray.indexers.runtime import JobContext
from lancedb_ray.resources import TaskResources
from tests.test_agent_core import event, indexed_table, make_settings, publish, rows, run_until, unindexed

pytestmark = pytest.mark.ray
MISSING = {"no-such-resource": 1.0}
REASON = "cannot be scheduled: needs {CPU: 0.1, no-such-resource: 1}"


def test_a_task_that_cannot_start_is_reported_then_stops_the_work(ray_cluster: None, tmp_path: Path) -> None:
    table = indexed_table(tmp_path / "data")
    table.add(rows(50, 300))
    before = table.version
    reports: list[tuple[str, float | None, str | None]] = []
    ctx = JobContext(TaskResources(0.1, MISSING), stall_seconds=2.0,
                     report=lambda *progress: reports.append(progress))
    handle = TableHandle("db", "t", str(tmp_path / "data" / "db" / "t.lance"))

    with pytest.raises(JobStalled, match=REASON.replace("{", r"\{").replace("}", r"\}")):
        optimize_indices(handle, ctx=ctx)

    waiting = [why for _, _, why in reports if why]
    assert waiting and waiting[0].startswith(REASON) and "the largest node has {CPU: 8" in waiting[0]
    assert lance.dataset(handle.uri).version == before  # nothing half done
    assert unindexed(tmp_path / "data") == 50


def test_a_lance_ray_operation_waits_for_room_before_the_hand_over(ray_cluster: None,
                                                                   tmp_path: Path) -> None:
    """lance-ray's pool would wait for its actors without a word; the wait happens (and stalls) first."""
    table = indexed_table(tmp_path / "data")
    for start in range(300, 600, 100):
        table.add(rows(100, start))
    before = table.version
    reports: list[tuple[str, float | None, str | None]] = []
    ctx = JobContext(TaskResources(0.1, MISSING), stall_seconds=2.0,
                     report=lambda *progress: reports.append(progress))
    handle = TableHandle("db", "t", str(tmp_path / "data" / "db" / "t.lance"))

    with pytest.raises(JobStalled, match=REASON.replace("{", r"\{").replace("}", r"\}")):
        compact(handle, target_rows_per_fragment=10_000, parallelism=2, ctx=ctx)

    assert reports and all(step == "rewriting fragments" and why.startswith(REASON)
                           for step, _, why in reports)
    assert lance.dataset(handle.uri).version == before


def test_the_agent_shows_why_a_job_waits_then_retries_and_fails_it(
        ray_cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path, task_num_cpus=0.1, task_resources=MISSING, stall_seconds=2.0,
                             max_attempts=2)
    table = indexed_table(tmp_path / "data")
    table.add(rows(50, 300))
    store = LocalJobStore(settings.agent.jobs_directory)
    stalled: list[dict[str, Any]] = []
    monkeypatch.setattr(core.METRICS, "inc", lambda name, value=1, **tags: stalled.append(
        {"name": name, **tags}) if name == "jobs_stalled_total" else None)
    seen_waiting: list[Job] = []

    def failed() -> bool:
        jobs = store.list()
        seen_waiting.extend(job for job in jobs if job.state is JobState.RUNNING and job.waiting)
        return any(job.state is JobState.FAILED for job in jobs)

    publish(settings, event("t", table.version))
    run_until(LanceAgent(settings), failed, timeout_s=120)

    (job,) = store.list()
    assert job.kind is JobKind.OPTIMIZE_INDICES and job.state is JobState.FAILED and job.attempts == 2
    assert job.error.startswith(f"JobStalled: {REASON}") and job.waiting is None
    assert seen_waiting and seen_waiting[0].waiting.startswith(REASON)  # shown while it waited
    assert seen_waiting[0].step == "indexing new rows"
    assert stalled == [{"name": "jobs_stalled_total", "kind": "optimize_indices"}] * 2
    assert unindexed(tmp_path / "data") == 50

    config = tmp_path / "settings.yaml"
    config.write_text(f"storage: {{root: {{uri: '{tmp_path / 'data'}'}}}}\n"
                      f"agent: {{jobs_directory: '{settings.agent.jobs_directory}'}}\n")
    assert cli.main(["jobs", "--config", str(config)]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()[1:]
    assert "failed" in line.split() and "JobStalled: cannot be scheduled" in line


def test_a_feasible_task_waits_for_free_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    from lancedb_ray.indexers import runtime

    monkeypatch.setattr(runtime.ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])
    monkeypatch.setattr(runtime.ray, "available_resources", lambda: {"CPU": 0.75})
    assert runtime.waiting_reason({"CPU": 1.0}) == "waiting for resources: needs {CPU: 1}, free {CPU: 0.75}"
    assert runtime.waiting_reason({"CPU": 0.5}) is None
