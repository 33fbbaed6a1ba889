"""A table's history: versions, checkout (by number and by tag), restore and tags."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from tests.support.api import RawClient, all_rows, ids_of, make_rows, raw_fixture  # noqa: F401

pytestmark = pytest.mark.ray


@pytest.fixture
def table(db):
    """Four versions: create 20 rows, add 10, delete 5, add a column."""
    table = db.create_table("items", make_rows(20))
    table.add(make_rows(10, start=20))
    table.delete("id < 5")
    table.add_columns({"double_price": "price * 2"})
    return table


def test_list_versions(table) -> None:
    versions = table.list_versions()
    assert [v["version"] for v in versions] == [1, 2, 3, 4]
    stamps = [v["timestamp"] for v in versions]
    assert stamps == sorted(stamps)
    now = datetime.now(timezone.utc)
    for stamp in stamps:
        aware = stamp if stamp.tzinfo else stamp.astimezone(timezone.utc)
        assert abs(now - aware) < timedelta(minutes=10)
    assert all(isinstance(v["metadata"], dict) for v in versions)


def test_list_versions_raw_always_carries_metadata(table, raw: RawClient) -> None:
    body = raw.post("/v1/table/items/version/list/").json()
    assert [v["version"] for v in body["versions"]] == [1, 2, 3, 4]
    for version in body["versions"]:
        assert "metadata" in version
        datetime.fromisoformat(version["timestamp"])  # RFC 3339


def test_checkout_carries_the_version_into_reads(table) -> None:
    table.checkout(2)
    assert table.version == 2
    assert table.count_rows() == 30
    assert table.count_rows("id < 5") == 5
    assert "double_price" not in table.schema.names
    assert sorted(ids_of(table.search().limit(None).to_arrow())) == list(range(30))
    assert len(table.search(make_rows(1)["vector"][0].as_py()).limit(50).to_arrow()) == 30
    table.checkout_latest()
    assert table.version == 4
    assert table.count_rows() == 25
    assert "double_price" in table.schema.names


def test_checked_out_table_refuses_writes(table) -> None:
    table.checkout(1)
    with pytest.raises(Exception, match="checkout_latest"):
        table.add(make_rows(1, start=100))
    table.checkout_latest()
    table.add(make_rows(1, start=100))
    assert table.count_rows() == 26


def test_count_and_describe_at_a_version_raw(table, raw: RawClient) -> None:
    assert raw.post("/v1/table/items/count_rows/", json_body={"version": 1}).json() == 20
    assert raw.post("/v1/table/items/count_rows/",
                    json_body={"version": 3, "predicate": "id < 10"}).json() == 5
    described = raw.post("/v1/table/items/describe/", json_body={"version": 3}).json()
    assert described["version"] == 3
    assert "double_price" not in [f["name"] for f in described["schema"]["fields"]]


def test_checkout_of_a_missing_version_is_refused(table) -> None:
    with pytest.raises(Exception, match="400.*99"):
        table.checkout(99)


def test_restore_makes_an_old_version_the_newest(table) -> None:
    table.restore(2)
    assert table.version == 5
    assert table.count_rows() == 30
    assert "double_price" not in table.schema.names
    assert [v["version"] for v in table.list_versions()] == [1, 2, 3, 4, 5]
    assert all_rows(table) == pa.concat_tables([make_rows(20), make_rows(10, start=20)])


def test_restore_the_checked_out_version(table) -> None:
    table.checkout(1)
    table.restore()
    assert table.version == 5
    assert table.count_rows() == 20


# -- tags --------------------------------------------------------------------------------------


def test_tags_create_list_update_get_delete(table) -> None:
    table.tags.create("first", 1)
    table.tags.create("before_delete", 2)
    listed = table.tags.list()
    assert {name: tag["version"] for name, tag in listed.items()} == {"first": 1,
                                                                       "before_delete": 2}
    assert all(tag["manifest_size"] > 0 for tag in listed.values())
    assert table.tags.get_version("before_delete") == 2
    table.tags.update("before_delete", 3)
    assert table.tags.get_version("before_delete") == 3
    table.tags.delete("first")
    assert set(table.tags.list()) == {"before_delete"}


def test_checkout_and_restore_by_tag(table) -> None:
    table.tags.create("original", 1)
    table.checkout("original")
    assert table.version == 1
    assert table.count_rows() == 20
    table.checkout_latest()
    table.restore("original")
    assert table.version == 5
    assert table.count_rows() == 20


def test_restore_by_tag_name_raw(table, raw: RawClient) -> None:
    table.tags.create("two", 2)
    response = raw.post("/v1/table/items/restore/", json_body={"version": "two"})
    assert response.status_code == 200, response.text
    assert table.version == 5
    assert table.count_rows() == 30


def test_tag_errors_name_the_problem(table) -> None:
    table.tags.create("first", 1)
    with pytest.raises(Exception, match="400.*already exists"):
        table.tags.create("first", 2)
    with pytest.raises(Exception, match="400.*version 99"):
        table.tags.create("future", 99)
    for call in (lambda: table.tags.get_version("ghost"), lambda: table.tags.update("ghost", 1),
                 lambda: table.tags.delete("ghost"), lambda: table.checkout("ghost")):
        with pytest.raises(Exception, match="400.*tag 'ghost' does not exist"):
            call()
    assert table.tags.get_version("first") == 1
