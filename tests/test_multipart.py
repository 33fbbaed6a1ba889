"""Multipart writes (phalanx 0.4): the official client's parallel ``add``, applied exactly once.

An in-process query node (executors off) serves the official client. Its body
limit is lowered so that a table of a few thousand rows is more than one request
may carry (the default, 512 MiB, would need that much data): the client then
has to split it into parts (``write_parallelism=4`` partitions, each cut into
parts by ``LANCE_CLIENT_MAX_BYTES_PER_REQUEST``). A fault wrapped around the
app lets a ``complete`` commit and then loses its answer (a 503), so the
client retries ``complete``; embedded lancedb, given the same data, says what
the table must hold.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lance
import lancedb
import pyarrow as pa
import pytest
import uvicorn

from lancedb_ray.agent.core import LanceAgent
from lancedb_ray.api.http import create_app
from lancedb_ray.execution.local import LocalExecutor
from lancedb_ray.service import writes
from lancedb_ray.service.container import Services
from lancedb_ray.settings import Settings
from lancedb_ray.storage.catalog import StorageCatalog
from lancedb_ray.storage.uploads import UPLOADS_DIR, Part, TableUploads
from tests.support.api import ARROW_STREAM, RawClient, all_rows, arrow_stream, make_rows
from tests.support.azurite import PROVIDER, Azurite
from tests.support.processes import free_port
from tests.support.service import API_KEY, LiveService, service_settings, wait_healthy
from tests.support.tenants import ONE_WRITER

# What one request may carry here: ~600 rows of make_rows. The tables below are several times that.
MAX_BODY_BYTES = 64 * 1024
PART_BYTES = 24 * 1024  # the client cuts a partition into parts of about this many bytes
ROWS = 3000


@dataclass
class LostAnswers:
    """ASGI wrapper: while ``armed``, a multipart ``complete`` runs to its end (it commits) and
    its answer is replaced by a 503, as if the connection or a proxy lost it."""

    app: Any
    armed: int = 0
    completes: int = 0
    parts: int = 0
    lost: list[int] = field(default_factory=list)  # the statuses the lost answers had

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"].endswith("/insert/") and b"upload_id=" in scope.get("query_string", b""):
            self.parts += 1
        if not scope["path"].endswith("/multipart_write/complete"):
            return await self.app(scope, receive, send)
        self.completes += 1
        if not self.armed:
            return await self.app(scope, receive, send)
        self.armed -= 1
        started: dict[str, Any] = {}

        async def swallow(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.update(message)

        await self.app(scope, receive, swallow)
        self.lost.append(started.get("status", 0))
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"injected: the answer was lost"})


@dataclass
class Node:
    service: LiveService
    settings: Settings
    faults: LostAnswers

    def raw(self, database: str) -> RawClient:
        return RawClient(self.service, database)


def _serve(root: Path, storage_root: Any) -> tuple[Node, uvicorn.Server, threading.Thread]:
    overrides = service_settings(root)
    overrides["executors"] = {"enabled": False}
    overrides["server"]["max_body_bytes"] = MAX_BODY_BYTES
    if storage_root is not None:
        overrides["storage"] = {"root": storage_root}
    settings = Settings.load(None, **overrides)
    faults = LostAnswers(create_app(Services.build(settings, lambda event: None, LocalExecutor)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(faults, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="multipart-query-node", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, timeout_s=60)
    return Node(LiveService(url, API_KEY, root / "data", overrides), settings, faults), server, thread


@pytest.fixture(scope="module", params=["local", "azurite"])
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """The query node on a local directory, then on Azure Blob Storage (Azurite)."""
    storage_root = None
    if request.param == "azurite":
        azurite: Azurite = request.getfixturevalue("azurite")
        storage_root = azurite.location(PROVIDER, "multipart", prefix="dbs")
    started, server, thread = _serve(tmp_path_factory.mktemp(f"multipart-{request.param}"), storage_root)
    yield started
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def client_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts the node can take (read by the client when it connects)."""
    monkeypatch.setenv("LANCE_CLIENT_MAX_BYTES_PER_REQUEST", str(PART_BYTES))


def _rows(n: int, start: int = 0, seed: int = 0) -> pa.Table:
    """Rows in batches of 100: the client deals whole batches out to its write partitions."""
    return pa.Table.from_batches(make_rows(n, start=start, seed=seed).to_batches(max_chunksize=100))


