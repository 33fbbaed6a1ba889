"""Data and schema writes through the official client, and idempotent retries over raw HTTP."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.support.api import (
    ARROW_STREAM,
    RawClient,
    all_rows,
    arrow_stream,
    make_rows,
    raw_fixture,  # noqa: F401
)

pytestmark = pytest.mark.ray


def _with_prices(data: pa.Table, prices: list[float]) -> pa.Table:
    return data.set_column(data.schema.get_field_index("price"), "price", pa.array(prices))


# -- insert ------------------------------------------------------------------------------------


def test_insert_appends_rows_and_bumps_the_version(db) -> None:
    table = db.create_table("items", make_rows(30))
    result = table.add(make_rows(20, start=30, seed=1))
    assert result.version == 2
    assert table.version == 2
    assert table.count_rows() == 50
    assert all_rows(table) == pa.concat_tables([make_rows(30), make_rows(20, start=30, seed=1)])


def test_insert_overwrite_replaces_all_rows(db) -> None:
    table = db.create_table("items", make_rows(30))
    replacement = make_rows(7, start=500, seed=3)
    table.add(replacement, mode="overwrite")
    assert table.count_rows() == 7
    assert all_rows(table) == replacement
    assert table.version == 2


def test_insert_with_columns_in_another_order_and_castable_types(db) -> None:
    table = db.create_table("items", make_rows(3))
    extra = make_rows(2, start=3)
    shuffled = extra.select(list(reversed(extra.schema.names)))
    shuffled = shuffled.set_column(
        shuffled.schema.get_field_index("id"), "id", extra.column("id").cast(pa.int32())
    )
    table.add(shuffled)
    assert all_rows(table) == pa.concat_tables([make_rows(3), extra])


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_insert_of_a_compressed_arrow_stream(db, raw: RawClient, codec: str) -> None:
    table = db.create_table("items", make_rows(5))
    rows = make_rows(300, start=5, seed=2)
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=codec)
    with pa.ipc.new_stream(sink, rows.schema, options=options) as writer:
        for batch in rows.to_batches(max_chunksize=100):
            writer.write_batch(batch)
    response = raw.post("/v1/table/items/insert/", content=sink.getvalue().to_pybytes(),
                        headers={"content-type": ARROW_STREAM})
    assert response.status_code == 200, response.text
    assert all_rows(table) == pa.concat_tables([make_rows(5), rows])


# -- merge_insert ------------------------------------------------------------------------------


def test_merge_upsert_updates_matches_and_inserts_the_rest(db) -> None:
    table = db.create_table("items", make_rows(20))
    source = make_rows(10, start=15, seed=5)  # ids 15..24: 5 match, 5 are new
    result = (
        table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
        .execute(source)
    )
    assert (result.num_updated_rows, result.num_inserted_rows, result.num_deleted_rows) == (5, 5, 0)
    assert result.version == 2
    expected = pa.concat_tables([make_rows(15), source])
    assert all_rows(table) == expected


def test_merge_update_only_where_the_condition_holds(db) -> None:
    original = make_rows(20)
    table = db.create_table("items", original)
    old_prices = original.column("price").to_pylist()[:10]
    # Even ids get a higher price, odd ids a lower one: only the even ones pass the condition.
    new_prices = [p + 1 if i % 2 == 0 else p - 1 for i, p in enumerate(old_prices)]
    source = _with_prices(make_rows(10), new_prices)
    result = (
        table.merge_insert("id")
        .when_matched_update_all(where="target.price < source.price")
        .execute(source)
    )
    assert result.num_updated_rows == 5
    assert result.num_inserted_rows == 0
    prices = all_rows(table).column("price").to_pylist()
    for i in range(10):
        assert prices[i] == (old_prices[i] + 1 if i % 2 == 0 else old_prices[i])
    assert table.count_rows() == 20


def test_merge_update_all_without_insert_ignores_new_rows(db) -> None:
    table = db.create_table("items", make_rows(10))
    source = make_rows(6, start=7, seed=8)  # 3 matches, 3 new
    result = table.merge_insert("id").when_matched_update_all().execute(source)
    assert (result.num_updated_rows, result.num_inserted_rows) == (3, 0)
    assert table.count_rows() == 10


def test_merge_insert_if_not_exists(db) -> None:
    table = db.create_table("items", make_rows(10))
    source = make_rows(6, start=7, seed=8)
    result = table.merge_insert("id").when_not_matched_insert_all().execute(source)
    assert (result.num_updated_rows, result.num_inserted_rows) == (0, 3)
    rows = all_rows(table)
    assert rows.num_rows == 13
    # matched rows kept their old values
    assert rows.slice(0, 10) == make_rows(10)


def test_merge_delete_by_source_without_filter(db) -> None:
    table = db.create_table("items", make_rows(20))
    source = make_rows(5, start=5, seed=2)  # keeps ids 5..9 only
    result = (
        table.merge_insert("id").when_matched_update_all().when_not_matched_by_source_delete()
        .execute(source)
    )
    assert (result.num_updated_rows, result.num_deleted_rows) == (5, 15)
    assert all_rows(table) == source


def test_merge_delete_by_source_with_filter(db) -> None:
    table = db.create_table("items", make_rows(20))
    source = make_rows(10, seed=4)  # ids 0..9
    result = (
        table.merge_insert("id")
        .when_matched_update_all()
        .when_not_matched_by_source_delete("id >= 15")
        .execute(source)
    )
    assert result.num_deleted_rows == 5  # 15..19 go, 10..14 stay
    assert sorted(all_rows(table).column("id").to_pylist()) == list(range(15))


def test_merge_on_several_keys(db) -> None:
    base = pa.table({"a": [1, 1, 2], "b": ["x", "y", "x"], "v": [10, 20, 30]})
    table = db.create_table("pairs", base)
    source = pa.table({"a": [1, 2], "b": ["y", "y"], "v": [21, 99]})
    result = (
        table.merge_insert(["a", "b"]).when_matched_update_all().when_not_matched_insert_all()
        .execute(source)
    )
    assert (result.num_updated_rows, result.num_inserted_rows) == (1, 1)
    rows = table.search().limit(None).to_arrow().sort_by([("a", "ascending"), ("b", "ascending")])
    assert rows.to_pydict() == {"a": [1, 1, 2, 2], "b": ["x", "y", "x", "y"],
                                "v": [10, 21, 30, 99]}


# -- delete / update ---------------------------------------------------------------------------


def test_delete_by_predicate(db) -> None:
    data = make_rows(100)
    table = db.create_table("items", data)
    red = data.column("category").to_pylist().count("red")
    result = table.delete("category = 'red'")
    assert result.num_deleted_rows == red
    assert result.version == 2
    assert table.count_rows() == 100 - red
    assert table.count_rows("category = 'red'") == 0
    assert table.delete("id < 0").num_deleted_rows == 0


def test_update_with_values(db) -> None:
    table = db.create_table("items", make_rows(20))
    result = table.update(where="id < 5", values={"text": "changed", "price": 0.5})
    assert result.rows_updated == 5
    assert result.version == 2
    rows = all_rows(table)
    assert rows.column("text").to_pylist()[:6] == ["changed"] * 5 + [make_rows(20)["text"][5].as_py()]
    assert rows.column("price").to_pylist()[:5] == [0.5] * 5


def test_update_with_sql_expressions_and_no_predicate(db) -> None:
    data = make_rows(20)
    table = db.create_table("items", data)
    result = table.update(values_sql={"price": "price * 2 + 1"})
    assert result.rows_updated == 20
    expected = pc.add(pc.multiply(data.column("price"), 2), 1)
    assert all_rows(table).column("price") == expected


def test_update_of_a_string_with_quotes(db) -> None:
    table = db.create_table("items", make_rows(3))
    table.update(where="id = 1", values={"text": "it's"})
    assert all_rows(table).column("text")[1].as_py() == "it's"


# -- schema changes ----------------------------------------------------------------------------


def test_add_columns_from_sql(db) -> None:
    data = make_rows(10)
    table = db.create_table("items", data)
    result = table.add_columns({"double_price": "price * 2", "label": "concat(category, '!')"})
    assert result.version == 2
    rows = all_rows(table)
    assert rows.column("double_price") == pc.multiply(data.column("price"), 2)
    assert rows.column("label").to_pylist() == [f"{c}!" for c in data["category"].to_pylist()]


def test_add_all_null_columns_from_a_schema(db) -> None:
    table = db.create_table("items", make_rows(4))
    table.add_columns(pa.field("note", pa.string()))
    table.add_columns(pa.schema([pa.field("score", pa.int32()), pa.field("flag", pa.bool_())]))
    schema = table.schema
    assert schema.field("note").type == pa.string()
    assert schema.field("score").type == pa.int32()
    assert schema.field("flag").type == pa.bool_()
    assert all_rows(table).column("score").null_count == 4


def test_alter_columns_rename_nullable_and_type(db) -> None:
    data = make_rows(10)
    table = db.create_table("items", data)
    table.alter_columns(
        {"path": "text", "rename": "body"},
        {"path": "price", "data_type": pa.float32()},
    )
    schema = table.schema
    assert "text" not in schema.names
    assert schema.field("body").type == pa.string()
    assert schema.field("price").type == pa.float32()
    rows = all_rows(table)
    assert rows.column("body") == data.column("text")
    assert rows.column("price").to_pylist() == pytest.approx(data.column("price").to_pylist())

    strict = db.create_table("strict", schema=pa.schema([pa.field("k", pa.int64(), False)]))
    strict.alter_columns({"path": "k", "nullable": True})
    assert strict.schema.field("k").nullable


def test_drop_columns(db) -> None:
    table = db.create_table("items", make_rows(10))
    result = table.drop_columns(["tags", "price"])
    assert result.version == 2
    assert table.schema.names == ["id", "vector", "text", "category"]
    assert table.count_rows() == 10


# -- idempotent retries (x-request-id) ---------------------------------------------------------


def test_a_retried_insert_is_applied_once(db, raw: RawClient) -> None:
    table = db.create_table("items", make_rows(10))
    rows = make_rows(5, start=10)
    request_id = str(uuid.uuid4())
    first = raw.insert("items", rows, request_id=request_id)
    second = raw.insert("items", rows, request_id=request_id)
    assert first.status_code == second.status_code == 200
    assert first.json()["version"] == second.json()["version"] == 2
    assert table.count_rows() == 15
    assert table.version == 2

    third = raw.insert("items", rows, request_id=str(uuid.uuid4()))
    assert third.json()["version"] == 3
    assert table.count_rows() == 20


def test_a_retried_insert_after_other_writes_still_answers_its_version(db, raw: RawClient) -> None:
    table = db.create_table("items", make_rows(10))
    request_id = str(uuid.uuid4())
    first = raw.insert("items", make_rows(2, start=10), request_id=request_id).json()
    table.add(make_rows(3, start=20))
    retry = raw.insert("items", make_rows(2, start=10), request_id=request_id).json()
    assert retry == first
    assert table.count_rows() == 15


def test_a_retried_overwrite_is_applied_once(db, raw: RawClient) -> None:
    table = db.create_table("items", make_rows(10))
    request_id = str(uuid.uuid4())
    first = raw.insert("items", make_rows(4, start=50), request_id=request_id, mode="overwrite")
    table.add(make_rows(2, start=60))  # a write after the overwrite: a replay must not undo it
    retry = raw.insert("items", make_rows(4, start=50), request_id=request_id, mode="overwrite")
    assert first.json() == retry.json() == {"version": 2}
    assert table.version == 3
    assert sorted(all_rows(table).column("id").to_pylist()) == [50, 51, 52, 53, 60, 61]


def test_a_retried_merge_insert_is_applied_once(db, raw: RawClient) -> None:
    table = db.create_table("items", make_rows(10))
    source = make_rows(6, start=7, seed=9)
    request_id = str(uuid.uuid4())
    params = {"on": "id", "when_matched_update_all": "true", "when_not_matched_insert_all": "true"}

    def send():
        return raw.post("/v1/table/items/merge_insert/", content=arrow_stream(source),
                        params=params,
                        headers={"content-type": ARROW_STREAM, "x-request-id": request_id})

    first, second = send(), send()
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.json()["num_inserted_rows"] == 3
    assert first.json()["num_updated_rows"] == 3
    assert table.version == 2
    assert table.count_rows() == 13


# -- concurrent writers ------------------------------------------------------------------------


def test_concurrent_writers_lose_nothing(live_service, db) -> None:
    from concurrent.futures import ThreadPoolExecutor

    db.create_table("items", make_rows(10))
    writers = 4

    def write(worker: int) -> None:
        # each worker has its own connection, so requests spread over the replicas
        table = live_service.connect(db.db_name).open_table("items")
        for step in range(5):
            table.add(make_rows(10, start=1000 * (worker + 1) + 10 * step, seed=step))
        table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(
            make_rows(5, start=1000 * (worker + 1), seed=99))
        table.delete(f"id = {1000 * (worker + 1) + 49}")

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(writers)))
    table = db.open_table("items")
    assert table.count_rows() == 10 + writers * (50 - 1)
    assert table.version == 1 + writers * 7
    assert [v["version"] for v in table.list_versions()] == list(range(1, table.version + 1))
    for worker in range(writers):
        start = 1000 * (worker + 1)
        updated = table.search().where(f"id >= {start} AND id < {start + 5}").limit(None)
        assert updated.to_arrow().sort_by("id") == make_rows(5, start=start, seed=99)
