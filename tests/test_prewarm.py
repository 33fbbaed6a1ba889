"""Index and data prewarm through the official client load what the plan executors' queries read.

The executors' cache statistics (``cache_stats``: lance's index cache bytes, the fragment cache's
hits and misses) show where the prewarm went; embedded lancedb gives the errors to match.
"""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa
import pytest
import ray

from tests.support.service import INDEXED, LiveService

pytestmark = pytest.mark.ray
DIM = 8
NAMESPACE = "lancedb-ray"
EXECUTORS = ["plan-executor-0", "plan-executor-1"]


def _rows(start: int, count: int) -> pa.Table:
    vectors = np.random.default_rng(start).normal(size=(count, DIM)).astype("float32")
    return pa.table({"id": np.arange(start, start + count),
                     "vector": pa.array(vectors.tolist(), pa.list_(pa.float32(), DIM))})


def _table(live_service: LiveService, name: str) -> lancedb.table.Table:
    """Four fragments: two buckets (``fragments_per_group`` 2), so queries go to the executors."""
    table = live_service.connect("prewarm").create_table(name, _rows(0, 300), mode="overwrite")
    for start in (300, 600, 900):
        table.add(_rows(start, 300))
    return table


def _stats() -> dict[str, dict]:
    return {name: ray.get(ray.get_actor(name, namespace=NAMESPACE).cache_stats.remote())
            for name in EXECUTORS}


def test_index_prewarm_loads_the_index_into_every_executor(live_service: LiveService) -> None:
    table = _table(live_service, "indexed")
    table.create_index(metric="l2", vector_column_name="vector", num_partitions=4,
                       num_sub_vectors=2, wait_timeout=INDEXED)
    before = _stats()
    table.prewarm_index("vector_idx")
    warmed = _stats()
    loaded = {name: warmed[name]["index_cache_bytes"] - before[name]["index_cache_bytes"]
              for name in EXECUTORS}
    assert all(size > 0 for size in loaded.values()), loaded
    query = np.random.default_rng(7).normal(size=DIM).astype("float32")
    assert table.search(query).limit(5).to_arrow().num_rows == 5
    after = _stats()
    # A cold executor loads the index's partitions for this query (as much as the prewarm did);
    # a warmed one adds at most a few small per-query entries.
    for name in EXECUTORS:
        added = after[name]["index_cache_bytes"] - warmed[name]["index_cache_bytes"]
        assert added < loaded[name] / 10, (name, before, warmed, after)


def test_prewarm_of_an_unknown_index_fails_as_embedded(live_service: LiveService, embedded) -> None:
    remote = _table(live_service, "unindexed")
    local = embedded.create_table("unindexed", _rows(0, 300))
    with pytest.raises(Exception) as want:
        local.prewarm_index("nope_idx")
    with pytest.raises(Exception) as got:
        remote.prewarm_index("nope_idx")
    assert type(got.value) is type(want.value)
    assert "not found" in str(got.value).lower() and "nope_idx" in str(got.value)


def test_data_prewarm_fills_the_executor_caches_before_the_first_query(live_service: LiveService) -> None:
    table = _table(live_service, "data")
    before = _stats()
    table.prewarm_data()
    warmed = _stats()
    assert sum(warmed[n]["misses"] for n in EXECUTORS) > sum(before[n]["misses"] for n in EXECUTORS)
    oracle = lancedb.connect(live_service.root / "prewarm").open_table("data")  # the same storage
    got = table.search().where("id % 7 = 3").limit(2000).to_arrow()
    assert sorted(got["id"].to_pylist()) == sorted(
        oracle.search().where("id % 7 = 3").limit(2000).to_arrow()["id"].to_pylist())
    after = _stats()
    assert [after[n]["misses"] for n in EXECUTORS] == [warmed[n]["misses"] for n in EXECUTORS]
    assert sum(after[n]["hits"] for n in EXECUTORS) > sum(warmed[n]["hits"] for n in EXECUTORS)
