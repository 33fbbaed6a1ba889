"""The Lance agent without Ray: records, the job store, decisions, debouncing, checkpoints."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import lance
import lancedb
import numpy as np
import pyarrow as pa
import pytest
from lancedb.index import BTree, IvfPq

from lancedb_ray.agent.decide import decide, index_segments, still_needed, untrained_share
from lancedb_ray.agent.jobs import Job, JobKind, JobState
from lancedb_ray.agent.report import format_jobs
from lancedb_ray.agent.store import expired, open_job_store, select
from lancedb_ray.agent.tables import IndexState, TableState, read_state
from lancedb_ray.agent.tracking import CheckpointTracker, Debouncer
from lancedb_ray.events.bus import Delivery
from lancedb_ray.events.model import ChangeEvent
from lancedb_ray.settings import AgentSettings, Settings

DIM = 8
AGENT = AgentSettings()


def rows(count: int, start: int = 0) -> pa.Table:
    rng = np.random.default_rng(start)
    return pa.table({
        "id": np.arange(start, start + count),
        "text": [f"document {i}" for i in range(start, start + count)],
        "vector": pa.array(rng.normal(size=(count, DIM)).astype("float32").tolist(),
                           pa.list_(pa.float32(), DIM)),
    })


def state(
    *,
    indices: tuple[IndexState, ...] = (),
    fragments: tuple[int, ...] = (300_000,),
    deleted: tuple[int, ...] | None = None,
    versions: int = 3,
    oldest_age_s: float = 60.0,
) -> TableState:
    deleted = deleted if deleted is not None else tuple(0 for _ in fragments)
    return TableState(
        database="db", table="t", uri="/nowhere/t.lance", version=versions,
        num_rows=sum(fragments) - sum(deleted), fragment_rows=fragments, fragment_deleted=deleted,
        indices=indices, num_versions=versions, oldest_version_time=time.time() - oldest_age_s,
    )


def vector_index(indexed: int, unindexed: int, trained: int | None) -> IndexState:
    return IndexState("vector_idx", "IVF_PQ", ("vector",), indexed, unindexed, trained)


# -- job records and the store -----------------------------------------------------------------


def test_job_record_round_trips_and_ignores_unknown_fields() -> None:
    job = Job.new("db", "t", JobKind.RETRAIN, 7, index="vector_idx", trigger="reconcile")
    assert Job.from_json(job.to_json()) == job
    raw = json.loads(job.to_json())
    raw["added_by_a_newer_agent"] = 1
    assert Job.from_json(json.dumps(raw).encode()) == job
    for bad in (b"{", b"[]", b'{"id": "x"}', json.dumps({**raw, "state": "exploded"}).encode()):
        with pytest.raises(ValueError, match="not a job record"):
            Job.from_json(bad)


def test_job_transitions_count_attempts_and_times() -> None:
    job = Job.new("db", "t", JobKind.OPTIMIZE_INDICES, 3)
    assert job.state is JobState.PENDING and job.attempts == 0 and job.duration_s is None
    running = job.started()
    assert running.state is JobState.RUNNING and running.attempts == 1 and running.started_at
    retry = running.attempt_failed("OSError: boom", final=False)
    assert retry.state is JobState.PENDING and retry.error == "OSError: boom"
    assert retry.finished_at is None
    done = retry.started().succeeded(4, "indexed")
    assert (done.state, done.attempts, done.result_version, done.error) == (
        JobState.SUCCEEDED, 2, 4, None)
    assert done.duration_s is not None and done.duration_s >= 0
    assert running.attempt_failed("x", final=True).state is JobState.FAILED


def test_store_location_follows_the_storage_root(tmp_path: Path) -> None:
    local = Settings(storage={"root": {"uri": str(tmp_path / "data")}},
                     agent={"jobs_directory": str(tmp_path / "jobs")})
    assert open_job_store(local).where == str(tmp_path / "jobs")
    azure = Settings(storage={"root": {"account": "acct", "container": "lancedb", "prefix": "dbs",
                                       "credential": "account_key", "account_key": "a2V5"}})
    assert open_job_store(azure).where == "az://lancedb/dbs/.system/jobs"


def test_select_filters_newest_first_and_expired_keeps_active_jobs() -> None:
    now = time.time()
    old_done = replace(Job.new("db", "a", JobKind.COMPACT, 1, created_at=now - 100).started()
                       .succeeded(2, "ok"), finished_at=now - 95)
    old_pending = Job.new("db", "a", JobKind.CLEANUP, 1, created_at=now - 90)
    new_failed = Job.new("db", "b", JobKind.RETRAIN, 5, created_at=now).started().attempt_failed(
        "e", final=True)
    jobs = [old_done, old_pending, new_failed]
    assert [j.id for j in select(jobs)] == [new_failed.id, old_pending.id, old_done.id]
    assert select(jobs, state="failed") == [new_failed]
    assert select(jobs, database="db", table="a", limit=1) == [old_pending]
    assert len(select(jobs, limit=2)) == 2
    assert expired(jobs, retention_seconds=50, now=now) == [old_done.id]  # not the pending one


def test_format_jobs_prints_one_line_per_job() -> None:
    job = Job.new("db", "t", JobKind.RETRAIN, 3, index="vector_idx").started().succeeded(4, "done")
    lines = format_jobs([job.to_dict()]).splitlines()
    assert lines[0].split() == ["id", "state", "kind", "database", "table", "version", "attempts",
                                "duration", "result", "progress", "error/waiting"]
    assert lines[1].split()[:7] == [job.id, "succeeded", "retrain(vector_idx)", "db", "t", "3", "1"]
    waiting = Job.new("db", "t", JobKind.COMPACT, 3).started().progressed(
        "rewriting fragments", 0.5, "waiting for resources: needs {CPU: 1}, free {CPU: 0.75}")
    line = format_jobs([waiting.to_dict()]).splitlines()[1]
    assert "rewriting fragments 50%" in line
    assert line.endswith("waiting for resources: needs {CPU: 1}, free {CPU: 0.75}")
    assert format_jobs([]) == "no jobs"


# -- decisions ---------------------------------------------------------------------------------


def test_a_table_without_indices_and_few_fragments_needs_nothing() -> None:
    assert decide(state(), AGENT, time.time()) == []


def test_unindexed_rows_need_an_index_optimisation() -> None:
    scalar = IndexState("id_idx", "BTree", ("id",), 300_000, 100, 300_000)
    (need,) = decide(state(indices=(scalar,)), AGENT, time.time())
    assert need.kind is JobKind.OPTIMIZE_INDICES and "id_idx: 100" in need.reason


def test_growth_past_the_threshold_retrains_the_vector_index_first() -> None:
    index = vector_index(indexed=100_000, unindexed=200_000, trained=100_000)
    needs = decide(state(indices=(index,)), AGENT, time.time())
    assert [(n.kind, n.index) for n in needs] == [
        (JobKind.RETRAIN, "vector_idx"), (JobKind.OPTIMIZE_INDICES, None)]
    assert untrained_share(index) == pytest.approx(2 / 3)


def test_deltas_merged_without_training_count_as_untrained() -> None:
    merged = vector_index(indexed=300_000, unindexed=0, trained=100_000)  # all indexed, 1/3 trained
    assert [n.kind for n in decide(state(indices=(merged,)), AGENT, time.time())] == [JobKind.RETRAIN]
    below = vector_index(indexed=300_000, unindexed=0, trained=200_000)
    assert decide(state(indices=(below,)), AGENT, time.time()) == []


def test_unknown_training_size_falls_back_to_the_unindexed_share() -> None:
    index = vector_index(indexed=100, unindexed=400, trained=None)
    kinds = [n.kind for n in decide(state(indices=(index,), fragments=(500,)), AGENT, time.time())]
    assert kinds == [JobKind.RETRAIN, JobKind.OPTIMIZE_INDICES]


def test_small_tables_are_never_retrained() -> None:
    index = vector_index(indexed=100, unindexed=100, trained=100)
    kinds = [n.kind for n in decide(state(indices=(index,), fragments=(200,)), AGENT, time.time())]
    assert kinds == [JobKind.OPTIMIZE_INDICES]


def test_a_vector_index_too_small_to_train_is_left_until_the_table_grows() -> None:
    """lance writes an IVF_PQ index on too few rows that covers none: optimising it indexes nothing
    (and would commit a new version on every look); once big enough, it is retrained."""
    empty = vector_index(indexed=0, unindexed=250, trained=None)
    assert decide(state(indices=(empty,), fragments=(250,)), AGENT, time.time()) == []
    grown = vector_index(indexed=0, unindexed=300, trained=None)
    kinds = [n.kind for n in decide(state(indices=(grown,), fragments=(300,)), AGENT, time.time())]
    assert kinds == [JobKind.RETRAIN, JobKind.OPTIMIZE_INDICES]


def test_small_or_deletion_heavy_fragments_call_for_compaction() -> None:
    seven = state(fragments=(1000,) * 7)
    assert decide(seven, AGENT, time.time()) == []
    eight = state(fragments=(1000,) * 8)
    assert [n.kind for n in decide(eight, AGENT, time.time())] == [JobKind.COMPACT]
    big = 1_000_000
    deleted = state(fragments=(big,) * 8, deleted=(big // 5,) * 8)
    assert [n.kind for n in decide(deleted, AGENT, time.time())] == [JobKind.COMPACT]


def test_versions_past_the_retention_are_cleaned_up_last() -> None:
    settings = AgentSettings(version_retention_seconds=3600)
    index = IndexState("id_idx", "BTree", ("id",), 10, 5, 10)
    old = state(indices=(index,), fragments=(1000,) * 8, oldest_age_s=7200)
    assert [n.kind for n in decide(old, settings, time.time())] == [
        JobKind.COMPACT, JobKind.OPTIMIZE_INDICES, JobKind.CLEANUP]
    assert decide(state(oldest_age_s=60), settings, time.time()) == []
    assert decide(state(versions=1, oldest_age_s=7200), settings, time.time()) == []


def test_unmaintained_databases_get_no_automatic_job() -> None:
    settings = AgentSettings(version_retention_seconds=3600, unmaintained_databases=["replay*", "audit"])
    index = IndexState("id_idx", "BTree", ("id",), 10, 5, 10)
    everything = state(indices=(index,), fragments=(1000,) * 8, oldest_age_s=7200)
    assert len(decide(everything, settings, time.time())) == 3  # database "db" is maintained
    for database in ("replay", "replay-7", "audit"):
        assert decide(replace(everything, database=database), settings, time.time()) == []
    assert len(decide(replace(everything, database="audits"), settings, time.time())) == 3
    with pytest.raises(ValueError, match="prefix"):
        AgentSettings(unmaintained_databases=["a*b"])


def test_still_needed_matches_kind_and_index() -> None:
    index = vector_index(indexed=100_000, unindexed=200_000, trained=100_000)
    current = state(indices=(index,))
    assert still_needed(current, AGENT, JobKind.RETRAIN, "vector_idx", time.time()) is not None
    assert still_needed(current, AGENT, JobKind.RETRAIN, "other_idx", time.time()) is None
    assert still_needed(current, AGENT, JobKind.COMPACT, None, time.time()) is None


def test_large_tables_are_rebuilt_in_segments() -> None:
    assert index_segments(state(fragments=(50_000,)), AGENT) == 1
    assert index_segments(state(fragments=(500_000,)), AGENT) == AGENT.index_segments


def test_state_is_read_from_the_table_on_storage(tmp_path: Path) -> None:
    db = lancedb.connect(tmp_path)
    table = db.create_table("t", rows(1000))
    table.create_index("vector", config=IvfPq(distance_type="l2", num_partitions=2, num_sub_vectors=2))
    table.create_index("id", config=BTree())
    table.add(rows(1500, 1000))
    table.delete("id < 40")
    current = read_state("db", "t", table.to_lance())
    assert current.version == table.version and current.num_versions == table.version
    assert current.fragment_rows == (1000, 1500) and current.fragment_deleted == (40, 0)
    assert current.num_rows == 2460
    by_name = {index.name: index for index in current.indices}
    assert set(by_name) == {"vector_idx", "id_idx"}
    assert by_name["vector_idx"].is_vector and not by_name["id_idx"].is_vector
    assert by_name["vector_idx"].num_unindexed_rows == 1500
    assert by_name["vector_idx"].trained_rows == 1000
    assert current.unindexed_rows == 1500
    kinds = [n.kind for n in decide(current, AGENT, time.time())]
    assert kinds == [JobKind.RETRAIN, JobKind.OPTIMIZE_INDICES]
    dataset = lance.dataset(current.uri)
    dataset.optimize.optimize_indices()
    after = read_state("db", "t", lance.dataset(current.uri))
    assert after.unindexed_rows == 0
    assert [n.kind for n in decide(after, AGENT, time.time())] == [JobKind.RETRAIN]  # deltas only


def test_state_costs_the_same_however_long_the_history(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Latest manifest, the oldest one and an index's base version only: never every manifest."""
    table = lancedb.connect(tmp_path).create_table("t", rows(600))
    table.create_index("vector", config=IvfPq(distance_type="l2", num_partitions=2, num_sub_vectors=2))
    for i in range(6):
        table.add(rows(50, 600 + 50 * i))
    history = lance.dataset(table.to_lance().uri).versions()  # what the whole history says
    opened: list[int] = []
    original = lance.LanceDataset.checkout_version
    monkeypatch.setattr(lance.LanceDataset, "versions", lambda self: pytest.fail("read every manifest"))
    monkeypatch.setattr(lance.LanceDataset, "checkout_version",
                        lambda self, version: opened.append(version) or original(self, version))

    current = read_state("db", "t", lance.dataset(table.to_lance().uri))
    assert current.num_versions == len(history) == table.version
    assert current.oldest_version_time == history[0]["timestamp"].timestamp()
    assert current.latest_version_time == history[-1]["timestamp"].timestamp()
    (index,) = current.indices
    assert index.trained_rows == 600 and index.num_unindexed_rows == 300
    assert opened == [1]  # the oldest version, which is also the one the index was trained on


