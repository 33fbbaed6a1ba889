"""Tenancy: keys bound to databases, with roles, over HTTP with the official client and raw.

Three tenant keys sit beside the tests' admin key (tests/support/tenants.py):
alpha-write and alpha-read on ``alpha*``, beta-admin on ``beta*``.
"""

from __future__ import annotations

import time
import uuid

import httpx
import lancedb
import pytest

from tests.support.api import ARROW_STREAM, RawClient, arrow_stream, make_rows
from tests.support.service import INDEXED, LiveService
from tests.support.tenants import ALPHA_READ, ALPHA_WRITE, BETA_ADMIN

pytestmark = pytest.mark.ray


def _name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def _state(table) -> tuple:
    """What a refused request must leave as it was."""
    return (table.version, table.count_rows(), [i.name for i in table.list_indices()],
            table.tags.list())


def _connect(service: LiveService, database: str, key: str) -> lancedb.DBConnection:
    return lancedb.connect(f"db://{database}", api_key=key, host_override=service.url)


ROWS = arrow_stream(make_rows(3, start=1000))
ARROW = {"content-type": ARROW_STREAM}
# Every table operation of the protocol, as (path under /v1/table/t/, JSON body or Arrow bytes).
OPERATIONS = [
    ("describe/", {}), ("count_rows/", {}), ("stats/", {}),
    ("query/", {"vector": [], "k": 5}), ("explain_plan/", {"query": {"vector": [], "k": 5}}),
    ("analyze_plan/", {"vector": [], "k": 5}),
    ("insert/", ROWS), ("merge_insert/?on=id&when_not_matched_insert_all=true", ROWS),
    ("create/", ROWS), ("delete/", {"predicate": "id > 0"}),
    ("update/", {"updates": [["price", "1.0"]]}), ("drop/", {}),
    ("rename/", {"new_table_name": "u"}),
    ("create_index/", {"column": "id", "index_type": "BTREE"}), ("index/list/", {}),
    ("index/id_idx/stats/", {}), ("index/id_idx/drop/", {}),
    ("add_columns/", {"new_columns": [{"name": "x", "expression": "1"}]}),
    ("alter_columns/", {"alterations": [{"path": "text", "rename": "words"}]}),
    ("drop_columns/", {"columns": ["text"]}), ("version/list/", {}), ("restore/", {"version": 1}),
    ("tags/list/", {}), ("tags/create/", {"tag": "v1", "version": 1}),
    ("tags/update/", {"tag": "v1", "version": 1}), ("tags/delete/", {"tag": "v1"}),
    ("tags/version/", {"tag": "v1"}),
]
NAMESPACE_OPERATIONS = ["$/list", "$/table/list", "team/describe", "team/create", "team/drop"]


def _call(client: RawClient, path: str, body) -> httpx.Response:
    if isinstance(body, bytes):
        return client.post(f"/v1/table/t/{path}", content=body, headers=ARROW)
    return client.post(f"/v1/table/t/{path}", json_body=body)


@pytest.fixture
def beta(live_service: LiveService):
    """A beta database with a table, an index, a tag and a namespace, made by the admin key."""
    name = _name("beta")
    db = _connect(live_service, name, live_service.api_key)
    table = db.create_table("t", make_rows(20))
    table.create_index("id", wait_timeout=INDEXED)
    table.tags.create("v1", table.version)
    db.create_namespace(["team"])
    return name, db, table


def test_another_databases_key_gets_403_for_everything_and_learns_nothing(
    live_service: LiveService, beta
) -> None:
    name, db, table = beta
    before = _state(table)
    missing = _name("beta")  # a beta database that does not exist
    for database in (name, missing):
        client = RawClient(live_service, database, api_key=ALPHA_WRITE)
        try:
            answers = [_call(client, path, body) for path, body in OPERATIONS]
            answers += [client.post(f"/v1/namespace/{op}", json_body={})
                        for op in NAMESPACE_OPERATIONS]
            answers.append(client.get("/v1/table/"))
        finally:
            client.close()
        for answer in answers:
            assert answer.status_code == 403, (database, answer.request.url, answer.text)
            assert answer.json()["message"] == (
                f"API key 'alpha-write' may not use database '{database}'")
    # the official client sees the same refusals
    intruder = _connect(live_service, name, ALPHA_WRITE)
    for call in (intruder.table_names, lambda: intruder.open_table("t"),
                 lambda: intruder.create_table("new", make_rows(2)),
                 lambda: intruder.drop_table("t"), lambda: intruder.rename_table("t", "u"),
                 lambda: intruder.list_namespaces(), lambda: intruder.create_namespace(["x"])):
        with pytest.raises(Exception, match="403"):
            call()
    assert _state(table) == before
    assert db.table_names() == ["t"] and db.list_namespaces().namespaces == ["team"]
    assert not (live_service.root / missing).exists()


