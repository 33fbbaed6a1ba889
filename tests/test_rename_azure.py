"""Renaming a table while writers write, on Azure (Azurite: copy, then delete) and on a local directory.

The official client writes rows with known ids from several threads while a rename runs; a
write the client saw acknowledged must be in the renamed table exactly once. A crash at each
step of the rename, then recovery, must leave exactly one readable table with every
acknowledged row. A query node runs in this process (executors off) so that the test can
pause a write or crash the rename at a chosen step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import lancedb
import pyarrow as pa
import pytest
import uvicorn
from lancedb.index import BTree
from lancedb.remote.errors import RetryError

from lancedb_ray.api import context
from lancedb_ray.api.http import create_app
from lancedb_ray.execution.local import LocalExecutor
from lancedb_ray.service import writes
from lancedb_ray.service.container import Services
from lancedb_ray.settings import Settings
from lancedb_ray.storage.renames import COPYING, Marker, Markers, Timing
from tests.support.azurite import PROVIDER, Azurite
from tests.support.local_node import ChangeSink
from tests.support.processes import free_port
from tests.support.service import API_KEY, LiveService, service_settings, wait_healthy

DEADLINE_S = 60.0


@dataclass
class Node:
    service: LiveService
    services: Services

    def connect(self, database: str, **kwargs: Any) -> lancedb.DBConnection:
        return self.service.connect(database, **kwargs)


@pytest.fixture(scope="module", params=["azure", "local"])
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp(f"rename-{request.param}")
    overrides = service_settings(root)
    overrides["executors"] = {"enabled": False}
    if request.param == "azure":
        azurite: Azurite = request.getfixturevalue("azurite")
        overrides["storage"] = {"root": azurite.location(PROVIDER, "renames", prefix="databases")}
    services = Services.build(Settings.load(None, **overrides), ChangeSink(), LocalExecutor)
    # A shorter settle than the default, to keep the tests quick.
    services.tables.renamer.timing = Timing(settle_s=0.3)
    earlier = context._services  # one query node app per process: give the other one back after
    app = create_app(services)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"rename-node-{request.param}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, timeout_s=60)
    yield Node(LiveService(url, API_KEY, root / "data", overrides), services)
    server.should_exit = True
    thread.join(timeout=30)
    context._services = earlier


@pytest.fixture
def fresh(node: Node) -> Iterator[Node]:
    """Every test starts with the renamer's hook unset and the normal (short) timing."""
    yield node
    node.services.tables.renamer.on_step = lambda step: None


def _rows(ids: list[int]) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()), "text": [f"row {i}" for i in ids]})


def _ids(db: lancedb.DBConnection, name: str) -> list[int]:
    table = db.open_table(name)
    return sorted(table.search().select(["id"]).limit(table.count_rows() + 1).to_arrow()["id"].to_pylist())


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Writer:
    """Adds one row at a time with ids ``base + n``; records what the client saw."""

    db: lancedb.DBConnection
    table: str
    base: int
    stop: threading.Event
    acknowledged: list[int] = field(default_factory=list)
    attempted: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        table = self.db.open_table(self.table)
        n = 0
        while not self.stop.is_set():
            row_id = self.base + n
            n += 1
            self.attempted.append(row_id)
            try:
                table.add(_rows([row_id]))
            except Exception as exc:  # noqa: BLE001 - a refused write is an outcome to record
                self.errors.append(str(exc))
                continue
            self.acknowledged.append(row_id)


def test_concurrent_writers_lose_no_acknowledged_write(fresh: Node) -> None:
    db = fresh.connect(f"writers{free_port()}")
    db.create_table("moving", _rows(list(range(10))))
    stop = threading.Event()
    writers = [Writer(db, "moving", 1000 * (i + 1), stop) for i in range(3)]
    threads = [threading.Thread(target=w.run) for w in writers]
    for thread in threads:
        thread.start()
    try:
        _wait(lambda: all(len(w.acknowledged) >= 2 for w in writers), "writes before the rename")
        db.rename_table("moving", "moved")
        errors_then = [len(w.errors) for w in writers]
        # Every writer goes on until the old name refuses it: then it has no write in flight
        # that began before the rename finished.
        _wait(lambda: all(len(w.errors) > n for w, n in zip(writers, errors_then, strict=True)),
              "each writer to be refused by the old name")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=DEADLINE_S)
    stored = _ids(db, "moved")
    acknowledged = [i for w in writers for i in w.acknowledged]
    attempted = {i for w in writers for i in w.attempted} | set(range(10))
    assert len(stored) == len(set(stored)), "a row was applied twice"
    assert set(acknowledged) <= set(stored), f"acknowledged writes lost: {set(acknowledged) - set(stored)}"
    assert set(stored) <= attempted
    assert db.list_tables().tables == ["moved"]
    with pytest.raises(Exception, match="not found"):
        db.open_table("moving").count_rows()
    assert any("not found" in e for w in writers for e in w.errors)


