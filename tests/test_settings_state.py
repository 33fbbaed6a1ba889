"""The service's own state (event log, outbox, job records) follows the storage, never the CWD."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from lancedb_ray.agent.jobs import Job, JobKind
from lancedb_ray.agent.store import open_job_store
from lancedb_ray.events.bus import make_consumer
from lancedb_ray.events.model import ChangeEvent
from lancedb_ray.events.outbox import ChangePublisher
from lancedb_ray.settings import Settings


def state_paths(settings: Settings) -> list[Path]:
    return [Path(p) for p in (settings.events.embedded.directory, settings.events.outbox_directory,
                              settings.agent.jobs_directory)]


def test_local_state_lives_under_the_storage_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.load(storage={"root": {"uri": "store"}})
    assert state_paths(settings) == [tmp_path / "store" / ".system" / name
                                     for name in ("events", "outbox", "jobs")]


def test_named_state_directory_and_explicit_paths_win(tmp_path: Path) -> None:
    settings = Settings.load(storage={"root": {"uri": str(tmp_path / "store")}},
                             state_directory=str(tmp_path / "state"),
                             agent={"jobs_directory": str(tmp_path / "jobs")})
    assert state_paths(settings) == [tmp_path / "state" / "events", tmp_path / "state" / "outbox",
                                     tmp_path / "jobs"]


def test_an_azure_root_gets_a_local_state_directory_of_its_own(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)

    def state_of(**root: str) -> Path:
        return Path(Settings.load(storage={"root": root}).events.embedded.directory).parent

    one = state_of(uri="az://vectors/prod", account="acct")
    assert one.parent == tmp_path / "xdg" / "lancedb-ray" and one.name.startswith("az-vectors-prod-")
    assert state_of(uri="az://vectors/prod", account="acct") == one  # stable across restarts
    others = {state_of(uri="az://vectors/dev", account="acct"),
              state_of(uri="az://vectors/prod", account="b"),
              state_of(account="acct", container="vectors", prefix="prod")}
    assert one not in others and len(others) == 3


def test_two_services_started_from_one_directory_share_nothing(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    services = [Settings.load(storage={"root": {"uri": f"store{i}"}}) for i in (1, 2)]
    for i, settings in enumerate(services, start=1):  # each service writes an event and a job record
        publisher = ChangePublisher(settings.events)
        publisher.emit(ChangeEvent(f"db{i}", "t", 1, "insert", 1, time.time()))
        assert publisher.flush(10)
        publisher.close()
        open_job_store(settings).put(Job.new(f"db{i}", "t", JobKind.COMPACT, 1))

    for i, settings in enumerate(services, start=1):
        assert [job.database for job in open_job_store(settings).list()] == [f"db{i}"]
        assert [event.database for event in asyncio.run(_events(settings))] == [f"db{i}"]
        assert all(path.is_relative_to(tmp_path / f"store{i}") for path in state_paths(settings))
    assert sorted(os.listdir(tmp_path)) == ["store1", "store2"]  # nothing in the shared directory


async def _events(settings: Settings) -> list[ChangeEvent]:
    consumer = make_consumer(settings.events, "reader")
    try:
        return [delivery.event for delivery in await consumer.poll(100, 1.0)]
    finally:
        await consumer.close()