def _same(remote: Any, local: Any) -> None:
    assert remote.count_rows() == local.count_rows()
    assert remote.schema == local.schema
    assert all_rows(remote).equals(all_rows(local))


def _uploads(node: Node, database: str, table: str) -> TableUploads:
    location = StorageCatalog(node.settings.storage).resolve(database)
    return TableUploads(location, location.table_uri(table))


def _dataset(node: Node, database: str, table: str) -> lance.LanceDataset:
    location = StorageCatalog(node.settings.storage).resolve(database)
    return lance.dataset(location.table_uri(table), storage_options=location.storage_options or None)


def _data_files(node: Node, database: str, table: str) -> set[str]:
    location = StorageCatalog(node.settings.storage).resolve(database)
    fs = location.filesystem()
    directory = location.fs_path(f"{table}.lance", "data")
    fs.invalidate_cache(directory)
    return set(fs.ls(directory, detail=False))


# -- the official client ---------------------------------------------------------------------


def test_the_node_advertises_multipart_writes(node: Node) -> None:
    response = node.raw("any").get("/v1/table/")
    assert response.headers["phalanx-version"] == "0.4.0"


def test_a_parallel_add_larger_than_a_request_is_applied_once_despite_a_lost_answer(
    node: Node, embedded: lancedb.DBConnection, client_parts: None
) -> None:
    db = node.service.connect()
    remote = db.create_table("items", make_rows(10))
    local = embedded.create_table("items", make_rows(10))
    data = _rows(ROWS, start=10, seed=1)
    with pytest.raises(Exception, match="413"):  # one request cannot carry it
        remote.add(data, write_parallelism=1)
    before = remote.version
    parts, completes = node.faults.parts, node.faults.completes
    node.faults.armed = 1
    result = remote.add(data, write_parallelism=4)
    local.add(data)
    assert node.faults.armed == 0 and node.faults.lost[-1] == 200  # committed, answer lost
    assert node.faults.completes - completes == 2  # the client retried complete once
    assert node.faults.parts - parts >= 4  # four partitions, each cut into parts
    assert result.version == remote.version == before + 1  # one commit
    _same(remote, local)
    upload = _uploads(node, db.db_name, "items")
    [upload_id] = upload.upload_ids()
    assert upload.get(upload_id).state == "committed"  # the record lives with the table


def test_overwrite_in_parts_replaces_the_table(
    node: Node, embedded: lancedb.DBConnection, client_parts: None
) -> None:
    db = node.service.connect()
    remote = db.create_table("items", make_rows(50))
    local = embedded.create_table("items", make_rows(50))
    data = _rows(ROWS, start=1000, seed=2)
    node.faults.armed = 1
    remote.add(data, mode="overwrite", write_parallelism=4)
    local.add(data, mode="overwrite")
    assert node.faults.armed == 0
    _same(remote, local)


def test_parallel_parts_do_not_count_as_concurrent_writes(
    node: Node, embedded: lancedb.DBConnection, client_parts: None
) -> None:
    """A key allowed one write at a time per table: the parts commit nothing, so they run in
    parallel; the one commit (complete) is the write."""
    db = lancedb.connect(f"db://limited{uuid.uuid4().hex[:8]}", api_key=ONE_WRITER,
                         host_override=node.service.url)
    remote = db.create_table("items", make_rows(10))
    local = embedded.create_table("items", make_rows(10))
    data = _rows(ROWS, start=10, seed=4)
    completes = node.faults.completes
    remote.add(data, write_parallelism=4)
    local.add(data)
    assert node.faults.completes - completes == 1  # one upload: no part was refused
    _same(remote, local)


# -- the protocol, request by request ---------------------------------------------------------


def _create(raw: RawClient, table: str) -> str:
    response = raw.post(f"/v1/table/{table}/multipart_write/create")
    assert response.status_code == 200, response.text
    return response.json()["upload_id"]


def _part(raw: RawClient, table: str, upload_id: str, data: pa.Table, **params: str) -> Any:
    return raw.post(f"/v1/table/{table}/insert/", content=arrow_stream(data),
                    headers={"content-type": ARROW_STREAM},
                    params={"upload_id": upload_id, "upload_part_id": uuid.uuid4().hex, **params})


def _finish(raw: RawClient, table: str, upload_id: str, action: str = "complete") -> Any:
    return raw.post(f"/v1/table/{table}/multipart_write/{action}", params={"upload_id": upload_id})


