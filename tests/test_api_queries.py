"""Queries through the official client, checked against brute force over the same data.

Exact searches (no index, or ``bypass_vector_index``) must return exactly the
nearest rows; indexed searches are checked for what an index guarantees.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from lancedb.index import FTS, IvfPq
from lancedb.query import BooleanQuery, MatchQuery, MultiMatchQuery, Occur, PhraseQuery

from tests.support.api import (
    DIM,
    RawClient,
    ids_of,
    make_rows,
    query_vector,
    read_arrow_file,
)
from tests.support.service import INDEXED, LiveService

pytestmark = pytest.mark.ray

N = 1000
DATA = make_rows(N)
VECTORS = np.stack(DATA.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
Q = np.array(query_vector(), dtype=np.float32)
Q2 = np.array(query_vector(seed=7), dtype=np.float32)


def distances(query: np.ndarray, metric: str = "l2", rows: np.ndarray = VECTORS) -> np.ndarray:
    if metric == "l2":
        return ((rows - query) ** 2).sum(axis=1)
    if metric == "cosine":
        return 1 - rows @ query / (np.linalg.norm(rows, axis=1) * np.linalg.norm(query))
    return 1 - rows @ query  # dot


def nearest(query: np.ndarray, k: int, metric: str = "l2", mask: Any = None) -> list[int]:
    d = distances(query, metric)
    if mask is not None:
        d = np.where(mask, d, np.inf)
    order = np.argsort(d, kind="stable")[:k]
    return [int(i) for i in order if np.isfinite(d[i])]


def column(name: str) -> np.ndarray:
    return np.array(DATA.column(name).to_pylist())


@pytest.fixture(scope="module")
def qdb(live_service: LiveService):
    """One database for the module: its tables are only read by the tests."""
    return live_service.connect()


@pytest.fixture(scope="module")
def items(qdb):
    """1000 rows, no index: every vector search is exact."""
    return qdb.create_table("items", DATA)


@pytest.fixture(scope="module")
def indexed(qdb):
    """The same rows with an IVF_PQ index, an FTS index on text and one on category."""
    table = qdb.create_table("indexed", DATA)
    table.create_index("vector", config=IvfPq(num_partitions=4, num_sub_vectors=2), wait_timeout=INDEXED)
    table.create_index("text", config=FTS(with_position=True), wait_timeout=INDEXED)
    table.create_index("category", config=FTS(), wait_timeout=INDEXED)
    return table


# -- vector search -----------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
def test_exact_search_returns_the_nearest_rows_and_their_distances(items, metric: str) -> None:
    result = items.search(Q.tolist()).distance_type(metric).limit(10).to_arrow()
    expected = nearest(Q, 10, metric)
    assert ids_of(result) == expected
    exact = distances(Q, metric)[expected]
    assert result.column("_distance").to_numpy() == pytest.approx(exact, rel=1e-4, abs=1e-4)
    assert result.schema.names == [*DATA.schema.names, "_distance"]


def test_k_limits_the_results(items) -> None:
    for k in (1, 3, 25):
        assert items.search(Q.tolist()).limit(k).to_arrow().num_rows == k


def test_prefilter_returns_the_nearest_matching_rows(items) -> None:
    mask = column("category") == "blue"
    result = items.search(Q.tolist()).where("category = 'blue'", prefilter=True).limit(10)
    result = result.to_arrow()
    assert ids_of(result) == nearest(Q, 10, mask=mask)
    assert set(result.column("category").to_pylist()) == {"blue"}


def test_postfilter_filters_the_nearest_rows(items) -> None:
    mask = column("category") == "blue"
    result = items.search(Q.tolist()).where("category = 'blue'", prefilter=False).limit(20)
    found = ids_of(result.to_arrow())
    # Post-filtering keeps the matching rows among the 20 nearest, in distance order.
    assert found == [i for i in nearest(Q, 20) if mask[i]]


def test_select_a_list_of_columns(items) -> None:
    result = items.search(Q.tolist()).select(["id", "price"]).limit(5).to_arrow()
    assert result.schema.names == ["id", "price", "_distance"]
    expected = nearest(Q, 5)
    assert ids_of(result) == expected
    assert result.column("price").to_pylist() == [DATA["price"][i].as_py() for i in expected]


def test_select_sql_expressions_with_aliases(items) -> None:
    result = (
        items.search(Q.tolist()).select({"id": "id", "x2": "id * 2", "shout": "upper(category)"})
        .limit(5).to_arrow()
    )
    ids = ids_of(result)
    assert ids == nearest(Q, 5)
    assert result.column("x2").to_pylist() == [i * 2 for i in ids]
    assert result.column("shout").to_pylist() == [DATA["category"][i].as_py().upper() for i in ids]


def test_alias_map_on_a_plain_scan(items) -> None:
    result = items.search().where("id < 4").select({"x2": "id*2"}).limit(None).to_arrow()
    assert result.schema.names == ["x2"]
    assert sorted(result.column("x2").to_pylist()) == [0, 2, 4, 6]


def test_offset_skips_the_first_results(items) -> None:
    page = items.search(Q.tolist()).limit(5).offset(3).to_arrow()
    assert ids_of(page) == nearest(Q, 8)[3:]


def test_with_row_id(items) -> None:
    result = items.search(Q.tolist()).with_row_id(True).limit(5).to_arrow()
    assert result.schema.field("_rowid").type == pa.uint64()
    assert result.column("_rowid").to_pylist() == ids_of(result)  # one fragment, no deletes


def test_distance_range(items) -> None:
    d = distances(Q)
    low, high = float(np.quantile(d, 0.1)), float(np.quantile(d, 0.2))
    result = items.search(Q.tolist()).distance_range(low, high).limit(N).to_arrow()
    expected = {int(i) for i in np.nonzero((d >= low) & (d < high))[0]}
    assert set(ids_of(result)) == expected
    got = result.column("_distance").to_numpy()
    assert (got >= low - 1e-5).all() and (got < high + 1e-5).all()


def test_several_query_vectors_in_one_request(items) -> None:
    result = items.search([Q.tolist(), Q2.tolist()]).limit(4).to_arrow()
    assert "query_index" in result.schema.names
    for index, query in ((0, Q), (1, Q2)):
        rows = result.filter(pa.compute.equal(result.column("query_index"), index))
        assert ids_of(rows) == nearest(query, 4)


def test_several_query_vectors_raw_carry_query_index(live_service: LiveService, qdb, items) -> None:
    raw = RawClient(live_service, qdb.db_name)
    response = raw.query("items", {"vector": [Q.tolist(), Q2.tolist()], "k": 3, "prefilter": True})
    raw.close()
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.apache.arrow.file"
    result = read_arrow_file(response.content)
    assert result.column("query_index").to_pylist() == [0, 0, 0, 1, 1, 1]
    assert ids_of(result) == nearest(Q, 3) + nearest(Q2, 3)


def test_query_vector_column_is_named_explicitly(qdb) -> None:
    data = pa.table(
        {
            "id": pa.array(range(50), pa.int64()),
            "a": pa.FixedSizeListArray.from_arrays(pa.array(VECTORS[:50].ravel()), DIM),
            "b": pa.FixedSizeListArray.from_arrays(pa.array(VECTORS[50:100].ravel()), DIM),
        }
    )
    table = qdb.create_table("two_vectors", data)
    for name, rows in (("a", VECTORS[:50]), ("b", VECTORS[50:100])):
        result = table.search(Q.tolist(), vector_column_name=name).limit(3).to_arrow()
        order = np.argsort(distances(Q, rows=rows), kind="stable")[:3]
        assert ids_of(result) == [int(i) for i in order]


# -- indexed vector search ---------------------------------------------------------------------


def test_indexed_search_with_full_refine_matches_exact_distances(indexed) -> None:
    result = indexed.search(Q.tolist()).nprobes(4).refine_factor(50).limit(10).to_arrow()
    ids = ids_of(result)
    assert len(ids) == 10
    # refined distances are exact, in order
    assert result.column("_distance").to_numpy() == pytest.approx(distances(Q)[ids], rel=1e-4)
    assert list(result.column("_distance").to_numpy()) == sorted(result.column("_distance").to_numpy())
    # with every partition probed and a wide refine, the true nearest neighbours are found
    assert len(set(ids) & set(nearest(Q, 10))) >= 8


def test_bypass_vector_index_is_exact(indexed) -> None:
    result = indexed.search(Q.tolist()).bypass_vector_index().limit(10).to_arrow()
    assert ids_of(result) == nearest(Q, 10)
    assert result.column("_distance").to_numpy() == pytest.approx(
        distances(Q)[nearest(Q, 10)], rel=1e-4
    )


def test_indexed_search_with_a_prefilter(indexed) -> None:
    result = (
        indexed.search(Q.tolist()).where("price < 10", prefilter=True).nprobes(4)
        .refine_factor(50).limit(10).to_arrow()
    )
    assert len(ids_of(result)) == 10
    assert all(p < 10 for p in result.column("price").to_pylist())


def test_fast_search_skips_unindexed_rows(live_service: LiveService) -> None:
    db = live_service.connect()
    table = db.create_table("fresh", make_rows(512))
    table.create_index("vector", config=IvfPq(num_partitions=2, num_sub_vectors=2), wait_timeout=INDEXED)
    extra = make_rows(5, start=10_000)
    near = pa.FixedSizeListArray.from_arrays(pa.array(np.tile(Q, 5)), DIM)
    table.add(extra.set_column(1, "vector", near))  # five exact matches, not yet indexed
    normal = ids_of(table.search(Q.tolist()).limit(5).to_arrow())
    assert sorted(normal) == list(range(10_000, 10_005))
    fast = ids_of(table.search(Q.tolist()).fast_search().limit(5).to_arrow())
    assert len(fast) == 5
    assert all(i < 512 for i in fast)


# -- scans -------------------------------------------------------------------------------------


def test_filtered_scan_returns_exactly_the_matching_rows(items) -> None:
    result = items.search().where("category = 'green' AND price > 20").limit(None).to_arrow()
    mask = (column("category") == "green") & (column("price") > 20)
    assert sorted(ids_of(result)) == [int(i) for i in np.nonzero(mask)[0]]


def test_scan_with_limit_offset_and_columns(items) -> None:
    result = items.search().where("id >= 100").select(["id", "text"]).limit(7).offset(2).to_arrow()
    assert result.schema.names == ["id", "text"]
    assert result.num_rows == 7
    assert all(i >= 100 for i in ids_of(result))


def test_scan_on_a_list_column(items) -> None:
    result = items.search().where("array_has_any(tags, ['kiwi'])").limit(None).to_arrow()
    expected = [i for i, tags in enumerate(DATA["tags"].to_pylist()) if "kiwi" in tags]
    assert sorted(ids_of(result)) == expected


# -- full-text search --------------------------------------------------------------------------


def _texts(ids: list[int]) -> list[str]:
    return [DATA["text"][i].as_py() for i in ids]


def _with_word(word: str, column_name: str = "text") -> set[int]:
    return {i for i, t in enumerate(DATA[column_name].to_pylist()) if word in t.split()}


def test_simple_full_text_search(indexed) -> None:
    result = indexed.search("honey", query_type="fts").limit(N).to_arrow()
    assert set(ids_of(result)) == _with_word("honey")
    scores = result.column("_score").to_pylist()
    assert scores == sorted(scores, reverse=True)


def test_full_text_search_with_filter_and_columns(indexed) -> None:
    result = (
        indexed.search("honey", query_type="fts").where("id < 200").select(["id"]).limit(N)
        .to_arrow()
    )
    assert set(ids_of(result)) == {i for i in _with_word("honey") if i < 200}
    assert "_score" in result.schema.names


def test_match_query_on_one_column(indexed) -> None:
    result = indexed.search(MatchQuery("kiwi", "text")).limit(N).to_arrow()
    assert set(ids_of(result)) == _with_word("kiwi")


def test_match_query_with_and_operator(indexed) -> None:
    from lancedb.query import FullTextOperator

    query = MatchQuery("kiwi apple", "text", operator=FullTextOperator.AND)
    result = indexed.search(query).limit(N).to_arrow()
    assert set(ids_of(result)) == _with_word("kiwi") & _with_word("apple")


def test_phrase_query(indexed) -> None:
    result = indexed.search(PhraseQuery("banana kiwi", "text")).limit(N).to_arrow()
    expected = {i for i, t in enumerate(DATA["text"].to_pylist()) if "banana kiwi" in t}
    assert expected and set(ids_of(result)) == expected


def test_multi_match_query(indexed) -> None:
    result = indexed.search(MultiMatchQuery("red", ["text", "category"])).limit(N).to_arrow()
    assert set(ids_of(result)) == _with_word("red", "category")


def test_boolean_query(indexed) -> None:
    query = BooleanQuery(
        [(Occur.MUST, MatchQuery("apple", "text")), (Occur.MUST_NOT, MatchQuery("fig", "text"))]
    )
    result = indexed.search(query).limit(N).to_arrow()
    assert set(ids_of(result)) == _with_word("apple") - _with_word("fig")


def test_hybrid_search_fuses_vector_and_text_results(indexed) -> None:
    result = (
        indexed.search(query_type="hybrid").vector(Q.tolist()).text("honey").limit(10).to_arrow()
    )
    assert "_relevance_score" in result.schema.names
    ids = ids_of(result)
    assert 0 < len(ids) <= 10
    vector_ids = set(ids_of(indexed.search(Q.tolist()).limit(10).to_arrow()))
    text_ids = set(ids_of(indexed.search("honey", query_type="fts").limit(10).to_arrow()))
    assert set(ids) <= vector_ids | text_ids
    scores = result.column("_relevance_score").to_pylist()
    assert scores == sorted(scores, reverse=True)


# -- plans -------------------------------------------------------------------------------------


def test_explain_plan_describes_the_query(items) -> None:
    plan = items.search(Q.tolist()).where("price < 3").limit(3).explain_plan(verbose=True)
    assert isinstance(plan, str)
    assert "price < " in plan
    assert "fetch=3" in plan or "TopK" in plan


def test_analyze_plan_reports_metrics(items) -> None:
    report = items.search().where("id < 10").limit(5).analyze_plan()
    assert "output_rows" in report
    assert "metrics" in report
