"""Every route the clients can send: implemented ones match embedded lancedb, the rest answer
501 naming the operation (never a 404, which the client reports as "table not found")."""

from __future__ import annotations

import pytest
from lancedb.index import BTree

from tests.support.api import RawClient, all_rows, make_rows, raw_fixture  # noqa: F401
from tests.support.service import INDEXED

pytestmark = pytest.mark.ray


@pytest.fixture
def pair(db, embedded) -> tuple:
    return db.create_table("items", make_rows(30)), embedded.create_table("items", make_rows(30))


def test_update_field_metadata_as_embedded(pair) -> None:
    updates = [{"path": "text", "metadata": {"lancedb:description": "the words"}},
               {"path": "price", "metadata": {"unit": "eur"}, "replace": True}]
    versions = [t.update_field_metadata(*updates).version for t in pair]
    assert versions[0] == versions[1]
    remote, local = pair
    assert remote.schema == local.schema
    assert remote.schema.field("text").metadata == {b"lancedb:description": b"the words"}
    removal = {"path": "text", "metadata": {"lancedb:description": None}}
    assert [t.update_field_metadata(removal).version for t in pair] == [versions[0] + 1] * 2
    assert remote.schema == local.schema


def test_prewarm_index_as_embedded(pair) -> None:
    for table in pair:
        table.create_index("id", config=BTree(), wait_timeout=INDEXED)
        table.prewarm_index("id_idx")
        with pytest.raises(Exception, match="(?i)not found|not exist"):
            table.prewarm_index("nope_idx")


def test_prewarm_data_is_accepted_and_checks_columns(pair) -> None:
    remote, local = pair
    remote.prewarm_data(["id", "vector"])
    remote.prewarm_data()
    with pytest.raises(Exception, match="400.*nope"):
        remote.prewarm_data(["nope"])
    assert all_rows(remote) == all_rows(local)


def test_shallow_clone_as_embedded(db, embedded, pair) -> None:
    for table in pair:
        table.add(make_rows(5, start=30))
    clones = [conn.clone_table("copy", table.uri, source_version=1)
              for conn, table in zip((db, embedded), pair, strict=True)]
    assert clones[0].version == clones[1].version
    assert all_rows(clones[0]) == all_rows(clones[1])
    for clone in clones:
        clone.add(make_rows(2, start=90))  # independent of its source
    assert all_rows(db.open_table("copy")) == all_rows(embedded.open_table("copy"))
    assert pair[0].count_rows() == pair[1].count_rows() == 35


def test_clone_refuses_a_source_outside_the_database(db, live_service) -> None:
    other = live_service.connect().create_table("theirs", make_rows(3))
    with pytest.raises(Exception, match="cannot clone.*this database"):
        db.clone_table("copy", other.uri)
    with pytest.raises(Exception, match="cannot clone.*this database"):
        db.clone_table("copy", "/etc/passwd")


@pytest.mark.parametrize("path", [
    "/v1/table/items/branches/list/",
    "/v1/table/items/backfill_column", "/v1/table/items/get_lsm_stats/",
    "/v1/table/ghost/fetch_blobs/", "/v1/jobs/describe", "/v1/functions/get",
])
def test_unsupported_routes_answer_501_naming_the_operation(raw: RawClient, path: str) -> None:
    response = raw.post(path, json_body={})
    assert response.status_code == 501, response.text
    operation = path.removeprefix("/v1/").removeprefix("table/").split("/", 1)[-1].strip("/")
    assert operation in response.json()["message"]


def test_an_unknown_path_is_a_400_naming_it(raw: RawClient) -> None:
    for path in ("/v1/table/items/frobnicate/", "/v1/nothing/here"):
        response = raw.post(path, json_body={})
        assert response.status_code == 400 and "unknown operation" in response.text, path


def test_the_client_reports_an_unsupported_operation_not_a_missing_table(pair) -> None:
    with pytest.raises(Exception, match="501.*not supported") as raised:
        pair[0].branches.list()
    assert "not found" not in str(raised.value).lower()


def test_malformed_freshness_headers_are_refused(db, raw: RawClient) -> None:
    db.create_table("items", make_rows(3))
    for header, value in (("x-lancedb-min-read-version", "abc"),
                          ("x-lancedb-min-timestamp", "yesterday")):
        response = raw.post("/v1/table/items/count_rows/", json_body={}, headers={header: value})
        assert response.status_code == 400 and header in response.text
    fine = raw.post("/v1/table/items/count_rows/", json_body={},
                    headers={"x-lancedb-min-read-version": "1",
                             "x-lancedb-min-timestamp": "2026-01-01T00:00:00+00:00"})
    assert fine.status_code == 200 and fine.json() == 3
