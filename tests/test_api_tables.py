"""Table lifecycle through the official client: list, create, describe, drop, rename, count, stats."""

from __future__ import annotations

import uuid

import lancedb
import pyarrow as pa
import pytest

from tests.support.api import RawClient, all_rows, make_rows, raw_fixture  # noqa: F401
from tests.support.service import INDEXED

pytestmark = pytest.mark.ray


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_every_response_advertises_phalanx_version_0_3(raw: RawClient) -> None:
    for response in (
        raw.get("/v1/table/"),
        raw.post("/v1/table/missing/describe/"),  # errors too
    ):
        assert _version_tuple(response.headers["phalanx-version"]) >= (0, 3, 0)


# -- listing ------------------------------------------------------------------------------------

NAMES = ["t_a", "t_b", "t_c", "t_d", "t_e"]


@pytest.fixture
def five_tables(db) -> list[str]:
    for name in reversed(NAMES):  # created out of order: listings are sorted anyway
        db.create_table(name, make_rows(3))
    return NAMES


def test_table_names_lists_sorted_and_pages(db, five_tables: list[str]) -> None:
    with pytest.warns(DeprecationWarning):
        assert list(db.table_names()) == five_tables
    with pytest.warns(DeprecationWarning):
        first = list(db.table_names(limit=2))
    with pytest.warns(DeprecationWarning):
        rest = list(db.table_names(page_token=first[-1], limit=10))
    assert first == five_tables[:2]
    assert rest == five_tables[2:]


def test_list_tables_pages_with_tokens(db, five_tables: list[str]) -> None:
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        response = db.list_tables(limit=2, page_token=token)
        assert len(response.tables) <= 2
        seen.extend(response.tables)
        pages += 1
        token = response.page_token
        if not token:
            break
    assert seen == five_tables
    assert pages == 3
    assert db.list_tables().tables == five_tables


def test_list_tables_raw_http_both_forms(raw: RawClient, five_tables: list[str]) -> None:
    page = raw.get("/v1/table/", params={"limit": 2}).json()
    assert page["tables"] == five_tables[:2]
    after = raw.get("/v1/table/", params={"limit": 10, "page_token": page["tables"][-1]}).json()
    assert after["tables"] == five_tables[2:]
    assert after["page_token"] is None

    listed = raw.get("/v1/namespace/$/table/list", params={"limit": 3})
    assert listed.status_code == 200
    assert listed.json()["tables"] == five_tables[:3]
    token = listed.json()["page_token"]
    assert token
    rest = raw.get("/v1/namespace/$/table/list", params={"limit": 3, "page_token": token})
    assert rest.json()["tables"] == five_tables[3:]
    assert raw.get("/v1/namespace/$/table/list").json()["tables"] == five_tables


def test_list_tables_of_a_fresh_database_is_empty(db) -> None:
    assert db.list_tables().tables == []


# -- create ------------------------------------------------------------------------------------


def test_create_table_keeps_schema_and_rows(db) -> None:
    data = make_rows(50)
    table = db.create_table("items", data)
    assert table.schema == data.schema
    assert table.count_rows() == 50
    assert all_rows(table) == data
    assert db.open_table("items").schema == data.schema


def test_create_existing_table_fails_with_already_exists(db) -> None:
    db.create_table("items", make_rows(5))
    with pytest.raises(ValueError, match="already exists"):
        db.create_table("items", make_rows(7))
    assert db.open_table("items").count_rows() == 5


def test_create_overwrite_replaces_data_and_schema(db) -> None:
    db.create_table("items", make_rows(5))
    other = pa.table({"key": ["a", "b"], "value": [1.5, 2.5]})
    table = db.create_table("items", other, mode="overwrite")
    assert table.schema == other.schema
    assert all_rows(db.open_table("items"), "key") == other


def test_create_exist_ok_leaves_the_existing_table(db) -> None:
    db.create_table("items", make_rows(5))
    table = db.create_table("items", make_rows(9), exist_ok=True)
    assert table.count_rows() == 5
    assert db.open_table("items").version == 1


def test_create_with_schema_only_has_zero_rows(db) -> None:
    schema = make_rows(1).schema
    table = db.create_table("empty", schema=schema)
    assert table.count_rows() == 0
    assert table.schema == schema
    table.add(make_rows(4))
    assert table.count_rows() == 4


def test_create_through_raw_http_with_an_empty_stream(raw: RawClient, db) -> None:
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("name", pa.string())])
    response = raw.create("blank", schema.empty_table())
    assert response.status_code == 200, response.text
    assert db.open_table("blank").schema == schema
    assert db.open_table("blank").count_rows() == 0


# -- describe / open ---------------------------------------------------------------------------


def test_describe_reports_version_and_schema(db, raw: RawClient) -> None:
    data = make_rows(10)
    table = db.create_table("items", data)
    table.add(make_rows(5, start=10))
    described = raw.post("/v1/table/items/describe/", json_body={"version": None}).json()
    assert described["version"] == table.version == 2
    assert [f["name"] for f in described["schema"]["fields"]] == data.schema.names
    at_one = raw.post("/v1/table/items/describe/", json_body={"version": 1}).json()
    assert at_one["version"] == 1