@pytest.fixture
def table(node: Node) -> Iterator[tuple[RawClient, str]]:
    database = f"db{uuid.uuid4().hex[:10]}"
    raw = node.raw(database)
    assert raw.create("items", make_rows(20)).status_code == 200
    yield raw, database
    raw.close()


def test_complete_is_applied_once_however_often_it_is_sent(table, node: Node, embedded) -> None:
    raw, _ = table
    upload_id = _create(raw, "items")
    for start in (100, 200):
        assert _part(raw, "items", upload_id, make_rows(50, start=start)).status_code == 200
    answers = [_finish(raw, "items", upload_id) for _ in range(3)]
    assert [a.status_code for a in answers] == [200] * 3
    assert len({a.json()["version"] for a in answers}) == 1
    local = embedded.create_table("items", make_rows(20))
    local.add(pa.concat_tables([make_rows(50, start=100), make_rows(50, start=200)]))
    _same(node.service.connect(raw.database).open_table("items"), local)


def test_a_part_whose_schema_differs_is_refused(table) -> None:
    raw, _ = table
    upload_id = _create(raw, "items")
    extra = make_rows(5).append_column("bogus", pa.array([1] * 5))
    response = _part(raw, "items", upload_id, extra)
    assert response.status_code == 400 and "bogus" in response.text
    wrong_type = make_rows(5).set_column(2, "text", pa.array([[1]] * 5))
    assert _part(raw, "items", upload_id, wrong_type).status_code == 400


def test_parts_are_bounded_like_any_body(table) -> None:
    raw, _ = table
    upload_id = _create(raw, "items")
    response = _part(raw, "items", upload_id, make_rows(ROWS))
    assert response.status_code == 413, response.text


def test_an_unknown_upload_is_gone_not_a_missing_table(table, node: Node) -> None:
    raw, _ = table
    for response in (_part(raw, "items", "nosuchupload", make_rows(3)),
                     _finish(raw, "items", "nosuchupload"), _finish(raw, "items", "nosuchupload", "abort")):
        assert response.status_code == 410 and "nosuchupload" in response.text, response.text
    assert _finish(raw, "items", "../../etc").status_code == 400
    assert _finish(raw, "missing", "x").status_code == 404  # the table itself


def test_complete_without_parts_adds_nothing(table, node: Node) -> None:
    raw, _ = table
    upload_id = _create(raw, "items")
    response = _finish(raw, "items", upload_id)
    assert response.status_code == 200
    remote = node.service.connect(raw.database).open_table("items")
    assert remote.version == response.json()["version"]
    assert remote.count_rows() == 20


def test_abort_deletes_the_parts_and_complete_then_says_so(table, node: Node) -> None:
    raw, database = table
    before = _data_files(node, database, "items")
    upload_id = _create(raw, "items")
    assert _part(raw, "items", upload_id, make_rows(30, start=100)).status_code == 200
    assert len(_data_files(node, database, "items")) > len(before)  # staged on the table's storage
    assert _finish(raw, "items", upload_id, "abort").status_code == 200
    assert _finish(raw, "items", upload_id, "abort").status_code == 200  # a retried abort
    assert _data_files(node, database, "items") == before
    response = _finish(raw, "items", upload_id)
    assert response.status_code == 410 and "aborted" in response.text
    late = _part(raw, "items", upload_id, make_rows(3))
    assert late.status_code == 400 and "aborted" in late.text
    assert node.service.connect(database).open_table("items").count_rows() == 20


def test_a_completed_upload_cannot_be_aborted(table, node: Node) -> None:
    raw, database = table
    upload_id = _create(raw, "items")
    assert _part(raw, "items", upload_id, make_rows(30, start=100)).status_code == 200
    assert _finish(raw, "items", upload_id).status_code == 200
    response = _finish(raw, "items", upload_id, "abort")
    assert response.status_code == 400 and "completed" in response.text
    assert node.service.connect(database).open_table("items").count_rows() == 50


