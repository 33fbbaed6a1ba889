"""Index creation (every kind, with parameters), listing, statistics and removal."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import lance
import pytest
from lancedb.index import FTS, BTree, HnswSq, IvfPq, LabelList
from lancedb.index import Bitmap as BitmapIndex
from lancedb.query import PhraseQuery

from tests.support.api import RawClient, ids_of, make_rows, query_vector, raw_fixture  # noqa: F401
from tests.support.service import INDEXED, LiveService

pytestmark = pytest.mark.ray

ROWS = make_rows(600)


def _lance_index_stats(service: LiveService, db, table: str, index: str) -> dict[str, Any]:
    """What lance itself recorded for the index: proves the parameters reached it."""
    dataset = lance.dataset(str(service.root / db.db_name / f"{table}.lance"))
    return dataset.stats.index_stats(index)


@pytest.fixture
def table(db):
    return db.create_table("items", ROWS)


def _indexes(table) -> dict[str, tuple[str, list[str]]]:
    return {i.name: (i.index_type, list(i.columns)) for i in table.list_indices()}


def test_ivf_pq_with_parameters_and_a_name(live_service: LiveService, db, table) -> None:
    table.create_index(
        "vector",
        config=IvfPq(distance_type="cosine", num_partitions=4, num_sub_vectors=2, num_bits=8,
                     max_iterations=10, sample_rate=64),
        name="vec_pq",
        wait_timeout=INDEXED,
    )
    assert _indexes(table) == {"vec_pq": ("IvfPq", ["vector"])}
    stats = table.index_stats("vec_pq")
    assert stats.index_type == "IVF_PQ"
    assert stats.distance_type == "cosine"
    assert (stats.num_indexed_rows, stats.num_unindexed_rows) == (600, 0)
    recorded = _lance_index_stats(live_service, db, "items", "vec_pq")["indices"][0]
    assert recorded["num_partitions"] == 4
    assert recorded["sub_index"]["num_sub_vectors"] == 2
    assert recorded["metric_type"] == "cosine"
    assert len(ids_of(table.search(query_vector()).distance_type("cosine").limit(5).to_arrow())) == 5


def test_ivf_pq_with_target_partition_size(live_service: LiveService, db, table) -> None:
    table.create_index("vector", config=IvfPq(target_partition_size=100, num_sub_vectors=2),
                       wait_timeout=INDEXED)
    recorded = _lance_index_stats(live_service, db, "items", "vector_idx")["indices"][0]
    assert recorded["num_partitions"] == 6  # 600 rows / 100


def test_ivf_hnsw_sq_with_parameters(live_service: LiveService, db, table) -> None:
    table.create_index(
        "vector", config=HnswSq(num_partitions=2, m=8, ef_construction=40), name="vec_hnsw",
        wait_timeout=INDEXED,
    )
    assert _indexes(table) == {"vec_hnsw": ("IvfHnswSq", ["vector"])}
    stats = table.index_stats("vec_hnsw")
    assert stats.index_type == "IVF_HNSW_SQ"
    assert stats.num_indexed_rows == 600
    recorded = _lance_index_stats(live_service, db, "items", "vec_hnsw")["indices"][0]
    assert recorded["num_partitions"] == 2
    result = table.search(query_vector()).ef(64).limit(5).to_arrow()
    assert result.num_rows == 5


def test_ivf_hnsw_pq_over_raw_http(live_service: LiveService, db, table, raw: RawClient) -> None:
    # The Python client refuses HNSW_PQ for remote tables; other clients may send it.
    response = raw.post(
        "/v1/table/items/create_index/",
        json_body={"column": "vector", "index_type": "IVF_HNSW_PQ", "metric_type": "l2",
                   "num_partitions": 2, "num_sub_vectors": 2, "m": 8, "ef_construction": 40},
    )
    assert response.status_code == 200, response.text
    table.wait_for_index(["vector_idx"], INDEXED)
    assert _indexes(table) == {"vector_idx": ("IvfHnswPq", ["vector"])}
    assert table.index_stats("vector_idx").index_type == "IVF_HNSW_PQ"


def test_scalar_indexes_btree_bitmap_label_list(db, table) -> None:
    table.create_index("id", config=BTree(), wait_timeout=INDEXED)
    table.create_index("category", config=BitmapIndex(), name="cat_bitmap", wait_timeout=INDEXED)
    table.create_index("tags", config=LabelList(), wait_timeout=INDEXED)
    assert _indexes(table) == {
        "id_idx": ("BTree", ["id"]),
        "cat_bitmap": ("Bitmap", ["category"]),
        "tags_idx": ("LabelList", ["tags"]),
    }
    assert table.index_stats("id_idx").index_type == "BTREE"
    assert table.index_stats("cat_bitmap").index_type == "BITMAP"
    assert table.index_stats("tags_idx").index_type == "LABEL_LIST"
    # answers are unchanged by the indexes
    assert table.count_rows("id < 100") == 100
    red = ROWS["category"].to_pylist().count("red")
    assert table.count_rows("category = 'red'") == red
    kiwi = [i for i, tags in enumerate(ROWS["tags"].to_pylist()) if "kiwi" in tags]
    scan = table.search().where("array_has_any(tags, ['kiwi'])").limit(None).to_arrow()
    assert sorted(ids_of(scan)) == kiwi


def test_fts_index_with_parameters(db, table) -> None:
    table.create_index("text", config=FTS(with_position=False, stem=False), name="text_fts",
                       wait_timeout=INDEXED)
    assert _indexes(table) == {"text_fts": ("FTS", ["text"])}
    assert table.index_stats("text_fts").index_type == "FTS"
    assert table.search("kiwi", query_type="fts").limit(5).to_arrow().num_rows == 5
    # without positions, phrase queries are refused with a 400 that says why
    with pytest.raises(Exception, match="400.*position"):
        table.search(PhraseQuery("banana kiwi", "text")).limit(5).to_arrow()
    table.create_index("text", config=FTS(with_position=True), name="text_fts", wait_timeout=INDEXED)
    assert table.search(PhraseQuery("banana kiwi", "text")).limit(5).to_arrow().num_rows > 0


def test_fts_block_size_reaches_lance(live_service: LiveService, db, table) -> None:
    table.create_index("text", config=FTS(block_size=256), wait_timeout=INDEXED)
    recorded = _lance_index_stats(live_service, db, "items", "text_idx")["indices"][0]
    assert recorded["params"]["block_size"] == 256


def test_create_index_waiting_for_it(db, table) -> None:
    table.create_index("id", config=BTree(), wait_timeout=timedelta(seconds=60))
    table.wait_for_index(["id_idx"], timedelta(seconds=30))
    assert table.index_stats("id_idx").num_unindexed_rows == 0


def test_index_stats_count_unindexed_rows(db, table) -> None:
    table.create_index("id", config=BTree(), wait_timeout=INDEXED)
    table.add(make_rows(40, start=600))
    stats = table.index_stats("id_idx")
    assert (stats.num_indexed_rows, stats.num_unindexed_rows) == (600, 40)
    assert table.stats()["num_indices"] == 1


def test_index_list_at_a_version(db, table, raw: RawClient) -> None:
    table.create_index("id", config=BTree(), wait_timeout=INDEXED)
    before = raw.post("/v1/table/items/index/list/", json_body={"version": 1}).json()
    now = raw.post("/v1/table/items/index/list/", json_body={"version": None}).json()
    assert before["indexes"] == []
    assert [i["index_name"] for i in now["indexes"]] == ["id_idx"]
    assert now["indexes"][0]["columns"] == ["id"]


def test_index_stats_of_a_missing_index_is_none(db, table, raw: RawClient) -> None:
    assert table.index_stats("nope") is None
    assert raw.post("/v1/table/items/index/nope/stats/").status_code == 404


def test_drop_index(db, table) -> None:
    table.create_index("id", config=BTree(), wait_timeout=INDEXED)
    table.create_index("category", config=BitmapIndex(), wait_timeout=INDEXED)
    table.drop_index("id_idx")
    assert list(_indexes(table)) == ["category_idx"]
    assert table.index_stats("id_idx") is None
    with pytest.raises(Exception, match="not found"):
        table.drop_index("id_idx")


def test_index_on_an_unknown_column_is_refused(db, table, raw: RawClient) -> None:
    with pytest.raises(Exception, match="nope"):  # the client checks this itself...
        table.create_index("nope", config=BTree(), wait_timeout=INDEXED)
    response = raw.post(  # ... and so does the service, for clients that do not
        "/v1/table/items/create_index/", json_body={"column": "nope", "index_type": "BTREE"}
    )
    assert response.status_code == 400
    assert "nope" in response.text
    assert _indexes(table) == {}
