"""The agent's loop in-process, on the embedded bus and real tables, without Ray.

The indexers are replaced by a stand-in that does the same Lance operations
in-process and counts its calls, so these tests see exactly what the agent
asked for, and when.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lance
import lancedb
import numpy as np
import pyarrow as pa
import pytest
from lancedb.index import BTree

from lancedb_ray.agent.core import LanceAgent
from lancedb_ray.agent.jobs import Job, JobKind, JobState
from lancedb_ray.agent.store import LocalJobStore
from lancedb_ray.events.bus import make_consumer, make_publisher
from lancedb_ray.events.embedded import committed, log_end
from lancedb_ray.events.model import ChangeEvent
from lancedb_ray.indexers.runtime import JobContext
from lancedb_ray.settings import Settings

DIM = 8


@dataclass(frozen=True)
class Handle:
    database: str
    table: str
    uri: str
    storage_options: dict[str, str] = field(default_factory=dict)


class StandInIndexers:
    """The indexers' interface, done in-process with lance; counts every call."""

    TableHandle = Handle
    JobContext = JobContext

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.failures = 0  # the next this many calls raise
        self.gate: threading.Event | None = None  # when set up, calls wait for it

    def _enter(self, kind: str, handle: Handle) -> lance.LanceDataset:
        self.calls.append((kind, handle.table))
        if self.gate is not None:
            self.gate.wait(30)
        if self.failures:
            self.failures -= 1
            raise OSError("the storage account throttled us")
        return self._open(handle)

    @staticmethod
    def _open(handle: Handle) -> lance.LanceDataset:
        return lance.dataset(handle.uri, storage_options=handle.storage_options or None)

    def optimize_indices(self, handle: Handle, *, ctx: JobContext) -> int:
        ctx.note("indexing new rows", 0.0)
        self._enter("optimize_indices", handle).optimize.optimize_indices()
        return self._open(handle).version

    def compact(self, handle: Handle, *, target_rows_per_fragment: int, parallelism: int,
                ctx: JobContext) -> int | None:
        dataset = self._enter("compact", handle)
        before = dataset.version
        dataset.optimize.compact_files(target_rows_per_fragment=target_rows_per_fragment,
                                       num_threads=parallelism)
        after = self._open(handle).version
        return after if after != before else None

    def retrain_vector_index(self, handle: Handle, index_name: str, *, num_segments: int,
                             use_gpu: bool, gpu_wait_seconds: float, ctx: JobContext) -> int:
        raise AssertionError("these tests keep tables below the retraining size")

    def cleanup(self, handle: Handle, *, older_than_seconds: float, ctx: JobContext) -> dict:
        self._enter("cleanup", handle)
        return {}

    def cluster_has_gpus(self) -> bool:
        return False


def rows(count: int, start: int = 0) -> pa.Table:
    rng = np.random.default_rng(start)
    return pa.table({
        "id": np.arange(start, start + count),
        "vector": pa.array(rng.normal(size=(count, DIM)).astype("float32").tolist(),
                           pa.list_(pa.float32(), DIM)),
    })


def make_settings(tmp_path: Path, **agent: Any) -> Settings:
    agent_settings = {
        "jobs_directory": str(tmp_path / "jobs"),
        "debounce_seconds": 0.1,
        "reconcile_interval_seconds": 3600,
        "min_rows_for_vector_index": 1_000_000,  # no retraining here
        "retry_seconds": 0.05,
        **agent,
    }
    return Settings(
        storage={"root": {"uri": str(tmp_path / "data")}},
        events={"embedded": {"directory": str(tmp_path / "events")},
                "outbox_directory": str(tmp_path / "outbox")},
        agent=agent_settings,
    ).with_absolute_paths()


def indexed_table(root: Path, database: str = "db", name: str = "t") -> lancedb.table.Table:
    table = lancedb.connect(root / database).create_table(name, rows(300))
    table.create_index("id", config=BTree())
    return table


def unindexed(root: Path, database: str = "db", name: str = "t") -> int:
    dataset = lance.dataset(str(root / database / f"{name}.lance"))
    return dataset.stats.index_stats("id_idx")["num_unindexed_rows"]


def publish(settings: Settings, *events: ChangeEvent) -> None:
    async def send() -> None:
        publisher = make_publisher(settings.events)
        await publisher.publish(events)
        await publisher.close()

    asyncio.run(send())