def test_concurrent_uploads_to_one_table_each_commit_once(table, node: Node, embedded) -> None:
    raw, database = table
    batches = {start: make_rows(40, start=start, seed=start) for start in (100, 200, 300, 400)}
    uploads = [_create(raw, "items") for _ in range(2)]
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda item: _part(raw, "items", uploads[item[0] % 2], item[1]),
                              enumerate(batches.values())))
        assert [p.status_code for p in parts] == [200] * 4
        answers = list(pool.map(lambda upload_id: _finish(raw, "items", upload_id), uploads * 2))
    assert [a.status_code for a in answers if a.status_code != 503] and all(
        a.status_code in (200, 503) for a in answers)  # a complete racing its twin may be told to retry
    versions = {upload_id: _finish(raw, "items", upload_id).json()["version"] for upload_id in uploads}
    assert len(set(versions.values())) == 2
    local = embedded.create_table("items", make_rows(20))
    local.add(pa.concat_tables(list(batches.values())))
    _same(node.service.connect(database).open_table("items"), local)


def test_the_agent_expires_forgotten_uploads_and_their_data(table, node: Node) -> None:
    raw, database = table
    before = _data_files(node, database, "items")
    forgotten = _create(raw, "items")
    assert _part(raw, "items", forgotten, make_rows(30, start=100)).status_code == 200
    done = _create(raw, "items")
    assert _part(raw, "items", done, make_rows(30, start=200)).status_code == 200
    assert _finish(raw, "items", done).status_code == 200
    uploads = _uploads(node, database, "items")
    assert sorted(uploads.upload_ids()) == sorted([forgotten, done])
    agent = LanceAgent(node.settings)
    agent.expire_uploads([f"{database}/items"])  # not expired yet: nothing happens
    assert sorted(uploads.upload_ids()) == sorted([forgotten, done])
    later = time.time() + node.settings.server.multipart_upload_ttl_seconds + 1
    agent.expire_uploads([f"{database}/items"], now=later)
    assert uploads.upload_ids() == []
    remote = node.service.connect(database).open_table("items")
    assert remote.count_rows() == 50  # the committed upload's data stays
    assert len(_data_files(node, database, "items")) == len(before) + 1  # the forgotten part's went
    assert _finish(raw, "items", forgotten).status_code == 410
    version = _dataset(node, database, "items").version
    assert _finish(raw, "items", done).json()["version"] == version  # found by its commit


def test_upload_records_live_under_the_table(table, node: Node) -> None:
    raw, database = table
    upload_id = _create(raw, "items")
    location = StorageCatalog(node.settings.storage).resolve(database)
    fs = location.filesystem()
    record = location.fs_path("items.lance", UPLOADS_DIR, upload_id, "upload.json")
    fs.invalidate_cache()
    assert fs.exists(record)
    assert raw.post("/v1/table/items/drop/").status_code == 200
    fs.invalidate_cache()
    assert not fs.exists(record)  # dropped with the table


def test_a_complete_that_died_after_its_commit_is_not_committed_again(table, node: Node) -> None:
    """A request that committed and died before recording it leaves an open record and its
    claim: while the claim is fresh others are told to retry; once stale, the next complete
    finds the commit by its upload id and answers its version."""
    raw, database = table
    upload_id = _create(raw, "items")
    assert _part(raw, "items", upload_id, make_rows(30, start=100)).status_code == 200
    version = _finish(raw, "items", upload_id).json()["version"]
    uploads = _uploads(node, database, "items")
    record = uploads.get(upload_id)
    record.state, record.version = "open", None
    uploads.put(record)  # as if the request died right after its commit
    busy = _finish(raw, "items", upload_id)
    assert busy.status_code == 503 and "being completed" in busy.text
    location = StorageCatalog(node.settings.storage).resolve(database)
    claim = location.fs_path("items.lance", UPLOADS_DIR, upload_id, "claim.json")
    fs = location.filesystem()
    fs.pipe_file(claim, json.dumps({"since": version - 1, "at": 0.0, "by": "dead"}).encode())
    again = _finish(raw, "items", upload_id)
    assert again.status_code == 200 and again.json()["version"] == version
    assert _dataset(node, database, "items").version == version
    assert node.service.connect(database).open_table("items").count_rows() == 50


