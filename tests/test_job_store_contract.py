"""One contract for the agent's job stores: every backend (local files, Azure blobs) passes it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from lancedb_ray.agent.jobs import Job, JobKind
from lancedb_ray.agent.store import JobStore, LocalJobStore, open_job_store
from lancedb_ray.settings import Settings
from lancedb_ray.storage.catalog import StorageCatalog

# A backend: () -> (a new store on one shared place, write raw bytes as a record named NAME).
Backend = Callable[[], tuple[Callable[[], JobStore], Callable[[str, bytes], None]]]


@pytest.fixture(params=["local", pytest.param("azure", marks=pytest.mark.azure)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Callable[[], JobStore],
                                                                     Callable[[str, bytes], None]]:
    if request.param == "local":
        def write_local(name: str, data: bytes) -> None:
            (tmp_path / "jobs").mkdir(exist_ok=True)
            (tmp_path / "jobs" / name).write_bytes(data)

        return (lambda: LocalJobStore(tmp_path / "jobs")), write_local
    from tests.support.azurite import PROVIDER

    azurite = request.getfixturevalue("azurite")
    settings = Settings(storage={"root": azurite.location(PROVIDER, "jobs",
                                                          prefix=f"c-{uuid.uuid4().hex[:8]}")})
    StorageCatalog(settings.storage).resolve("db")  # creates the root's container
    store = open_job_store(settings)

    def write_blob(name: str, data: bytes) -> None:
        store._fs.pipe_file(f"{store._base}/{name}", data)  # noqa: SLF001 - a record gone bad

    return (lambda: open_job_store(settings)), write_blob


def test_records_are_written_whole_listed_replaced_and_deleted(backend) -> None:
    new_store, write_raw = backend
    store = new_store()
    assert store.list() == []
    first = Job.new("db", "a", JobKind.COMPACT, 1)
    second = Job.new("db", "b", JobKind.OPTIMIZE_INDICES, 2)
    store.put(first)
    store.put(second)
    running = first.started().progressed("rewriting fragments", 0.5, None)
    store.put(running)  # replaces the record of the same id
    assert {job.id: job for job in new_store().list()} == {first.id: running, second.id: second}
    assert store.get(first.id) == running and store.get("missing") is None
    write_raw("garbage.json", b"{not json")
    assert {job.id for job in store.list()} == {first.id, second.id}  # skipped, not fatal
    store.delete([first.id, "missing"])
    assert [job.id for job in store.list()] == [second.id]


def test_the_lock_admits_one_agent_at_a_time(backend) -> None:
    new_store, _ = backend
    first, second = new_store(), new_store()
    assert first.try_lock() and first.try_lock()  # held already
    try:
        assert not second.try_lock()  # a second agent (a replica being replaced) stands by
        first.put(Job.new("db", "t", JobKind.COMPACT, 1))
        assert [job.kind for job in second.list()] == [JobKind.COMPACT]  # the lock is no record
    finally:
        first.unlock()
    assert second.try_lock()
    second.unlock()
