"""Hostile requests a stranger could send: each is a clear 4xx, costs no memory and changes nothing.

Raw HTTP against the live service, since the official client never sends these.
"""

from __future__ import annotations

import json
import os
import resource

import httpx
import pyarrow as pa
import pytest

from tests.support import hostile
from tests.support.api import ARROW_STREAM, RawClient, all_rows, make_rows, raw_fixture  # noqa: F401
from tests.support.service import LiveService

pytestmark = pytest.mark.ray
ARROW = {"content-type": ARROW_STREAM}
JSON = {"content-type": "application/json"}


@pytest.fixture
def table(db):
    return db.create_table("items", make_rows(20))


def _replica_peak_rss() -> dict[str, int]:
    """Each query node replica's peak resident memory in bytes (getrusage: it only grows)."""
    import ray

    peaks = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if "lancedb#QueryNode" in actor["name"]:
            handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
            kib = ray.get(handle.__ray_call__.remote(
                lambda _: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
            peaks[actor["name"]] = kib * 1024
    return peaks


@pytest.mark.parametrize("key", ["caf\u00e9-key", "x" * 300, "tab\tkey", "\u00ff" * 10])
def test_malformed_api_keys_are_401(live_service: LiveService, key: str) -> None:
    headers = {"x-api-key": key.encode("latin-1"), "x-lancedb-database": "anydb"}
    for method, path in (("GET", "/v1/table/"), ("POST", "/v1/table/t/describe/"),
                         ("GET", "/v1/admin/jobs")):
        response = httpx.request(method, f"{live_service.url}{path}", headers=headers)
        assert response.status_code == 401, (key, path, response.text)
        assert "key" in response.json()["message"]


def test_lying_arrow_bodies_are_refused_before_they_are_decoded(raw: RawClient, table) -> None:
    before = _replica_peak_rss()
    cases = [
        (hostile.claims_rows(10**9), 413, "rows"),
        (hostile.more_rows_than_buffers(), 400, "not a valid Arrow IPC stream"),
        (hostile.lz4_claims(2**50), 413, "expand"),
        (hostile.lz4_bomb(256), 413, "expand"),
    ]
    for body, status, problem in cases:
        for path in ("/v1/table/fresh/create/", "/v1/table/items/insert/",
                     "/v1/table/items/merge_insert/?on=a&when_not_matched_insert_all=true"):
            response = raw.post(path, content=body, headers=ARROW)
            assert response.status_code == status, (path, problem, response.text)
            assert problem in response.json()["message"], response.text
    after = _replica_peak_rss()
    for name, peak in after.items():  # a decoded bomb alone would take 256 MiB
        assert peak - before.get(name, 0) < 128 * 1024 * 1024, (name, before, after)
    assert raw.get("/v1/table/").json()["tables"] == ["items"]
    assert table.count_rows() == 20


def test_honest_compressed_bodies_still_load(raw: RawClient) -> None:
    for codec in ("lz4", "zstd"):
        body = hostile.arrow_stream(make_rows(30), codec)
        assert raw.post(f"/v1/table/{codec}/create/", content=body, headers=ARROW).status_code == 200
        response = raw.post(f"/v1/table/{codec}/count_rows/", json_body={})
        assert response.json() == 30


def test_a_zero_column_insert_is_refused(raw: RawClient, table) -> None:
    empty = hostile.arrow_stream(pa.table({"a": [1, 2]}).drop_columns(["a"]))
    for path in ("insert/", "create/", "merge_insert/?on=id"):
        response = raw.post(f"/v1/table/items/{path}", content=empty, headers=ARROW)
        assert response.status_code == 400, (path, response.text)
        assert "no columns" in response.text
    assert table.count_rows() == 20


JSON_ROUTES = [
    "/v1/table/items/describe/", "/v1/table/items/count_rows/", "/v1/table/items/query/",
    "/v1/table/items/explain_plan/", "/v1/table/items/analyze_plan/", "/v1/table/items/delete/",
    "/v1/table/items/update/", "/v1/table/items/create_index/", "/v1/table/items/index/list/",
    "/v1/table/items/add_columns/", "/v1/table/items/alter_columns/",
    "/v1/table/items/drop_columns/", "/v1/table/items/restore/", "/v1/table/items/rename/",
    "/v1/table/items/tags/create/", "/v1/table/items/tags/update/",
    "/v1/table/items/tags/delete/", "/v1/table/items/tags/version/",
    "/v1/namespace/ns/create", "/v1/namespace/ns/drop",
]


def test_deep_json_and_huge_numbers_are_400_on_every_json_route(raw: RawClient, table) -> None:
    cases = [(hostile.deep_json(50_000), "nests deeper"), (hostile.huge_integer(4_300), "out of range"),
             (b'{"k": 5, "vector": [NaN]}', "not a JSON number"),
             (b'{"k": 5, "vector": [Infinity]}', "not a JSON number")]
    for path in JSON_ROUTES:
        for body, problem in cases:
            response = raw.post(path, content=body, headers=JSON)
            assert response.status_code == 400, (path, problem, response.text)
            assert problem in response.text, (path, response.text)
    assert all_rows(table).num_rows == 20


def test_absurd_query_shapes_are_400_on_query_explain_and_analyze(raw: RawClient, table) -> None:
    shapes = [
        ({"k": 5, "offset": -1}, "offset"),
        ({"k": 5, "offset": 10**30}, "out of range"),
        ({"k": 10**12}, "k = 1000000000000"),
        ({"k": 5, "filter": "(" * 10_000 + "id > 1" + ")" * 10_000}, "parsing"),
        ({"k": 5, "columns": [f"c{i}" for i in range(100_000)]}, "c0"),
        ({"k": 5, "vector": [0.5] * 7 + ["1e400"]}, "finite"),
        (hostile.nested_fts(200), "nests deeper"),
    ]
    for shape, problem in shapes:
        query = {"vector": [], **shape}
        for path, body in (("query/", query), ("analyze_plan/", query),
                           ("explain_plan/", {"query": query})):
            content = json.dumps(body).replace('"1e400"', "1e400").encode()  # inf, unquoted
            response = raw.post(f"/v1/table/items/{path}", content=content, headers=JSON)
            assert response.status_code == 400, (path, problem, response.text)
            assert problem in response.text, (path, response.text[:300])
            assert len(response.text) < 2_000  # the 20,000-character filter is not echoed whole


def test_bad_index_schema_and_history_requests_are_400(raw: RawClient, table) -> None:
    version = table.version
    cases = [
        ("create_index/", {"column": "vector", "index_type": "IVF_PQ", "num_bits": 3}, "num_bits"),
        ("create_index/", {"column": "id", "index_type": "BTREE", "name": "../x"}, "index name"),
        ("alter_columns/", {"alterations": [{"path": "text", "rename": "id"}]}, "id"),
        ("restore/", {"version": "../../x"}, "tag name"),
        ("tags/create/", {"tag": "../..", "version": 1}, "tag name"),
        ("tags/create/", {"tag": "", "version": 1}, "tag name"),
        ("tags/create/", {"tag": "a/b", "version": 1}, "tag name"),
        ("tags/update/", {"tag": "a/b", "version": 1}, "tag name"),
        ("tags/delete/", {"tag": "..", "version": 1}, "tag name"),
        ("index/..%2F..%2Fx/stats/", {}, None),
        ("index/a%00b/drop/", {}, "index name"),
    ]
    for path, body, problem in cases:
        response = raw.post(f"/v1/table/items/{path}", json_body=body)
        assert 400 <= response.status_code < 500, (path, response.text)
        if problem:
            assert response.status_code == 400 and problem in response.text, (path, response.text)
    assert table.version == version
    assert table.list_indices() == [] and table.tags.list() == {}


def test_listing_a_missing_database_creates_nothing(live_service: LiveService) -> None:
    client = RawClient(live_service, "never-created-db")
    try:
        assert client.get("/v1/table/").json() == {"tables": [], "page_token": None}
        assert client.post("/v1/namespace/$/list").json()["namespaces"] == []
        assert client.post("/v1/table/t/describe/").status_code == 404
        assert client.post("/v1/table/t/count_rows/", json_body={}).status_code == 404
    finally:
        client.close()
    assert not os.path.exists(live_service.root / "never-created-db")


def test_no_route_answers_without_a_key(live_service: LiveService) -> None:
    for path in ("/openapi.json", "/docs", "/redoc"):
        response = httpx.get(f"{live_service.url}{path}")
        assert response.status_code in (401, 404), (path, response.status_code)