def test_a_commit_that_raised_is_answered_by_what_landed(
    table, node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage fails a commit before it lands (503, and the retry commits) or after (the upload's
    own commit is found: success, nothing committed twice)."""
    raw, database = table
    real = writes.commit_staged

    def lost_after(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise OSError("injected: the storage's answer was lost")

    def failed_before(*args: Any, **kwargs: Any) -> Any:
        raise OSError("injected: storage is down")

    for fault, start in ((failed_before, 100), (lost_after, 200)):
        upload_id = _create(raw, "items")
        assert _part(raw, "items", upload_id, make_rows(30, start=start)).status_code == 200
        monkeypatch.setattr(writes, "commit_staged", fault)
        first = _finish(raw, "items", upload_id)
        monkeypatch.setattr(writes, "commit_staged", real)
        if fault is failed_before:
            assert first.status_code == 503, first.text
            first = _finish(raw, "items", upload_id)  # the client's retry
        assert first.status_code == 200, first.text
        assert first.json()["version"] == _dataset(node, database, "items").version
    assert node.service.connect(database).open_table("items").count_rows() == 80


def test_a_stale_claim_is_taken_over_by_one_request_only(table, node: Node) -> None:
    raw, database = table
    upload_id = _create(raw, "items")
    uploads = _uploads(node, database, "items")
    assert uploads.claim(upload_id, since=5, stale_after=300) is not None
    assert uploads.claim(upload_id, since=9, stale_after=300) is None  # held, fresh
    location = StorageCatalog(node.settings.storage).resolve(database)
    claim = location.fs_path("items.lance", UPLOADS_DIR, upload_id, "claim.json")
    location.filesystem().pipe_file(claim, json.dumps({"since": 5, "at": 0.0, "by": "dead"}).encode())
    with ThreadPoolExecutor(4) as pool:
        takers = list(pool.map(lambda _: uploads.claim(upload_id, since=9, stale_after=300), range(4)))
    winners = [taker for taker in takers if taker is not None]
    assert len(winners) == 1 and winners[0].since == 5  # the dead request's commit stays findable


def test_parts_that_mix_append_and_overwrite_are_refused(table, node: Node) -> None:
    raw, database = table
    upload_id = _create(raw, "items")
    assert _part(raw, "items", upload_id, make_rows(5, start=100)).status_code == 200
    assert _part(raw, "items", upload_id, make_rows(5, start=200), mode="overwrite").status_code == 200
    response = _finish(raw, "items", upload_id)
    assert response.status_code == 400 and "overwrite" in response.text
    assert _finish(raw, "items", upload_id, "abort").status_code == 200  # not left claimed
    assert node.service.connect(database).open_table("items").count_rows() == 20


def test_the_agents_reconciler_expires_uploads(tmp_path: Path) -> None:
    """The running agent, on a timer: an upload past its expiry goes, with its staged data."""
    settings = Settings(
        storage={"root": {"uri": str(tmp_path / "data")}},
        events={"embedded": {"directory": str(tmp_path / "events")},
                "outbox_directory": str(tmp_path / "outbox")},
        agent={"jobs_directory": str(tmp_path / "jobs"), "reconcile_interval_seconds": 0.2,
               "debounce_seconds": 0.1},
    ).with_absolute_paths()
    lancedb.connect(tmp_path / "data" / "db").create_table("t", make_rows(10))
    location = StorageCatalog(settings.storage).resolve("db")
    uploads = TableUploads(location, location.table_uri("t"))
    upload = uploads.create(ttl_seconds=0.0)  # expired at once
    dataset = lance.dataset(location.table_uri("t"))
    fragments, schema = writes.stage(dataset, make_rows(5, start=100), False, {})
    uploads.put_part(upload.upload_id, Part("p1", False, 5, schema.serialize().to_pybytes().hex(),
                                            [fragment.to_json() for fragment in fragments]))
    staged = tmp_path / "data" / "db" / "t.lance" / "data" / fragments[0].files[0].path
    assert staged.exists()

    async def run_agent_until_expired() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(LanceAgent(settings).run(stop))
        deadline = time.monotonic() + 30
        try:
            while uploads.upload_ids():
                assert not task.done() and time.monotonic() < deadline, "the upload was never expired"
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

    asyncio.run(run_agent_until_expired())
    assert not staged.exists()
    assert lance.dataset(location.table_uri("t")).count_rows() == 10


@pytest.mark.ray
def test_a_parallel_add_through_the_deployed_service_on_defaults(db, embedded) -> None:
    """The Serve deployment (two replicas, executors on, default limits): the next read, on
    whichever replica, sees the upload's commit, as it sees any write's."""
    remote = db.create_table("items", make_rows(10))
    local = embedded.create_table("items", make_rows(10))
    data = _rows(2000, start=10, seed=3)
    remote.add(data, write_parallelism=4)
    local.add(data)
    for _ in range(4):  # reads spread over the replicas
        assert remote.count_rows() == local.count_rows()
    _same(remote, local)