def test_a_read_key_reads_and_changes_nothing(live_service: LiveService) -> None:
    name = _name("alpha")
    owner = _connect(live_service, name, ALPHA_WRITE)
    table = owner.create_table("t", make_rows(20))
    table.create_index("id", wait_timeout=INDEXED)
    table.tags.create("v1", table.version)
    before = _state(table)
    reader = _connect(live_service, name, ALPHA_READ)
    view = reader.open_table("t")
    assert reader.table_names() == ["t"]
    assert view.count_rows() == 20 and view.search().limit(3).to_arrow().num_rows == 3
    assert view.list_versions() and view.tags.list() == table.tags.list()
    client = RawClient(live_service, name, api_key=ALPHA_READ)
    try:
        for path, body in OPERATIONS:
            answer = _call(client, path, body)
            if path.split("/")[0] in ("describe", "count_rows", "stats", "query", "explain_plan",
                                      "analyze_plan", "version", "tags") and path not in (
                    "tags/create/", "tags/update/", "tags/delete/"):
                assert answer.status_code in (200, 400), (path, answer.text)  # 400: tags/version
            elif path.startswith("index/") and path != "index/id_idx/drop/":
                assert answer.status_code == 200, (path, answer.text)
            else:
                assert answer.status_code == 403, (path, answer.text)
                assert "role read" in answer.text and "needs write" in answer.text
        for op in ("team/create", "team/drop"):
            assert client.post(f"/v1/namespace/{op}", json_body={}).status_code == 403
    finally:
        client.close()
    with pytest.raises(Exception, match="403"):
        view.add(make_rows(1, start=500))
    with pytest.raises(Exception, match="403"):
        reader.create_table("other", make_rows(1))
    assert _state(table) == before


def test_creating_a_database_on_first_use_needs_an_allowed_key(live_service: LiveService) -> None:
    allowed, refused = _name("alpha"), _name("gamma")
    _connect(live_service, allowed, ALPHA_WRITE).create_table("t", make_rows(2))
    assert (live_service.root / allowed).is_dir()
    for key in (ALPHA_WRITE, BETA_ADMIN):
        with pytest.raises(Exception, match="403"):
            _connect(live_service, refused, key).create_table("t", make_rows(2))
    assert not (live_service.root / refused).exists()


def test_admin_listing_shows_only_the_keys_databases(live_service: LiveService) -> None:
    alpha, beta = _name("alpha"), _name("beta")
    for database, key in ((alpha, ALPHA_WRITE), (beta, BETA_ADMIN)):
        table = _connect(live_service, database, key).create_table("t", make_rows(300))
        table.create_scalar_index("id", wait_timeout=INDEXED)
        table.add(make_rows(20, start=300))  # unindexed rows: the agent makes a job of them

    def jobs(key: str, **params) -> httpx.Response:
        return httpx.get(f"{live_service.url}/v1/admin/jobs", params={"limit": 10_000, **params},
                         headers={"x-api-key": key}, timeout=30)

    deadline = time.monotonic() + 120
    while True:
        seen = {job["database"] for job in jobs(live_service.api_key).json()["jobs"]}
        if {alpha, beta} <= seen:
            break
        assert time.monotonic() < deadline, f"the agent made no jobs for {alpha} and {beta}"
        time.sleep(0.5)
    listed = {job["database"] for job in jobs(BETA_ADMIN).json()["jobs"]}
    assert beta in listed and all(db.startswith("beta") for db in listed)
    refused = jobs(BETA_ADMIN, database=alpha)
    assert refused.status_code == 403 and "may not use database" in refused.text
    for key in (ALPHA_WRITE, ALPHA_READ):
        answer = jobs(key)
        assert answer.status_code == 403 and "needs admin" in answer.text


def test_no_clear_api_key_in_rays_control_plane(live_service: LiveService) -> None:
    """Serve's checkpoints in the GCS (deployment configs, init args) hold digests, never keys."""
    from ray.experimental import internal_kv
    from ray.serve._private.storage.kv_store import SERVE_INTERNAL_KV_NAMESPACE

    from lancedb_ray.settings import key_digest

    keys = internal_kv._internal_kv_list(b"", namespace=SERVE_INTERNAL_KV_NAMESPACE)
    stored = b"".join(internal_kv._internal_kv_get(k, namespace=SERVE_INTERNAL_KV_NAMESPACE) or b""
                      for k in keys)
    assert key_digest(ALPHA_WRITE).encode() in stored  # the deployment's arguments are in here...
    for key in (live_service.api_key, ALPHA_WRITE, ALPHA_READ, BETA_ADMIN):
        assert key.encode() not in stored  # ... but no key in the clear