def test_describe_at_an_older_version_through_checkout(db) -> None:
    table = db.create_table("items", make_rows(10))
    old_schema = table.schema
    table.add_columns({"double_price": "price * 2"})
    assert "double_price" in table.schema.names
    table.checkout(1)
    assert table.version == 1
    assert table.schema == old_schema
    assert db.open_table("items").schema.names == [*old_schema.names, "double_price"]


def test_open_missing_table_raises_not_found(db) -> None:
    with pytest.raises(ValueError, match="was not found"):
        db.open_table("nope")


# -- drop --------------------------------------------------------------------------------------


def test_drop_table_removes_it(db) -> None:
    db.create_table("a", make_rows(3))
    db.create_table("b", make_rows(3))
    db.drop_table("a")
    assert db.list_tables().tables == ["b"]
    with pytest.raises(ValueError, match="was not found"):
        db.open_table("a")
    db.create_table("a", make_rows(2))  # the name is free again
    assert db.open_table("a").count_rows() == 2


def test_drop_missing_table_is_not_found(raw: RawClient) -> None:
    response = raw.post("/v1/table/never_created/drop/")
    assert response.status_code == 404
    assert "never_created" in response.text


# -- rename ------------------------------------------------------------------------------------


def test_rename_moves_data_and_frees_the_old_name(db) -> None:
    data = make_rows(20)
    db.create_table("old", data).add(make_rows(5, start=20))
    db.rename_table("old", "new")
    assert db.list_tables().tables == ["new"]
    renamed = db.open_table("new")
    assert renamed.count_rows() == 25
    assert renamed.version == 2
    with pytest.raises(ValueError, match="was not found"):
        db.open_table("old")


def test_rename_to_an_existing_name_is_refused(db) -> None:
    db.create_table("a", make_rows(3))
    db.create_table("b", make_rows(4))
    with pytest.raises(Exception, match="already exists"):
        db.rename_table("a", "b")
    assert db.open_table("a").count_rows() == 3
    assert db.open_table("b").count_rows() == 4


def test_rename_missing_table_is_not_found(db) -> None:
    with pytest.raises(Exception, match="404.*was not found"):
        db.rename_table("ghost", "other")


# -- count_rows / stats ------------------------------------------------------------------------


def test_count_rows_with_and_without_predicate(db, raw: RawClient) -> None:
    data = make_rows(200)
    table = db.create_table("items", data)
    assert table.count_rows() == 200
    expected_red = data.column("category").to_pylist().count("red")
    assert table.count_rows("category = 'red'") == expected_red
    cheap = sum(1 for p in data.column("price").to_pylist() if p < 5)
    assert table.count_rows("price < 5") == cheap
    assert table.count_rows("id < 0") == 0
    response = raw.post("/v1/table/items/count_rows/", json_body={"predicate": "id >= 150"})
    assert response.json() == 50  # a bare integer


def test_table_stats_describe_rows_and_fragments(db) -> None:
    table = db.create_table("items", make_rows(100))
    table.add(make_rows(30, start=100))
    table.create_scalar_index("id", wait_timeout=INDEXED)
    stats = table.stats()
    assert stats["num_rows"] == 130
    assert stats["num_indices"] == 1
    assert stats["total_bytes"] > 0
    fragments = stats["fragment_stats"]
    assert fragments["num_fragments"] == 2
    assert fragments["lengths"]["min"] == 30
    assert fragments["lengths"]["max"] == 100
    assert set(fragments["lengths"]) >= {"mean", "p25", "p50", "p75", "p99"}


def test_host_override_with_a_trailing_slash(live_service) -> None:
    # The client then sends //v1/...: the service routes it like /v1/... (no redirect).
    db = lancedb.connect(f"db://slash{uuid.uuid4().hex[:8]}", api_key=live_service.api_key,
                         host_override=live_service.url + "/")
    table = db.create_table("items", make_rows(5))
    table.add(make_rows(3, start=5))
    assert table.count_rows() == 8
    assert db.list_tables().tables == ["items"]


def test_a_recreated_table_never_answers_with_the_old_data(db) -> None:
    # Same name, same version number (1): nothing cached for the old table may be served.
    first = make_rows(30, seed=1)
    second = make_rows(30, seed=2)
    vector = second["vector"][0].as_py()
    table = db.create_table("items", first)
    assert all_rows(table) == first
    assert table.search(vector).limit(3).to_arrow().num_rows == 3
    db.drop_table("items")
    table = db.create_table("items", second)
    assert all_rows(table) == second
    nearest = table.search(vector).limit(1).to_arrow()
    assert nearest["_distance"][0].as_py() == pytest.approx(0.0, abs=1e-6)
    assert table.count_rows("price > 1") == sum(1 for p in second["price"].to_pylist() if p > 1)

    db.create_table("items", first, mode="overwrite")
    assert all_rows(db.open_table("items")) == first
    db.rename_table("items", "moved")
    db.create_table("items", second)
    assert all_rows(db.open_table("items")) == second
    assert all_rows(db.open_table("moved")) == first
