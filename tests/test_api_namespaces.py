"""Namespaces: create, list, describe, drop, and tables inside them."""

from __future__ import annotations

import pytest

from tests.support.api import RawClient, all_rows, make_rows, raw_fixture  # noqa: F401
from tests.support.service import INDEXED

pytestmark = pytest.mark.ray


def test_create_list_describe_drop(db) -> None:
    created = db.create_namespace(["team"], properties={"owner": "ana"})
    assert created.properties == {"owner": "ana"}
    db.create_namespace(["team", "sub"])
    db.create_namespace(["other"])
    assert db.list_namespaces().namespaces == ["other", "team"]
    assert db.list_namespaces(["team"]).namespaces == ["sub"]
    assert db.describe_namespace(["team"]).properties == {"owner": "ana"}
    db.drop_namespace(["team", "sub"])
    assert db.list_namespaces(["team"]).namespaces == []
    db.drop_namespace(["other"])
    assert db.list_namespaces().namespaces == ["team"]


def test_list_namespaces_pages(db) -> None:
    names = [f"ns{i}" for i in range(5)]
    for name in names:
        db.create_namespace([name])
    first = db.list_namespaces(limit=2)
    assert first.namespaces == names[:2]
    second = db.list_namespaces(limit=2, page_token=first.page_token)
    assert second.namespaces == names[2:4]
    third = db.list_namespaces(limit=2, page_token=second.page_token)
    assert third.namespaces == names[4:]
    assert not third.page_token


def test_create_modes(db) -> None:
    db.create_namespace(["team"], properties={"v": "1"})
    with pytest.raises(Exception, match="400.*already exists"):
        db.create_namespace(["team"], properties={"v": "2"})
    kept = db.create_namespace(["team"], mode="exist_ok", properties={"v": "2"})
    assert kept.properties == {"v": "1"}
    replaced = db.create_namespace(["team"], mode="overwrite", properties={"v": "3"})
    assert replaced.properties == {"v": "3"}
    assert db.describe_namespace(["team"]).properties == {"v": "3"}


def test_missing_namespaces(db) -> None:
    with pytest.raises(Exception, match="404.*not found"):
        db.describe_namespace(["ghost"])
    with pytest.raises(Exception, match="404.*not found"):
        db.drop_namespace(["ghost"])
    db.drop_namespace(["ghost"], mode="skip")
    with pytest.raises(Exception, match="404.*not found"):
        db.create_namespace(["ghost", "child"])  # the parent must exist


def test_drop_refuses_a_namespace_that_is_not_empty(db) -> None:
    db.create_namespace(["team"])
    db.create_table("t", make_rows(3), namespace_path=["team"])
    with pytest.raises(Exception, match="400.*not empty"):
        db.drop_namespace(["team"])
    assert db.list_tables(namespace_path=["team"]).tables == ["t"]
    db.drop_table("t", namespace_path=["team"])
    db.drop_namespace(["team"])  # empty now
    assert db.list_namespaces().namespaces == []


def test_cascade_drops_tables_and_child_namespaces(db) -> None:
    db.create_namespace(["org"])
    db.create_namespace(["org", "team"])
    db.create_table("top", make_rows(3), namespace_path=["org"])
    db.create_table("inner", make_rows(3), namespace_path=["org", "team"])
    db.create_table("outside", make_rows(3))
    db.drop_namespace(["org"], behavior="cascade")
    assert db.list_namespaces().namespaces == []
    assert db.list_tables().tables == ["outside"]
    with pytest.raises(Exception, match="not found"):
        db.open_table("inner", namespace_path=["org", "team"]).count_rows()


def test_tables_in_namespaces_are_separate(db, raw: RawClient) -> None:
    db.create_namespace(["a"])
    db.create_namespace(["a", "b"])
    db.create_table("t", make_rows(3))
    db.create_table("t", make_rows(5), namespace_path=["a"])
    nested = db.create_table("t", make_rows(7, seed=3), namespace_path=["a", "b"])
    assert db.list_tables().tables == ["t"]
    assert db.list_tables(namespace_path=["a"]).tables == ["t"]
    assert db.open_table("t").count_rows() == 3
    assert db.open_table("t", namespace_path=["a"]).count_rows() == 5
    assert nested.count_rows() == 7
    assert all_rows(db.open_table("t", namespace_path=["a", "b"])) == make_rows(7, seed=3)

    # the same over raw HTTP: ids joined with '$'
    assert raw.get("/v1/namespace/a$b/table/list").json()["tables"] == ["t"]
    assert raw.post("/v1/table/a$b$t/count_rows/", json_body={}).json() == 7
    assert raw.post("/v1/namespace/a/list").json()["namespaces"] == ["b"]

    db.drop_table("t", namespace_path=["a"])
    assert db.list_tables(namespace_path=["a"]).tables == []
    assert db.open_table("t").count_rows() == 3
    with pytest.raises(ValueError, match="was not found"):
        db.open_table("t", namespace_path=["a"])


def test_writes_and_queries_in_a_namespace(db) -> None:
    db.create_namespace(["team"])
    table = db.create_table("items", make_rows(20), namespace_path=["team"])
    table.add(make_rows(5, start=20))
    table.delete("id < 3")
    table.create_index("id", wait_timeout=INDEXED)
    assert table.count_rows() == 22
    assert [i.name for i in table.list_indices()] == ["id_idx"]
    assert table.search().where("id < 5").limit(None).to_arrow().num_rows == 2
    assert [v["version"] for v in table.list_versions()] == [1, 2, 3, 4]


def test_rename_inside_a_namespace_is_refused_clearly(db) -> None:
    db.create_namespace(["team"])
    db.create_table("t", make_rows(2), namespace_path=["team"])
    with pytest.raises(Exception, match="400.*namespace"):
        db.rename_table("t", "u", cur_namespace_path=["team"], new_namespace_path=["team"])
    assert db.list_tables(namespace_path=["team"]).tables == ["t"]


def test_rename_in_the_root_beside_namespaces(db) -> None:
    db.create_namespace(["team"])
    db.create_table("a", make_rows(3))
    db.rename_table("a", "b")
    assert db.list_tables().tables == ["b"]
    assert db.open_table("b").count_rows() == 3