class _PausedWrite:
    """Holds the next commit of ``ids`` in the query node until ``release`` (it has passed the
    rename check already): a writer that opened the table just before the rename began."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, ids: list[int]) -> None:
        self.waiting = threading.Event()
        self.release = threading.Event()
        self.landed = threading.Event()  # the commit succeeded or failed
        original = writes.append

        def append(dataset: Any, data: pa.Table, *args: Any, **kwargs: Any) -> Any:
            if data.column("id").to_pylist() != ids or self.landed.is_set():
                return original(dataset, data, *args, **kwargs)
            self.waiting.set()
            assert self.release.wait(DEADLINE_S)
            try:
                return original(dataset, data, *args, **kwargs)
            finally:
                self.landed.set()

        monkeypatch.setattr(writes, "append", append)


_RELEASES = {"azure": ["settled", "copied", "verified", "deleted"], "local": ["settled", "moved"]}


@pytest.mark.parametrize("release_at", ["settled", "copied", "verified", "deleted", "moved"])
def test_a_write_in_flight_during_a_rename_is_kept_or_refused(
    fresh: Node, monkeypatch: pytest.MonkeyPatch, release_at: str
) -> None:
    """A commit that lands while the rename copies is copied again; one that lands after the
    copy was verified is answered with an error: acknowledged <=> in the renamed table.

    The paused writer read version 1 and two writes followed, so a commit landing after the
    source's manifests are gone (Azure: deleted; local: moved away) reuses version 2, which
    the renamed table has with other rows: the version number alone would vouch for it."""
    backend = "azure" if fresh.services.connections.root().is_azure else "local"
    if release_at not in _RELEASES[backend]:
        pytest.skip(f"no step '{release_at}' on {backend}")
    db = fresh.connect(f"paused{free_port()}")
    db.create_table("src", _rows([1, 2, 3]))
    paused = _PausedWrite(monkeypatch, [99])
    outcome: dict[str, Any] = {}

    def write() -> None:
        try:
            db.open_table("src").add(_rows([99]))
            outcome["acknowledged"] = True
        except Exception as exc:  # noqa: BLE001
            outcome["error"] = str(exc)

    writer = threading.Thread(target=write)
    writer.start()
    assert paused.waiting.wait(DEADLINE_S)
    db.open_table("src").add(_rows([4]))
    db.open_table("src").add(_rows([5]))

    def on_step(step: str) -> None:
        if step == release_at and not paused.release.is_set():
            paused.release.set()
            assert paused.landed.wait(DEADLINE_S)

    fresh.services.tables.renamer.on_step = on_step
    db.rename_table("src", "dst")
    writer.join(timeout=DEADLINE_S)
    stored = _ids(db, "dst")
    assert bool(outcome.get("acknowledged")) == (99 in stored), outcome
    assert stored.count(99) <= 1
    assert {1, 2, 3, 4, 5} <= set(stored)
    # Landed before the verification: copied (again); after it: refused ("not kept", then the
    # client's retry finds the old name gone).
    assert bool(outcome.get("acknowledged")) == (release_at in ("settled", "copied")), outcome
    assert db.list_tables().tables == ["dst"]


class _Crash(BaseException):
    """The query node dies at this step: the rename is abandoned where it stands (a
    BaseException, so that the renamer's own clean-up of ordinary failures does not run)."""


_STEPS = {"azure": ["marked", "settled", "copied", "verified", "deleted"],
          "local": ["marked", "settled", "moved"]}


@pytest.mark.parametrize("step", sorted({s for steps in _STEPS.values() for s in steps}))
def test_a_crash_mid_rename_leaves_one_readable_table(fresh: Node, step: str) -> None:
    backend = "azure" if fresh.services.connections.root().is_azure else "local"
    if step not in _STEPS[backend]:
        pytest.skip(f"no step '{step}' on {backend}")
    name = f"crash{free_port()}"
    db = fresh.connect(name)
    db.create_table("src", _rows([1, 2, 3]))
    db.open_table("src").add(_rows([4, 5]))
    renamer = fresh.services.tables.renamer
    location = fresh.services.connections.location(name)

    def crash(at: str) -> None:
        if at == step:
            raise _Crash(at)

    renamer.on_step = crash
    with pytest.raises(_Crash):
        renamer.rename(location, "src", "dst")
    renamer.on_step = lambda at: None
    assert Markers(location).read("src") is not None  # the crash left its marker
    renamer.sweep(location)
    assert Markers(location).read("src").active  # not yet stale: maybe still running elsewhere

    renamer.timing = replace(renamer.timing, stale_s=0.0)  # ... as if the stale time had passed
    try:
        renamer.sweep(location)  # the agent's pass
    finally:
        renamer.timing = replace(renamer.timing, stale_s=Timing().stale_s)

    tables = db.list_tables().tables
    assert len(tables) == 1, tables
    assert _ids(db, tables[0]) == [1, 2, 3, 4, 5]
    kept = db.open_table(tables[0])
    kept.add(_rows([6]))  # writable again, under whichever name it kept
    assert kept.count_rows() == 6
    if tables == ["src"]:  # undone: the rename can be tried again, and works
        db.rename_table("src", "dst")
        assert _ids(db, "dst") == [1, 2, 3, 4, 5, 6]
    assert db.list_tables().tables == ["dst"] or tables == ["dst"]


def test_writes_during_an_abandoned_rename_recover_it(fresh: Node) -> None:
    """Without the agent, the next write to the table finishes or undoes a crashed rename."""
    name = f"abandoned{free_port()}"
    db = fresh.connect(name)
    db.create_table("src", _rows([1, 2]))
    renamer = fresh.services.tables.renamer
    location = fresh.services.connections.location(name)

    def crash(at: str) -> None:
        if at == "settled":
            raise _Crash(at)

    renamer.on_step = crash
    with pytest.raises(_Crash):
        renamer.rename(location, "src", "dst")
    renamer.on_step = lambda at: None
    with pytest.raises(RetryError) as refused:
        db.open_table("src").add(_rows([3]))  # the rename may still be running elsewhere
    assert refused.value.status_code == 503 and "being renamed" in str(refused.value.__cause__)
    renamer.timing = replace(renamer.timing, stale_s=0.0)  # ... as if the stale time had passed
    try:
        db.open_table("src").add(_rows([3]))  # recovers (undoes) the rename, then writes
    finally:
        renamer.timing = replace(renamer.timing, stale_s=Timing().stale_s)
    assert db.list_tables().tables == ["src"]
    assert _ids(db, "src") == [1, 2, 3]
    assert Markers(location).read("src") is None


_WRITES: dict[str, Callable[[Any], Any]] = {
    "add": lambda t: t.add(_rows([2])),
    "merge_insert": lambda t: t.merge_insert("id").when_not_matched_insert_all().execute(_rows([2])),
    "delete": lambda t: t.delete("id = 1"),
    "update": lambda t: t.update(where="id = 1", values={"text": "x"}),
    "add_columns": lambda t: t.add_columns({"double": "id * 2"}),
    "alter_columns": lambda t: t.alter_columns({"path": "text", "rename": "body"}),
    "drop_columns": lambda t: t.drop_columns(["text"]),
    "restore": lambda t: t.restore(1),
    "create_tag": lambda t: t.tags.create("v1", 1),
    "drop_index": lambda t: t.drop_index("id_idx"),
    "create_index": lambda t: t.create_index("text", config=BTree()),
}


def _state(table: Any) -> tuple[Any, ...]:
    return table.version, table.schema, [(i.name, i.index_uuid) for i in table.list_indices()]


def test_every_write_is_refused_while_a_rename_runs_on_default_timing(fresh: Node) -> None:
    """With the default timing a marker just written belongs to a running rename: every kind of
    write answers 503 (the client would retry) and changes nothing."""
    name = f"defaults{free_port()}"
    db = fresh.connect(name, client_config={"retry_config": {"retries": 0}})
    table = db.create_table("src", _rows([1]))
    table.create_index("id", config=BTree())
    before = _state(table)
    location = fresh.services.connections.location(name)
    Markers(location).create(Marker("test", "src", "dst", COPYING, time.time()))
    try:
        for kind, write in _WRITES.items():
            with pytest.raises(Exception) as refused:
                write(db.open_table("src"))
            text = f"{refused.value} {refused.value.__cause__}"
            assert "503" in text and "being renamed" in text, (kind, text)
        table = db.open_table("src")
        assert _state(table) == before
        assert _ids(db, "src") == [1]
    finally:
        Markers(location).delete("src")


def test_a_long_copy_keeps_its_marker_fresh(fresh: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy that outlasts the stale time is not taken for crashed: a write meanwhile is refused
    (503) rather than undoing the rename, and the rename completes."""
    if not fresh.services.connections.root().is_azure:
        pytest.skip("a local rename does not copy")
    from adlfs import AzureBlobFileSystem

    name = f"slow{free_port()}"
    db = fresh.connect(name, client_config={"retry_config": {"retries": 0}})
    table = db.create_table("src", _rows([1, 2]))
    for i in range(3, 11):  # some 30 objects to copy
        table.add(_rows([i]))
    renamer = fresh.services.tables.renamer
    copying, attempted = threading.Event(), threading.Event()
    original = AzureBlobFileSystem.cp_file

    def slow_copy(self: Any, *args: Any, **kwargs: Any) -> Any:
        copying.set()
        if not attempted.is_set():  # slow until the write was tried: a copy of many seconds
            time.sleep(0.3)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AzureBlobFileSystem, "cp_file", slow_copy)
    monkeypatch.setattr(renamer, "timing", replace(renamer.timing, stale_s=1.0))
    renaming = threading.Thread(target=db.rename_table, args=("src", "dst"))
    renaming.start()
    assert copying.wait(DEADLINE_S)
    time.sleep(1.5)  # past the stale time: only the copy's heartbeat keeps the marker fresh
    with pytest.raises(Exception) as refused:
        db.open_table("src").add(_rows([99]))
    attempted.set()
    assert "being renamed" in f"{refused.value} {refused.value.__cause__}"
    renaming.join(timeout=DEADLINE_S)
    assert db.list_tables().tables == ["dst"]
    assert _ids(db, "dst") == list(range(1, 11))
