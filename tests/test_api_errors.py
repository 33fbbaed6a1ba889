"""Every error case: the status the client acts on, a message that names the problem, no harm done.

4xx answers say what was wrong; a bad request never changes data and never
takes a replica down; overload answers 503 so that the client retries.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import lancedb
import pyarrow as pa
import pytest

from tests.support.api import (
    ARROW_STREAM,
    RawClient,
    all_rows,
    arrow_stream,
    make_rows,
    query_vector,
    raw_fixture,  # noqa: F401
)
from tests.support.service import INDEXED, LiveService, service_settings, wait_healthy

pytestmark = pytest.mark.ray


@pytest.fixture
def table(db):
    return db.create_table("items", make_rows(50))


# -- 404 ---------------------------------------------------------------------------------------

TABLE_ENDPOINTS = [
    ("describe/", {}),
    ("count_rows/", {}),
    ("stats/", {}),
    ("query/", {"vector": [], "k": 5}),
    ("explain_plan/", {"query": {"vector": [], "k": 5}}),
    ("analyze_plan/", {"vector": [], "k": 5}),
    ("delete/", {"predicate": "id > 0"}),
    ("update/", {"updates": [["id", "1"]]}),
    ("create_index/", {"column": "id", "index_type": "BTREE"}),
    ("index/list/", {}),
    ("index/id_idx/stats/", {}),
    ("index/id_idx/drop/", {}),
    ("add_columns/", {"new_columns": [{"name": "x", "expression": "1"}]}),
    ("alter_columns/", {"alterations": [{"path": "id", "rename": "key"}]}),
    ("drop_columns/", {"columns": ["id"]}),
    ("version/list/", {}),
    ("restore/", {"version": 1}),
    ("rename/", {"new_table_name": "other"}),
    ("tags/list/", {}),
    ("tags/create/", {"tag": "t", "version": 1}),
]


def test_every_table_endpoint_answers_404_for_a_missing_table(raw: RawClient) -> None:
    for path, body in TABLE_ENDPOINTS:
        response = raw.post(f"/v1/table/ghost/{path}", json_body=body)
        assert response.status_code == 404, (path, response.status_code, response.text)
        assert "ghost" in response.text and "not found" in response.text, path
    for path in ("insert/", "merge_insert/?on=id"):
        response = raw.post(f"/v1/table/ghost/{path}", content=arrow_stream(make_rows(1)),
                            headers={"content-type": ARROW_STREAM})
        assert response.status_code == 404, (path, response.text)


def test_client_raises_not_found_for_a_missing_table(db, table) -> None:
    db.drop_table("items")
    for call in (table.count_rows, lambda: table.add(make_rows(1)), table.list_versions,
                 lambda: table.search().limit(1).to_arrow(), table.list_indices):
        with pytest.raises(ValueError, match="was not found"):
            call()


def test_missing_index_stats_is_none_and_drop_raises(table) -> None:
    assert table.index_stats("nope") is None
    with pytest.raises(Exception, match="not found"):
        table.drop_index("nope")


# -- 400: bad input, named -------------------------------------------------------------------


def test_create_existing_table_raw_says_already_exists(raw: RawClient, table) -> None:
    response = raw.create("items", make_rows(3))
    assert response.status_code == 400
    assert "already exists" in response.text
    assert raw.create("items", make_rows(3), mode="bogus").status_code == 400


def test_unknown_column_in_a_filter(table) -> None:
    calls = [
        lambda: table.search().where("nope > 1").limit(5).to_arrow(),
        lambda: table.search(query_vector()).where("nope > 1").limit(5).to_arrow(),
        lambda: table.count_rows("nope = 1"),
        lambda: table.delete("nope = 1"),
        lambda: table.update(where="nope = 1", values={"price": 1.0}),
    ]
    for call in calls:
        with pytest.raises(Exception, match="(?s)400.*nope"):
            call()


def test_unparsable_sql(table) -> None:
    with pytest.raises(Exception, match="400"):
        table.search().where("id >>> 3").limit(5).to_arrow()
    with pytest.raises(Exception, match="400"):
        table.update(values_sql={"price": "price +* 2"})


def test_vector_of_the_wrong_dimension(table, raw: RawClient) -> None:
    with pytest.raises(Exception, match="400.*dimension"):
        table.search([0.1, 0.2, 0.3]).limit(5).to_arrow()
    response = raw.query("items", {"vector": [[0.1] * 8, [0.1] * 3], "k": 5})
    assert response.status_code == 400
    assert "dimension 3" in response.text


def test_schema_mismatch_on_insert(table, raw: RawClient) -> None:
    with pytest.raises(ValueError, match="surprise"):  # the client checks this itself...
        table.add(pa.table({"id": [1], "surprise": ["x"]}))
    response = raw.insert("items", pa.table({"id": [1], "surprise": ["x"]}))  # ... and we do
    assert response.status_code == 400
    assert "surprise" in response.text
    response = raw.insert("items", pa.table({"id": ["not a number"]}))
    assert response.status_code == 400
    assert "'id'" in response.text
    wrong_dim = make_rows(2, start=100, dim=3)
    response = raw.insert("items", wrong_dim)
    assert response.status_code == 400
    assert "vector" in response.text


def test_malformed_bodies(raw: RawClient, table) -> None:
    cases = [
        ("insert/", b"this is not arrow", ARROW_STREAM, "not a valid Arrow IPC stream"),
        ("insert/", b"", ARROW_STREAM, "empty"),
        ("insert/", b'{"id": 1}', "application/json", "expected an Arrow IPC stream"),
        ("merge_insert/?on=id", b"\xff\xff\xff\xff garbage", ARROW_STREAM, "Arrow"),
        ("query/", b"{not json", "application/json", "not valid JSON"),
        ("query/", b"\xff\xfe\x00binary", "application/json", "not valid JSON"),
        ("query/", b"[1, 2, 3]", "application/json", "must be a JSON object"),
        ("query/", b'{"k": "many", "vector": []}', "application/json", "k"),
        ("delete/", b"{}", "application/json", "predicate"),
        ("update/", b'{"updates": []}', "application/json", "at least one column"),
        ("restore/", b'{"version": {"a": 1}}', "application/json", "version"),
        ("add_columns/", arrow_stream(pa.schema([]).empty_table()), ARROW_STREAM, "at least one"),
    ]
    for path, body, content_type, problem in cases:
        response = raw.post(f"/v1/table/items/{path}", content=body,
                            headers={"content-type": content_type})
        assert response.status_code == 400, (path, body, response.status_code, response.text)
        assert problem in response.text, (path, response.text)


def test_bad_query_parameters(raw: RawClient, table) -> None:
    rows = arrow_stream(make_rows(1, start=999))
    headers = {"content-type": ARROW_STREAM}
    assert raw.post("/v1/table/items/insert/?mode=sideways", content=rows,
                    headers=headers).status_code == 400
    no_key = raw.post("/v1/table/items/merge_insert/", content=rows, headers=headers)
    assert no_key.status_code == 400 and "'on'" in no_key.text
    bad_key = raw.post("/v1/table/items/merge_insert/?on=nope&when_not_matched_insert_all=true",
                       content=rows, headers=headers)
    assert bad_key.status_code == 400 and "nope" in bad_key.text
    listing = raw.get("/v1/table/", params={"limit": "lots"})
    assert listing.status_code == 400 and "limit" in listing.text


def test_unknown_index_type(raw: RawClient, table) -> None:
    response = raw.post("/v1/table/items/create_index/",
                        json_body={"column": "id", "index_type": "MAGIC_TREE"})
    assert response.status_code == 400
    assert "MAGIC_TREE" in response.text and "BTREE" in response.text


def test_schema_changes_with_bad_input(table) -> None:
    with pytest.raises(Exception, match="400"):
        table.add_columns({"broken": "price +* 2"})
    with pytest.raises(Exception, match="400.*nope"):
        table.alter_columns({"path": "nope", "rename": "x"})
    with pytest.raises(Exception, match="400.*nope"):
        table.drop_columns(["nope"])
    with pytest.raises(Exception, match="400"):
        table.alter_columns({"path": "text", "data_type": pa.list_(pa.int64())})


def test_restore_of_a_missing_version(table) -> None:
    with pytest.raises(Exception, match="400.*99"):
        table.restore(99)


# -- names that could escape the storage location --------------------------------------------


def _layout(service: LiveService) -> tuple[set[str], set[str]]:
    """The entries beside the storage root and the databases in it (what an escape would add).

    Only names, not files inside: the agent keeps writing there in the background.
    """
    return ({p.name for p in service.root.parent.iterdir()},
            {p.name for p in service.root.iterdir()} if service.root.exists() else set())


@pytest.mark.parametrize("database", ["..", ".", "a/b", "..\\x", ".hidden", "x" * 300, "bad name"])
def test_unsafe_database_names_are_refused(live_service: LiveService, database: str) -> None:
    before = _layout(live_service)
    client = RawClient(live_service, database)
    try:
        listed = client.get("/v1/table/")
        created = client.create("t", make_rows(2))
    finally:
        client.close()
    for response in (listed, created):
        assert response.status_code == 400, (database, response.status_code, response.text)
        assert "invalid database name" in response.text
    assert _layout(live_service) == before


@pytest.mark.parametrize(
    "table_id", ["%2E%2E", "%2E", "..$t", "ns$..$t", "a%5Cb", "$t", "ns$$t", ".t", "a%00b"]
)
def test_unsafe_table_ids_are_refused(live_service: LiveService, raw: RawClient,
                                      table_id: str) -> None:
    before = _layout(live_service)
    response = raw.create(table_id, make_rows(2))
    assert response.status_code == 400, (table_id, response.status_code, response.text)
    assert "invalid" in response.text and "name" in response.text
    assert raw.post(f"/v1/table/{table_id}/describe/").status_code == 400
    assert _layout(live_service) == before


def test_a_slash_in_a_table_id_never_reaches_storage(live_service: LiveService,
                                                     raw: RawClient) -> None:
    before = _layout(live_service)
    for table_id in ("a%2Fb", "..%2F..%2Fescape", "%2E%2E%2Fescape"):
        response = raw.create(table_id, make_rows(2))
        assert response.status_code in (400, 404), (table_id, response.text)
    assert _layout(live_service) == before


def test_rename_to_an_unsafe_name(raw: RawClient, table) -> None:
    for name in ("..", "../escape", "a/b"):
        response = raw.post("/v1/table/items/rename/", json_body={"new_table_name": name})
        assert response.status_code == 400, (name, response.text)
    assert table.count_rows() == 50


def test_missing_database_header(live_service: LiveService) -> None:
    response = httpx.post(f"{live_service.url}/v1/table/t/describe/",
                          headers={"x-api-key": live_service.api_key})
    assert response.status_code == 400
    assert "x-lancedb-database" in response.text


# -- 401 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "wrong-key"])
def test_missing_or_wrong_api_key(live_service: LiveService, key: str) -> None:
    client = RawClient(live_service, "somedb", api_key=key)
    try:
        for response in (client.get("/v1/table/"),
                         client.post("/v1/table/t/describe/"),
                         client.post("/v1/namespace/$/list"),
                         client.create("t", make_rows(1))):
            assert response.status_code == 401, response.text
            assert "key" in response.text.lower()
    finally:
        client.close()
    assert not (live_service.root / "somedb").exists()


def test_client_with_a_wrong_key(live_service: LiveService) -> None:
    db = lancedb.connect(f"db://k{uuid.uuid4().hex[:8]}", api_key="wrong-key",
                         host_override=live_service.url)
    with pytest.raises(Exception, match="401"):
        db.create_table("t", make_rows(2))


# -- no harm done ------------------------------------------------------------------------------


def _replica_pids() -> dict[str, int]:
    """The query node replicas of the main application, by actor name, with their processes."""
    import ray

    pids = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if "lancedb#QueryNode" in actor["name"]:
            handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
            pids[actor["name"]] = ray.get(handle.__ray_call__.remote(lambda _: os.getpid()))
    return pids


def test_a_barrage_of_bad_requests_changes_nothing(live_service: LiveService, db,
                                                   raw: RawClient) -> None:
    replicas = _replica_pids()
    assert len(replicas) == live_service.settings["server"]["num_replicas"]
    table = db.create_table("items", make_rows(100))
    table.create_index("id", wait_timeout=INDEXED)
    before_rows = all_rows(table)
    before_version = table.version
    arrow = {"content-type": ARROW_STREAM}
    bad = [
        lambda: raw.post("/v1/table/items/insert/", content=b"\x00" * 64, headers=arrow),
        lambda: raw.insert("items", pa.table({"other": [1, 2]})),
        lambda: raw.insert("items", make_rows(3, dim=5)),
        lambda: raw.post("/v1/table/items/merge_insert/?on=nope", content=arrow_stream(
            make_rows(2)), headers=arrow),
        lambda: raw.post("/v1/table/items/delete/", json_body={"predicate": "nope = 1"}),
        lambda: raw.post("/v1/table/items/delete/", content=b"{{{"),
        lambda: raw.post("/v1/table/items/update/",
                         json_body={"predicate": "id < 5", "updates": [["nope", "1"]]}),
        lambda: raw.post("/v1/table/items/update/",
                         json_body={"updates": [["price", "'not a number'"]]}),
        lambda: raw.post("/v1/table/items/add_columns/",
                         json_body={"new_columns": [{"name": "x", "expression": "nope + 1"}]}),
        lambda: raw.post("/v1/table/items/alter_columns/",
                         json_body={"alterations": [{"path": "id", "data_type": {"type": "?"}}]}),
        lambda: raw.post("/v1/table/items/drop_columns/", json_body={"columns": ["nope"]}),
        lambda: raw.post("/v1/table/items/create_index/",
                         json_body={"column": "text", "index_type": "IVF_PQ"}),
        lambda: raw.post("/v1/table/items/index/nope_idx/drop/"),
        lambda: raw.post("/v1/table/items/restore/", json_body={"version": 77}),
        lambda: raw.post("/v1/table/items/rename/", json_body={"new_table_name": "../x"}),
        lambda: raw.post("/v1/table/items/tags/create/", json_body={"tag": "t", "version": 50}),
        lambda: raw.query("items", {"vector": [1.0] * 3, "k": 5}),
        lambda: raw.query("items", {"filter": "nope", "k": 5}),
        lambda: raw.query("items", {"k": 5, "columns": 5}),
        lambda: raw.query("items", {"full_text_query": {"query": {"fuzzy": {}}}, "k": 5}),
        lambda: raw.query("items", {"full_text_query": {"columns": ["nope"], "query": "x"},
                                    "k": 5}),
        lambda: raw.post("/v1/table/items/explain_plan/", json_body={"verbose": True}),
        lambda: raw.post("/v1/table/items/count_rows/", json_body={"predicate": "id ==== 1"}),
        lambda: raw.post("/v1/table/items/create/", content=b"junk", headers=arrow),
    ]
    for _ in range(2):
        for number, send in enumerate(bad):
            response = send()
            assert 400 <= response.status_code < 500, (number, response.status_code,
                                                        response.text)
            assert "Traceback" not in response.text and ".rs:" not in response.text
    assert table.version == before_version
    assert all_rows(table) == before_rows
    assert [i.name for i in table.list_indices()] == ["id_idx"]
    assert table.tags.list() == {}
    assert db.list_tables().tables == ["items"]
    # still answering, still writable, and by the same replica processes
    table.add(make_rows(1, start=100))
    assert table.count_rows() == 101
    assert _replica_pids() == replicas


# -- overload: 503 from the proxy, so the client retries ---------------------------------------


@pytest.fixture(scope="module")
def tiny_service(live_service: LiveService, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[str]:
    """A second application that takes one request at a time and queues one more."""
    from ray import serve

    from lancedb_ray.api.app import build_app

    settings = service_settings(tmp_path_factory.mktemp("tiny"))
    settings["server"].update(num_replicas=1, max_ongoing_requests=1, max_queued_requests=1)
    settings["agent"]["enabled"] = False
    settings["executors"] = {"enabled": False}
    serve.run(build_app({"settings": settings}), name="overload", route_prefix="/overload")
    url = f"{live_service.url}/overload"
    wait_healthy(url)
    yield url
    serve.delete("overload", _blocking=False)  # the session's shutdown waits for it


def _trickle(seconds: float, rows: pa.Table) -> Iterator[bytes]:
    body = arrow_stream(rows)
    steps = 10
    size = len(body) // steps + 1
    for i in range(steps + 1):
        time.sleep(seconds / steps)
        yield body[i * size:(i + 1) * size]


def test_overload_answers_503(tiny_service: str, live_service: LiveService) -> None:
    headers = {"x-api-key": live_service.api_key, "x-lancedb-database": "busy"}
    with httpx.Client(timeout=60) as client:
        created = client.post(f"{tiny_service}/v1/table/t/create/", headers={
            **headers, "content-type": ARROW_STREAM}, content=arrow_stream(make_rows(5)))
        assert created.status_code == 200, created.text

    statuses: list[int] = []

    def slow_insert() -> None:
        with httpx.Client(timeout=60) as client:
            response = client.post(
                f"{tiny_service}/v1/table/t/insert/",
                headers={**headers, "content-type": ARROW_STREAM},
                content=_trickle(4.0, make_rows(5, start=100)),
            )
            statuses.append(response.status_code)

    # one request in progress (its body still arriving) and one queued fill the deployment
    busy = [threading.Thread(target=slow_insert) for _ in range(2)]
    for thread in busy:
        thread.start()
        time.sleep(0.7)
    with httpx.Client(timeout=30) as client:
        rejected = client.post(f"{tiny_service}/v1/table/t/count_rows/", headers=headers,
                               content=b"{}")
    for thread in busy:
        thread.join()
    assert rejected.status_code == 503, rejected.text
    assert statuses == [200, 200]  # the admitted requests were served
    with httpx.Client(timeout=30) as client:
        count = client.post(f"{tiny_service}/v1/table/t/count_rows/", headers=headers,
                            content=b"{}")
    assert count.json() == 15