def event(table: str, version: int, operation: str = "insert", database: str = "db") -> ChangeEvent:
    return ChangeEvent(database, table, version, operation, 10, time.time())


def run_until(agent: LanceAgent, done: Callable[[], bool], timeout_s: float = 30) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        deadline = time.monotonic() + timeout_s
        try:
            while not done():
                if task.done():
                    task.result()
                    raise AssertionError("the agent stopped by itself")
                if time.monotonic() > deadline:
                    raise AssertionError("the agent did not get there in time")
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

    asyncio.run(main())


def checkpoint(settings: Settings) -> int:
    return committed(Path(settings.events.embedded.directory), "lancedb-ray-agent")


def log_size(settings: Settings) -> int:
    """Position of the last event published: the agent is done with the log once it committed it."""
    return log_end(Path(settings.events.embedded.directory))


def finished(store: LocalJobStore, count: int = 1) -> Callable[[], bool]:
    return lambda: sum(not job.state.active for job in store.list()) >= count


# -- tests -------------------------------------------------------------------------------------


def test_jobs_are_recorded_before_the_checkpoint_moves(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    root = tmp_path / "data"
    table = indexed_table(root)
    table.add(rows(50, 300))
    store = LocalJobStore(settings.agent.jobs_directory)
    commits: list[tuple[int, list[Job]]] = []

    class SpyConsumer:
        def __init__(self) -> None:
            self.inner = make_consumer(settings.events, "lancedb-ray-agent")

        async def poll(self, max_events: int, timeout_s: float):
            return await self.inner.poll(max_events, timeout_s)

        async def commit(self, deliveries):
            commits.append((max(d.position for d in deliveries), store.list()))
            await self.inner.commit(deliveries)

        async def close(self) -> None:
            await self.inner.close()

    publish(settings, event("t", 1, "create"), event("t", 2, "create_index"), event("t", 3))
    indexers = StandInIndexers()
    agent = LanceAgent(settings, consumer_factory=SpyConsumer, indexers=indexers)
    run_until(agent, lambda: finished(store)() and checkpoint(settings) == log_size(settings))

    (position, recorded), *_ = commits
    assert position == log_size(settings)  # the three events were debounced into one look
    assert [(j.kind, j.table, j.trigger_version) for j in recorded] == [
        (JobKind.OPTIMIZE_INDICES, "t", 3)]
    (job,) = store.list()
    assert job.state is JobState.SUCCEEDED and job.attempts == 1 and job.trigger == "event"
    assert job.result_version == 4 and job.error is None
    assert indexers.calls == [("optimize_indices", "t")]
    assert unindexed(root) == 0


def test_dropped_and_missing_tables_are_skipped_and_checkpointed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    indexed_table(tmp_path / "data").add(rows(10, 300))
    lancedb.connect(tmp_path / "data" / "db").drop_table("t")
    publish(settings, event("t", 2), event("t", 0, "drop"), event("never", 4),
            event("bad/name", 1), event("t", 3, database="no-such-db"))
    indexers = StandInIndexers()
    agent = LanceAgent(settings, indexers=indexers)
    run_until(agent, lambda: checkpoint(settings) == log_size(settings))
    assert LocalJobStore(settings.agent.jobs_directory).list() == []
    assert indexers.calls == []


def test_a_job_interrupted_after_its_commit_is_not_applied_again(tmp_path: Path) -> None:
    """The record says running, the Lance commit happened: resuming finds nothing to do."""
    settings = make_settings(tmp_path)
    root = tmp_path / "data"
    table = indexed_table(root)
    table.add(rows(50, 300))
    store = LocalJobStore(settings.agent.jobs_directory)
    interrupted = Job.new("db", "t", JobKind.OPTIMIZE_INDICES, 3).started()
    store.put(interrupted)
    lance.dataset(str(root / "db" / "t.lance")).optimize.optimize_indices()  # its commit landed
    version = lance.dataset(str(root / "db" / "t.lance")).version

    indexers = StandInIndexers()
    run_until(LanceAgent(settings, indexers=indexers), finished(store))

    resumed = store.get(interrupted.id)
    assert resumed.state is JobState.SUCCEEDED and resumed.attempts == 2
    assert resumed.detail.startswith("no-op") and resumed.result_version == version
    assert indexers.calls == []
    assert lance.dataset(str(root / "db" / "t.lance")).version == version  # no second commit


def test_a_job_interrupted_before_its_commit_runs_on_restart(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    root = tmp_path / "data"
    indexed_table(root).add(rows(50, 300))
    store = LocalJobStore(settings.agent.jobs_directory)
    pending = Job.new("db", "t", JobKind.OPTIMIZE_INDICES, 3)
    running = Job.new("db", "t", JobKind.OPTIMIZE_INDICES, 3).started()
    store.put(pending)
    store.put(running)
    indexers = StandInIndexers()
    run_until(LanceAgent(settings, indexers=indexers), finished(store, 2))
    assert indexers.calls == [("optimize_indices", "t")]  # the second found the work done
    assert unindexed(root) == 0
    assert lance.dataset(str(root / "db" / "t.lance")).version == 4


def test_failed_attempts_are_retried_then_given_up_without_looping(tmp_path: Path) -> None:
    # Reconciler passes after the failure must not plan the same job again.
    settings = make_settings(tmp_path, max_attempts=2, reconcile_interval_seconds=0.2)
    root = tmp_path / "data"
    indexed_table(root).add(rows(50, 300))
    store = LocalJobStore(settings.agent.jobs_directory)
    indexers = StandInIndexers()
    indexers.failures = 5
    agent = LanceAgent(settings, indexers=indexers)
    passes_at_failure: list[int] = []

    def failed_then_reconciled() -> bool:
        if finished(store)() and not passes_at_failure:
            passes_at_failure.append(agent.reconciled)
        return bool(passes_at_failure) and agent.reconciled >= passes_at_failure[0] + 2

    run_until(agent, failed_then_reconciled)
    (job,) = store.list()
    assert job.state is JobState.FAILED and job.attempts == 2
    assert job.error == "OSError: the storage account throttled us"
    assert indexers.calls == [("optimize_indices", "t")] * 2
    assert unindexed(root) == 50


def test_the_reconciler_indexes_tables_that_sent_no_event(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, reconcile_interval_seconds=0.2)
    root = tmp_path / "data"
    indexed_table(root, "quiet", "a").add(rows(20, 300))
    indexed_table(root, "quiet", "b")  # fully indexed: nothing to do
    store = LocalJobStore(settings.agent.jobs_directory)
    indexers = StandInIndexers()
    agent = LanceAgent(settings, indexers=indexers)
    run_until(agent, lambda: finished(store)() and agent.reconciled >= 2)
    (job,) = store.list()
    assert (job.database, job.table, job.kind, job.trigger) == (
        "quiet", "a", JobKind.OPTIMIZE_INDICES, "reconcile")
    assert job.state is JobState.SUCCEEDED
    assert unindexed(root, "quiet", "a") == 0
    assert indexers.calls == [("optimize_indices", "a")]


def test_the_reconciler_covers_tables_in_namespaces(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, reconcile_interval_seconds=0.2)
    db = lancedb.connect(tmp_path / "data" / "nsdb")
    db.create_namespace(["team"])
    db.create_namespace(["team", "search"])
    table = db.create_table("docs", rows(300), namespace_path=["team", "search"])
    table.create_index("id", config=BTree())
    table.add(rows(20, 300))  # no event: only the reconciler can find it
    store = LocalJobStore(settings.agent.jobs_directory)
    indexers = StandInIndexers()
    run_until(LanceAgent(settings, indexers=indexers), finished(store))
    (job,) = store.list()
    assert (job.database, job.table, job.kind, job.trigger) == (
        "nsdb", "team$search$docs", JobKind.OPTIMIZE_INDICES, "reconcile")
    assert job.state is JobState.SUCCEEDED
    reopened = db.open_table("docs", namespace_path=["team", "search"])
    assert reopened.index_stats("id_idx").num_unindexed_rows == 0
    assert indexers.calls == [("optimize_indices", "team$search$docs")]


def test_small_fragments_are_compacted_and_indexed_in_order(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, compact_min_fragments=4)
    root = tmp_path / "data"
    table = indexed_table(root)
    for i in range(4):
        table.add(rows(10, 1000 + 10 * i))
    store = LocalJobStore(settings.agent.jobs_directory)
    indexers = StandInIndexers()
    publish(settings, event("t", table.version))
    run_until(LanceAgent(settings, indexers=indexers), finished(store, 2))
    assert [j.kind for j in sorted(store.list(), key=lambda j: j.created_at)] == [
        JobKind.COMPACT, JobKind.OPTIMIZE_INDICES]
    assert indexers.calls == [("compact", "t"), ("optimize_indices", "t")]
    dataset = lance.dataset(str(root / "db" / "t.lance"))
    assert len(dataset.get_fragments()) < 5 and dataset.count_rows() == 340
    assert unindexed(root) == 0


def test_rows_written_while_a_job_runs_get_a_job_of_their_own(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    root = tmp_path / "data"
    table = indexed_table(root)
    table.add(rows(10, 300))
    store = LocalJobStore(settings.agent.jobs_directory)
    indexers = StandInIndexers()
    indexers.gate = threading.Event()
    publish(settings, event("t", 3))
    agent = LanceAgent(settings, indexers=indexers)

    def write_while_running() -> None:
        deadline = time.monotonic() + 30
        while not any(job.state is JobState.RUNNING for job in store.list()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        table.add(rows(10, 400))  # lands after the running job read the table
        publish(settings, event("t", 4))
        time.sleep(0.5)  # the new event is debounced and looked at while the job waits
        indexers.gate.set()

    writer = threading.Thread(target=write_while_running)
    writer.start()
    run_until(agent, finished(store, 2))
    writer.join()
    jobs = sorted(store.list(), key=lambda j: j.created_at)
    assert [(j.state, j.trigger_version) for j in jobs] == [(JobState.SUCCEEDED, 3),
                                                            (JobState.SUCCEEDED, 4)]
    assert unindexed(root) == 0


def test_a_second_agent_stands_by_while_the_first_holds_the_store(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    holder = LocalJobStore(settings.agent.jobs_directory)
    assert holder.try_lock()
    indexed_table(tmp_path / "data").add(rows(10, 300))
    publish(settings, event("t", 3))
    agent = LanceAgent(settings, indexers=StandInIndexers())

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await asyncio.sleep(1.5)
        assert holder.list() == [] and checkpoint(settings) == 0  # standing by
        holder.unlock()
        deadline = time.monotonic() + 30
        while not finished(holder)():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        stop.set()
        await task

    asyncio.run(main())


@pytest.mark.parametrize("operation", ["rename", "drop"])
def test_renamed_away_tables_need_nothing(tmp_path: Path, operation: str) -> None:
    settings = make_settings(tmp_path)
    root = tmp_path / "data"
    indexed_table(root).add(rows(10, 300))
    (root / "db" / "t.lance").rename(root / "db" / "moved.lance")
    publish(settings, event("t", 0, operation))
    indexers = StandInIndexers()
    run_until(LanceAgent(settings, indexers=indexers), lambda: checkpoint(settings) == log_size(settings))
    assert indexers.calls == [] and LocalJobStore(settings.agent.jobs_directory).list() == []


def test_an_unreadable_table_does_not_hold_the_checkpoint_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lancedb_ray.agent import core

    monkeypatch.setattr(core, "_INSPECT_RETRY_S", 0.01)
    settings = make_settings(tmp_path)
    indexed_table(tmp_path / "data").add(rows(10, 300))
    publish(settings, event("t", 3))
    agent = LanceAgent(settings, indexers=StandInIndexers())
    reads: list[str] = []

    def unreadable(database: str, table: str) -> None:
        reads.append(table)
        raise OSError("connection reset by peer")

    monkeypatch.setattr(agent._reader, "inspect", unreadable)
    run_until(agent, lambda: checkpoint(settings) == log_size(settings))
    assert reads == ["t"] * core._INSPECT_ATTEMPTS
    assert LocalJobStore(settings.agent.jobs_directory).list() == []


def test_a_failed_job_record_save_is_retried_and_the_checkpoint_moves_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lancedb_ray.agent import core

    monkeypatch.setattr(core, "_INSPECT_RETRY_S", 0.01)
    settings = make_settings(tmp_path)
    indexed_table(tmp_path / "data").add(rows(10, 300))
    publish(settings, event("t", 3))
    store = LocalJobStore(settings.agent.jobs_directory)
    saves: list[str] = []

    class FlakyStore(LocalJobStore):
        def put(self, job: Job) -> None:
            saves.append(job.state.value)
            if len(saves) <= 2:
                raise OSError("the storage account throttled us")
            super().put(job)

    agent = LanceAgent(settings, store=FlakyStore(settings.agent.jobs_directory), indexers=StandInIndexers())
    run_until(agent, lambda: finished(store)() and checkpoint(settings) == log_size(settings))
    (job,) = store.list()
    assert job.kind is JobKind.OPTIMIZE_INDICES and job.state is JobState.SUCCEEDED
    assert saves[:3] == ["pending"] * 3  # two failed saves, retried; nothing started unrecorded
    assert unindexed(tmp_path / "data") == 0


def test_the_reconciler_leaves_tables_written_within_the_debounce_alone(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, reconcile_interval_seconds=0.1, debounce_seconds=2.0)
    root = tmp_path / "data"
    indexed_table(root).add(rows(10, 300))
    written = lance.dataset(str(root / "db" / "t.lance")).versions()[-1]["timestamp"].timestamp()
    store = LocalJobStore(settings.agent.jobs_directory)
    agent = LanceAgent(settings, indexers=StandInIndexers())
    run_until(agent, finished(store))
    (job,) = store.list()
    assert job.trigger == "reconcile" and agent.reconciled > 5
    assert job.created_at - written >= 2.0


@pytest.mark.parametrize("moved", [False, True])
def test_the_reconciler_recovers_a_rename_abandoned_by_a_crash(tmp_path: Path, moved: bool) -> None:
    """A query node died mid-rename (before or after the local move): the reconciler's pass
    undoes or finishes it, and one readable table remains, writable again."""
    from lancedb_ray.storage.catalog import StorageCatalog
    from lancedb_ray.storage.renames import COPYING, Marker, Markers

    settings = make_settings(tmp_path)
    root = tmp_path / "data"
    indexed_table(root)
    location = StorageCatalog(settings.storage).resolve("db")
    Markers(location).create(Marker("crashed", "t", "moved", COPYING, updated=0.0))  # long stale
    if moved:
        (root / "db" / "t.lance").rename(root / "db" / "moved.lance")
    agent = LanceAgent(settings, indexers=StandInIndexers())
    asyncio.run(agent.reconcile())
    kept = "moved" if moved else "t"
    assert lancedb.connect(root / "db").list_tables().tables == [kept]
    marker = Markers(location).read("t")
    assert (marker is None) if not moved else (marker is not None and not marker.active)
    assert lancedb.connect(root / "db").open_table(kept).count_rows() == 300


def test_a_retried_create_index_job_does_not_commit_the_index_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt that failed after its commit landed: the retry finds the index it committed and
    builds nothing; an index older than the job is rebuilt, as the client asked."""
    from lancedb_ray.agent import index_requests
    from lancedb_ray.agent.execute import JobRunner
    from lancedb_ray.agent.tables import TableReader
    from lancedb_ray.settings import Settings
    from lancedb_ray.storage.catalog import StorageCatalog
    from lancedb_ray.storage.connections import Connections

    settings = Settings(storage={"root": {"uri": str(tmp_path / "data")}})
    table = lancedb.connect(tmp_path / "data" / "db").create_table("t", pa.table({"id": list(range(300))}))
    reader = TableReader(Connections(StorageCatalog(settings.storage), 0.0))
    builds: list[str] = []
    monkeypatch.setattr(index_requests, "build_requested_index",
                        lambda storage, database, name, request, ctx: builds.append(name) or 99)

    def job(attempts: int) -> Job:
        recorded = Job.new("db", "t", JobKind.CREATE_INDEX, table.version, trigger="request",
                           index="id_idx", request={"column": "id", "index_type": "BTREE"})
        for _ in range(attempts):
            recorded = recorded.started()
        return recorded

    retried = job(2)
    table.create_index("id", config=BTree())  # what its first attempt committed before failing
    outcome = JobRunner(settings, reader).run(retried)
    assert builds == [] and outcome.result_version == table.version
    assert "earlier attempt" in outcome.detail

    assert JobRunner(settings, reader).run(job(2)).result_version == 99  # the index predates the job
    assert JobRunner(settings, reader).run(job(1)).result_version == 99  # a first attempt builds
    assert builds == ["t", "t"]
