"""The same operations on the service (official client) and on embedded lancedb, compared.

Embedded lancedb is the reference: whatever the service answers must be what
lancedb itself answers over the same data, for exact searches, scans, counts,
schemas and versions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from lancedb.index import FTS, BTree, IvfPq
from lancedb.query import BooleanQuery, MatchQuery, Occur, PhraseQuery

from tests.support.api import all_rows, make_rows, query_vector
from tests.support.service import INDEXED

pytestmark = pytest.mark.ray

QUERIES = [query_vector(seed) for seed in (1, 2, 3)]


class Pair:
    """One table on the service and its twin in embedded lancedb."""

    def __init__(self, remote: Any, local: Any) -> None:
        self.remote = remote
        self.local = local

    def both(self, operation: Callable[[Any], Any]) -> tuple[Any, Any]:
        return operation(self.remote), operation(self.local)

    def same(self, operation: Callable[[Any], Any]) -> Any:
        remote, local = self.both(operation)
        assert remote == local
        return remote

    def check_state(self) -> None:
        """Versions, schema, row count and every row agree."""
        assert self.remote.version == self.local.version
        assert self.remote.schema == self.local.schema
        assert self.remote.count_rows() == self.local.count_rows()
        assert all_rows(self.remote) == all_rows(self.local)
        remote_versions = [v["version"] for v in self.remote.list_versions()]
        local_versions = [v["version"] for v in self.local.list_versions()]
        assert remote_versions == local_versions


@pytest.fixture
def pair(db, embedded) -> Pair:
    data = make_rows(600)
    return Pair(db.create_table("items", data), embedded.create_table("items", data))


def _same_search(remote: pa.Table, local: pa.Table, key: str = "_distance") -> None:
    assert remote.schema.names == local.schema.names
    assert remote.column("id").to_pylist() == local.column("id").to_pylist()
    if key in remote.schema.names:
        np.testing.assert_allclose(remote.column(key).to_numpy(), local.column(key).to_numpy(),
                                   rtol=1e-5, atol=1e-6)
    others = [n for n in remote.schema.names if n not in (key, "id")]
    assert remote.select(others) == local.select(others)


# -- writes keep both sides identical ----------------------------------------------------------


def test_a_sequence_of_writes(pair: Pair) -> None:
    pair.check_state()
    pair.both(lambda t: t.add(make_rows(50, start=600, seed=1)))
    pair.check_state()
    assert pair.same(lambda t: t.delete("category = 'red' AND id < 300").num_deleted_rows) > 0
    pair.check_state()
    assert pair.same(lambda t: t.update(where="id % 7 = 0",
                                        values={"text": "seven"}).rows_updated) > 0
    pair.same(lambda t: t.update(values_sql={"price": "price * 1.5"}).rows_updated)
    pair.check_state()

    source = make_rows(40, start=630, seed=2)
    result = pair.same(lambda t: _merge_counts(
        t.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
        .execute(source)))
    assert result == (20, 20, 0)
    pair.check_state()
    pair.same(lambda t: _merge_counts(
        t.merge_insert("id").when_matched_update_all(where="target.price < 3")
        .when_not_matched_by_source_delete("id >= 660").execute(make_rows(10, start=0, seed=3))))
    pair.check_state()

    pair.both(lambda t: t.add_columns({"double_price": "price * 2"}))
    pair.both(lambda t: t.alter_columns({"path": "text", "rename": "body"},
                                        {"path": "double_price", "data_type": pa.float32()}))
    pair.both(lambda t: t.drop_columns(["tags"]))
    pair.check_state()

    pair.both(lambda t: t.add(make_rows(5, start=5000, seed=4).drop_columns(["tags"])
                              .rename_columns(["id", "vector", "body", "category", "price"])))
    pair.check_state()
    pair.both(lambda t: t.add(make_rows(3, start=9000).drop_columns(["tags"]).rename_columns(
        ["id", "vector", "body", "category", "price"]), mode="overwrite"))
    pair.check_state()


def _merge_counts(result: Any) -> tuple[int, int, int]:
    return (result.num_updated_rows, result.num_inserted_rows, result.num_deleted_rows)


def test_history_matches(pair: Pair) -> None:
    pair.both(lambda t: t.add(make_rows(10, start=600)))
    pair.both(lambda t: t.delete("id < 100"))
    pair.both(lambda t: t.create_index("id", config=BTree(), wait_timeout=INDEXED))
    pair.check_state()
    for version in (1, 2, 3):
        pair.both(lambda t, v=version: t.checkout(v))
        assert pair.remote.version == pair.local.version == version
        pair.same(lambda t: t.count_rows())
        pair.same(lambda t: t.count_rows("id < 200"))
        assert pair.remote.schema == pair.local.schema
        _same_search(*pair.both(lambda t: t.search(QUERIES[0]).limit(7).to_arrow()))
    pair.both(lambda t: t.checkout_latest())
    pair.both(lambda t: t.restore(2))
    pair.check_state()


# -- reads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
def test_exact_search(pair: Pair, metric: str) -> None:
    for vector in QUERIES:
        _same_search(*pair.both(
            lambda t, v=vector: t.search(v).distance_type(metric).limit(15).to_arrow()))


def test_exact_search_with_options(pair: Pair) -> None:
    q = QUERIES[0]
    builders = [
        lambda t: t.search(q).where("price < 12", prefilter=True).limit(10),
        lambda t: t.search(q).where("price < 12", prefilter=False).limit(30),
        lambda t: t.search(q).select(["id", "category"]).limit(10),
        lambda t: t.search(q).select({"id": "id", "p2": "price * 2"}).limit(10),
        lambda t: t.search(q).limit(5).offset(4),
        lambda t: t.search(q).with_row_id(True).limit(5),
        lambda t: t.search(q).distance_range(2.0, 8.0).limit(600),
        lambda t: t.search(q).where("category IN ('blue', 'green')").select(["id"]).limit(8),
    ]
    for build in builders:
        _same_search(*pair.both(lambda t, b=build: b(t).to_arrow()))


def test_several_query_vectors(pair: Pair) -> None:
    remote, local = pair.both(lambda t: t.search(QUERIES[:2]).limit(5).to_arrow())
    assert remote.column("query_index").to_pylist() == local.column("query_index").to_pylist()
    _same_search(remote, local)


def test_bypassing_an_index_is_exact_on_both(pair: Pair) -> None:
    pair.both(lambda t: t.create_index("vector", config=IvfPq(num_partitions=2, num_sub_vectors=2),
                                       wait_timeout=INDEXED))
    assert pair.remote.version == pair.local.version
    for vector in QUERIES:
        _same_search(*pair.both(
            lambda t, v=vector: t.search(v).bypass_vector_index().limit(10).to_arrow()))
        _same_search(*pair.both(
            lambda t, v=vector: t.search(v).where("id > 100").bypass_vector_index().limit(10)
            .to_arrow()))


@pytest.mark.parametrize(
    "where",
    ["id < 50", "category = 'blue' AND price > 10", "text LIKE '%kiwi%'",
     "array_has_any(tags, ['fig'])", "price BETWEEN 3 AND 4", "NOT (id % 3 = 0)"],
)
def test_filtered_scans_and_counts(pair: Pair, where: str) -> None:
    remote, local = pair.both(lambda t: t.search().where(where).limit(None).to_arrow()
                              .sort_by("id"))
    assert remote == local
    assert pair.same(lambda t: t.count_rows(where)) == local.num_rows


def test_scans_with_columns_limit_and_offset(pair: Pair) -> None:
    remote, local = pair.both(
        lambda t: t.search().where("id >= 10").select(["id", "price"]).limit(25).offset(5)
        .to_arrow())
    assert remote.schema == local.schema
    assert remote.num_rows == local.num_rows == 25


def test_full_text_search(pair: Pair) -> None:
    pair.both(lambda t: t.create_index("text", config=FTS(with_position=True), wait_timeout=INDEXED))
    queries = [
        lambda t: t.search("kiwi", query_type="fts").limit(20),
        lambda t: t.search("kiwi apple", query_type="fts").limit(600),
        lambda t: t.search("honey", query_type="fts").where("id < 300").select(["id"]).limit(50),
        lambda t: t.search(MatchQuery("lemon", "text")).limit(30),
        lambda t: t.search(PhraseQuery("banana kiwi", "text")).limit(30),
        lambda t: t.search(BooleanQuery([(Occur.MUST, MatchQuery("apple", "text")),
                                         (Occur.MUST_NOT, MatchQuery("fig", "text"))])).limit(40),
    ]
    for build in queries:
        remote, local = pair.both(lambda t, b=build: b(t).to_arrow())
        assert remote.num_rows == local.num_rows > 0
        assert set(remote.column("id").to_pylist()) == set(local.column("id").to_pylist())
        np.testing.assert_allclose(sorted(remote.column("_score").to_pylist()),
                                   sorted(local.column("_score").to_pylist()), rtol=1e-5)


def test_hybrid_search(pair: Pair) -> None:
    pair.both(lambda t: t.create_index("text", config=FTS(), wait_timeout=INDEXED))
    remote, local = pair.both(lambda t: t.search(query_type="hybrid").vector(QUERIES[0])
                              .text("honey").limit(10).to_arrow())
    assert remote.column("id").to_pylist() == local.column("id").to_pylist()
    np.testing.assert_allclose(remote.column("_relevance_score").to_numpy(),
                               local.column("_relevance_score").to_numpy(), rtol=1e-5)


def test_indexes_are_listed_alike(pair: Pair) -> None:
    pair.both(lambda t: t.create_index("id", config=BTree(), wait_timeout=INDEXED))
    pair.both(lambda t: t.create_index("text", config=FTS(), wait_timeout=INDEXED))
    remote, local = pair.both(lambda t: sorted((i.name, i.index_type, tuple(i.columns))
                                               for i in t.list_indices()))
    assert remote == local
    for name in ("id_idx", "text_idx"):
        r, e = pair.both(lambda t, n=name: t.index_stats(n))
        assert (r.num_indexed_rows, r.num_unindexed_rows, r.index_type) == (
            e.num_indexed_rows, e.num_unindexed_rows, e.index_type)


def test_table_listing_and_stats(db, embedded) -> None:
    for name in ("b", "a", "c"):
        for conn in (db, embedded):
            conn.create_table(name, make_rows(20))
    assert db.list_tables().tables == embedded.list_tables().tables
    remote, local = db.open_table("a"), embedded.open_table("a")
    remote_stats, local_stats = remote.stats(), local.stats()
    assert remote_stats["num_rows"] == local_stats["num_rows"]
    assert remote_stats["num_indices"] == local_stats["num_indices"]
    assert remote_stats["fragment_stats"]["num_fragments"] == (
        local_stats["fragment_stats"]["num_fragments"])
    db.drop_table("b")
    embedded.drop_table("b")
    assert db.list_tables().tables == embedded.list_tables().tables


def test_edge_cases_of_writes(db, embedded) -> None:
    data = make_rows(20)
    pair = Pair(db.create_table("my-table.v2", data), embedded.create_table("my-table.v2", data))
    pair.both(lambda t: t.add(pa.table({"id": pa.array([99], pa.int64())})))  # nulls elsewhere
    pair.both(lambda t: t.update(where="id = 1",
                                 values={"vector": [1.0] * 8, "tags": ["x", "y"]}))
    pair.both(lambda t: t.update(where="id = 2", values={"text": None}))
    pair.check_state()
    _same_search(*pair.both(lambda t: t.search(QUERIES[0]).limit(30).to_arrow()))


def test_an_empty_table(db, embedded) -> None:
    schema = make_rows(1).schema
    pair = Pair(db.create_table("empty", schema=schema), embedded.create_table("empty", schema=schema))
    pair.check_state()
    _same_search(*pair.both(lambda t: t.search(QUERIES[0]).limit(5).to_arrow()))
    remote, local = pair.both(lambda t: t.search().where("id > 0").limit(5).to_arrow())
    assert remote == local
    assert pair.same(lambda t: t.count_rows("id > 0")) == 0


# -- what a user moving from embedded lancedb expects (issue 9) -------------------------------


def _outcome(operation: Callable[[], Any]) -> tuple[str, Any]:
    """What an operation gives: its value, or that it failed.

    Only the failure is compared: the remote client raises HttpError for every 400 where
    embedded lancedb raises ValueError, whatever the server answers.
    """
    try:
        return "ok", operation()
    except Exception:  # noqa: BLE001 - that it failed is what is compared
        return "error", None


def _same_upsert(pair: Pair, source: pa.Table, update: bool, insert: bool) -> None:
    """``merge_insert("id")`` with the given ``when_*`` options: same outcome, same table after."""

    def merge(t: Any) -> tuple[str, Any]:
        builder = t.merge_insert("id")
        builder = builder.when_matched_update_all() if update else builder
        builder = builder.when_not_matched_insert_all() if insert else builder
        return _outcome(lambda: _merge_counts(builder.execute(source)))

    remote, local = pair.both(merge)
    assert remote == local
    pair.check_state()


def _strict_pair(db, embedded) -> Pair:
    """id and vector not nullable, the rest nullable: merge sources may omit either kind."""
    data = make_rows(6)
    fields = [f.with_nullable(f.name not in ("id", "vector")) for f in data.schema]
    data = data.cast(pa.schema(fields))
    return Pair(db.create_table("strict", data), embedded.create_table("strict", data))


@pytest.mark.parametrize(
    ("columns", "update", "insert"),
    [
        (["id", "price"], True, False),  # omits nullable and non-nullable columns
        (["id", "price"], True, True),  # new rows would lack 'vector': refused by both
        (["id", "price"], False, True),
        (["id", "vector", "price"], True, True),  # omits only nullable columns
        (["price", "id", "vector"], True, True),  # another column order
    ],
)
def test_partial_merge_insert_keeps_omitted_columns(db, embedded, columns, update, insert) -> None:
    pair = _strict_pair(db, embedded)
    source = make_rows(4, start=4, seed=7).select(columns)
    _same_upsert(pair, source, update, insert)


def test_partial_merge_insert_with_nulls_and_a_filter(db, embedded) -> None:
    pair = _strict_pair(db, embedded)
    source = pa.table({"id": pa.array([1, 2, 9], pa.int64()),
                       "text": pa.array([None, "two", None], pa.string())})
    remote, local = pair.both(lambda t: _outcome(lambda: _merge_counts(
        t.merge_insert("id").when_matched_update_all(where="target.id > 1").execute(source))))
    assert remote == local == ("ok", (1, 0, 0))
    pair.check_state()


@pytest.mark.parametrize(("key", "update", "insert"), [
    (9, True, False),  # matches nothing, inserts nothing: the null is never written
    (1, False, True),  # matches: not inserted
    (1, True, False),  # would write the null: refused by both
    (9, False, True),  # would insert it: refused by both
])
def test_merge_source_nulls_in_a_non_nullable_column_count_only_where_written(
        db, embedded, key, update, insert) -> None:
    """Found by the state machine (LANCEDB_RAY_STATEFUL=long, executors off): the service
    refused any source with such a null; lance refuses only the rows it writes."""
    data = make_rows(4)
    data = data.cast(pa.schema([f.with_nullable(f.name not in ("id", "vector", "text"))
                                for f in data.schema]))
    pair = Pair(db.create_table("strict_text", data), embedded.create_table("strict_text", data))
    source = pa.table({"id": pa.array([key], pa.int64()), "text": pa.array([None], pa.string())})
    _same_upsert(pair, source, update, insert)


def test_dropping_a_missing_table_raises_as_embedded_does(db, embedded) -> None:
    # Embedded raises ValueError; the remote client turns the 404 into HttpError (its drop
    # path does not map statuses), with lance's own message.
    for conn in (db, embedded):
        with pytest.raises(Exception, match="Table 'never_created' was not found"):
            conn.drop_table("never_created")


@pytest.fixture
def fragmented(db, embedded) -> Pair:
    """Several fragments (so the executors split scans into buckets), nulls in 'price'."""
    data = make_rows(40)
    pair = Pair(db.create_table("frag", data), embedded.create_table("frag", data))
    for start in (40, 80, 120, 160):
        batch = make_rows(40, start=start, seed=start)
        prices = [None if i % 5 == 0 else p for i, p in enumerate(batch.column("price").to_pylist())]
        batch = batch.set_column(batch.schema.get_field_index("price"), "price",
                                 pa.array(prices, pa.float64()))
        pair.both(lambda t, b=batch: t.add(b))
    return pair


ORDERINGS = [
    [{"column_name": "id", "ascending": False}],
    [{"column_name": "price", "ascending": True, "nulls_first": True},
     {"column_name": "id", "ascending": True}],
    [{"column_name": "price", "ascending": False, "nulls_first": False},
     {"column_name": "id", "ascending": False}],
    [{"column_name": "category", "ascending": True}, {"column_name": "price", "ascending": False,
                                                      "nulls_first": True},
     {"column_name": "id", "ascending": True}],
]


@pytest.mark.parametrize("ordering", ORDERINGS)
def test_order_by_in_scans_across_buckets(fragmented: Pair, ordering) -> None:
    queries = [
        lambda t: t.search().order_by(ordering).limit(None),
        lambda t: t.search().where("id % 3 <> 0").order_by(ordering).limit(17),
        lambda t: t.search().where("id > 30").order_by(ordering).limit(10).offset(25),
        lambda t: t.search().select(["text", "id", "price", "category"]).order_by(ordering)
        .limit(12),
        lambda t: t.search(QUERIES[0]).order_by(ordering).limit(9).offset(3),
        lambda t: t.search(QUERIES[1]).where("id < 150", prefilter=False).order_by(ordering)
        .limit(20),
    ]
    for build in queries:
        remote, local = fragmented.both(lambda t, b=build: b(t).to_arrow())
        assert remote.schema.names == local.schema.names
        assert remote.drop_columns([c for c in ("_distance",) if c in remote.schema.names]) == (
            local.drop_columns([c for c in ("_distance",) if c in local.schema.names]))


def test_order_by_a_column_not_projected(fragmented: Pair) -> None:
    # Embedded lance 14 fails to plan this ("TakeExec requires ... _rowid"); its answer with
    # the keys projected, less the keys, is what the query means.
    ordering = ORDERINGS[1]
    remote = fragmented.remote.search().select(["text"]).order_by(ordering).limit(12).to_arrow()
    local = (fragmented.local.search().select(["text", "price", "id"]).order_by(ordering).limit(12)
             .to_arrow().select(["text"]))
    assert remote == local


def test_order_by_with_ties_gives_the_same_keys(fragmented: Pair) -> None:
    ordering = [{"column_name": "category", "ascending": False}]
    remote, local = fragmented.both(
        lambda t: t.search().where("id >= 20").order_by(ordering).limit(70).to_arrow())
    assert remote.column("category") == local.column("category")  # ties: lance's order is open


def test_table_uri_names_the_table_location(live_service, db, embedded) -> None:
    pair = Pair(db.create_table("located", make_rows(3)), embedded.create_table("located",
                                                                                make_rows(3)))
    remote, local = pair.both(lambda t: t.uri)
    assert remote.endswith("/located.lance") and local.endswith("/located.lance")
    assert remote.startswith(str(live_service.root))  # the table's directory on the service


def test_index_details_and_tokenize(pair: Pair) -> None:
    pair.both(lambda t: t.create_index("text", config=FTS(with_position=True, stem=False),
                                       wait_timeout=INDEXED))
    pair.both(lambda t: t.create_index("id", config=BTree(), wait_timeout=INDEXED))
    remote, local = pair.both(lambda t: sorted((i.name, i.index_type, repr(i.index_details))
                                               for i in t.list_indices()))
    assert remote == local
    for query in ("Hello kiwis and the Apples", "honey"):
        r, e = pair.both(lambda t, q=query: [(x.text, x.position) for x in
                                             t.tokenize(q, column="text")])
        assert r == e and r


def test_search_over_an_index_too_small_to_train(db, embedded) -> None:
    """Found by the state machine: with too few rows lance writes an empty IVF_PQ index (no
    files, no fragments); searches must treat every fragment as unindexed, as lance does."""
    data = make_rows(200)
    pair = Pair(db.create_table("small", data), embedded.create_table("small", data))
    pair.both(lambda t: t.create_index("vector", config=IvfPq(num_partitions=2, num_sub_vectors=2)))
    # Such an index counts every row unindexed (so does embedded's), so wait_timeout would never end:
    # wait for the build job to commit it instead.
    deadline = time.monotonic() + INDEXED.total_seconds()
    while not pair.remote.list_indices():
        assert time.monotonic() < deadline, "the index build job did not commit the index"
        time.sleep(0.2)
    assert pair.remote.index_stats("vector_idx") == pair.local.index_stats("vector_idx")
    pair.both(lambda t: t.add(make_rows(30, start=200, seed=5)))
    for vector in QUERIES:
        _same_search(*pair.both(lambda t, v=vector: t.search(v).limit(10).to_arrow()))
        _same_search(*pair.both(lambda t, v=vector: t.search(v).where("id > 50", prefilter=False)
                                .limit(10).to_arrow()))