# -- debouncing and checkpoints ----------------------------------------------------------------


def _delivery(table: str, position: int) -> Delivery:
    return Delivery(ChangeEvent("db", table, position, "insert", 1, time.time()), position)


def test_debouncer_waits_for_quiet_but_not_forever() -> None:
    debouncer = Debouncer(quiet_s=2, max_wait_s=5)
    a1, a2, b1 = _delivery("a", 1), _delivery("a", 2), _delivery("b", 3)
    debouncer.touch("db/a", 0.0, a1)
    debouncer.touch("db/b", 0.5, b1)
    debouncer.touch("db/a", 1.5, a2)
    assert debouncer.due(2.0) == []
    assert debouncer.due(2.6) == [("db/b", [b1])]
    assert debouncer.next_due() == pytest.approx(3.5)
    assert debouncer.due(3.6, busy={"db/a"}) == []  # being looked at already: wait
    assert debouncer.due(3.6) == [("db/a", [a1, a2])]
    for t in (0.0, 1.5, 3.0, 4.5):  # a table written without pause is still looked at
        debouncer.touch("db/a", t)
    assert debouncer.due(5.0) == [("db/a", [])]
    debouncer.defer("db/b", [b1], now=10.0, delay_s=5.0)
    assert debouncer.due(13.0) == [] and debouncer.due(15.0) == [("db/b", [b1])]


def test_checkpoint_advances_only_over_a_handled_prefix() -> None:
    tracker = CheckpointTracker()
    first, second, third = _delivery("a", 1), _delivery("b", 2), _delivery("a", 3)
    for delivery in (first, second, third):
        tracker.add(delivery)
    tracker.handled([second])
    assert tracker.ready() == [] and tracker.outstanding == 3
    tracker.handled([first, third])
    assert tracker.ready() == [first, second, third] and tracker.outstanding == 0
