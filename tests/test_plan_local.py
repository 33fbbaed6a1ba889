"""Sub-plans run on cached copies give exactly what lance gives on the whole table.

No Ray here: the planner, the sub-plan runner, the cache and the merge are
plain functions, checked against a lance dataset with an index segment and
unindexed fragments.
"""

from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from lancedb_ray.execution import subplans
from lancedb_ray.execution.cache import FragmentCache
from lancedb_ray.execution.merge import merge_nearest, merge_scan
from lancedb_ray.execution.plan import (
    DatasetRef,
    Snapshot,
    SubPlanKind,
    plan_count,
    plan_query,
)
from lancedb_ray.protocol import QueryRequest
from lancedb_ray.types import TableRef

DIM = 16


def _rows(rng: np.random.Generator, start: int, count: int) -> pa.Table:
    vectors = rng.normal(size=(count, DIM)).astype("float32")
    return pa.table({
        "id": np.arange(start, start + count),
        "category": [f"c{i % 5}" for i in range(start, start + count)],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
    })


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> lance.LanceDataset:
    rng = np.random.default_rng(7)
    uri = str(tmp_path_factory.mktemp("plan") / "t.lance")
    lance.write_dataset(_rows(rng, 0, 2000), uri, max_rows_per_file=250)
    ds = lance.dataset(uri)
    ds.create_index("vector", "IVF_PQ", num_partitions=4, num_sub_vectors=4)
    for start in (2000, 2300, 2600):
        lance.write_dataset(_rows(rng, start, 300), uri, mode="append")
    ds = lance.dataset(uri)
    ds.delete("id % 97 = 0")
    return lance.dataset(uri)


def _run(ds: lance.LanceDataset, query: QueryRequest, cache: FragmentCache):
    target = DatasetRef(TableRef("db", (), "t"), ds.uri, ds.version)
    plans = plan_query(Snapshot.of(ds), target, query, group_size=2)
    results = [subplans.run(plan, lambda _plan: ds, cache) for plan in plans]
    return plans, results


@pytest.fixture
def cache(tmp_path: Path) -> FragmentCache:
    return FragmentCache("test", 1 << 30, str(tmp_path / "spill"), 1 << 30)


def test_exact_search_matches_lance(dataset: lance.LanceDataset, cache: FragmentCache) -> None:
    q = np.random.default_rng(1).normal(size=DIM).astype("float32")
    query = QueryRequest(vector=q.tolist(), k=10, bypass_vector_index=True, with_row_id=True,
                         columns=["id"])
    plans, results = _run(dataset, query, cache)
    assert {p.kind for p in plans} == {SubPlanKind.FLAT}
    assert len(plans) > 2
    got = merge_nearest(results, query)
    want = dataset.scanner(nearest={"column": "vector", "q": q, "k": 10, "use_index": False},
                           columns=["id"], with_row_id=True).to_table()
    assert got["id"].to_pylist() == want["id"].to_pylist()
    assert got["_rowid"].to_pylist() == want["_rowid"].to_pylist()
    np.testing.assert_allclose(got["_distance"].to_numpy(), want["_distance"].to_numpy(),
                               rtol=1e-6)


def test_indexed_search_plans_segments_plus_unindexed(dataset, cache) -> None:
    q = np.random.default_rng(2).normal(size=DIM).astype("float32")
    query = QueryRequest(vector=q.tolist(), k=10, nprobes=4, columns=["id"])
    plans, results = _run(dataset, query, cache)
    kinds = [p.kind for p in plans]
    assert kinds.count(SubPlanKind.INDEX_SEGMENT) == 1
    flat_fragments = {f for p in plans if p.kind is SubPlanKind.FLAT for f in p.fragment_ids}
    indexed = set(dataset.list_indices()[0]["fragment_ids"])
    all_fragments = {f.fragment_id for f in dataset.get_fragments()}
    assert flat_fragments == all_fragments - indexed
    got = merge_nearest(results, query)
    want = dataset.scanner(nearest={"column": "vector", "q": q, "k": 10, "nprobes": 4},
                           columns=["id"]).to_table()
    assert got["id"].to_pylist() == want["id"].to_pylist()


@pytest.mark.parametrize("prefilter", [True, False])
def test_filtered_search_and_offset(dataset, cache, prefilter: bool) -> None:
    q = np.random.default_rng(3).normal(size=DIM).astype("float32")
    query = QueryRequest(vector=q.tolist(), k=8, offset=2, filter="category = 'c1'",
                         prefilter=prefilter, bypass_vector_index=True)
    _, results = _run(dataset, query, cache)
    got = merge_nearest(results, query)
    want = dataset.scanner(nearest={"column": "vector", "q": q, "k": 10, "use_index": False},
                           filter="category = 'c1'", prefilter=prefilter).to_table().slice(2, 8)
    assert got["id"].to_pylist() == want["id"].to_pylist()
    assert got.schema.names == want.schema.names


def test_scan_and_count(dataset, cache) -> None:
    query = QueryRequest(filter="id % 3 = 0", columns={"double": "id * 2"}, k=25, offset=5)
    _, results = _run(dataset, query, cache)
    got = merge_scan(results, query)
    want = dataset.to_table(filter="id % 3 = 0", columns={"double": "id * 2"}).slice(5, 25)
    assert got.to_pydict() == want.to_pydict()
    target = DatasetRef(TableRef("db", (), "t"), dataset.uri, dataset.version)
    counts = [subplans.run(p, lambda _p: dataset, cache)
              for p in plan_count(Snapshot.of(dataset), target, "category = 'c2'", 2)]
    assert sum(counts) == dataset.count_rows("category = 'c2'")


def test_cache_hits_and_content_keys(dataset, cache) -> None:
    query = QueryRequest(filter="id < 100", k=1000)
    plans, _ = _run(dataset, query, cache)
    misses = cache.stats().misses
    _run(dataset, query, cache)
    stats = cache.stats()
    assert stats.misses == misses and stats.hits >= len(plans)


def test_content_keys_change_only_where_rows_changed(dataset) -> None:
    before = lance.dataset(dataset.uri, version=dataset.version - 1)  # before the delete
    query = QueryRequest(filter="id >= 0", k=100000)

    def keys(ds: lance.LanceDataset) -> dict[tuple[int, ...], str]:
        target = DatasetRef(TableRef("db", (), "t"), ds.uri, ds.version)
        return {p.fragment_ids: p.cache_key for p in plan_query(Snapshot.of(ds), target, query, 2)}

    old, new = keys(before), keys(dataset)
    assert old.keys() == new.keys()
    changed = {ids for ids in old if old[ids] != new[ids]}
    deleted_in = {f.fragment_id for f in dataset.get_fragments() if f.metadata.deletion_file}
    assert changed == {ids for ids in old if deleted_in & set(ids)}
    assert changed and len(changed) < len(old) or len(deleted_in) == len(dataset.get_fragments())


def test_eviction_spills_to_disk_and_promotes_back(dataset, tmp_path: Path) -> None:
    small = FragmentCache("small", 50_000, str(tmp_path / "spill"), 1 << 30)
    query = QueryRequest(filter="id >= 0", k=100000)
    plans, _ = _run(dataset, query, small)
    stats = small.stats()
    assert stats.evictions > 0 and stats.spill_bytes > 0
    assert stats.entries == len(plans)
    before = small.stats().misses
    results = [subplans.run(p, lambda _p: dataset, small) for p in plans]
    assert small.stats().misses == before, "spilled copies are served from disk, not storage"
    assert sum(r.num_rows for r in results) == dataset.count_rows()


def test_a_warm_query_is_planned_without_reading_the_table_again(dataset, monkeypatch) -> None:
    """Fragments, index segments and bucket layouts are read once per version: planning a warm
    query does not walk the fragments (its cost would grow with the table's history)."""
    from lancedb_ray.execution import plan as planner

    snapshot = Snapshot.of(dataset)
    target = DatasetRef(TableRef("db", (), "t"), dataset.uri, dataset.version)
    query = QueryRequest(vector=[0.1] * DIM, k=5, nprobes=2)
    first = plan_query(snapshot, target, query, group_size=2)
    assert len([p for p in first if p.kind is SubPlanKind.FLAT]) > 1, "buckets of unindexed fragments"

    def read(*args, **kwargs):
        raise AssertionError("a warm query read the table's metadata again")

    monkeypatch.setattr(snapshot.dataset, "get_fragments", read)
    monkeypatch.setattr(snapshot.dataset, "get_fragment", read)
    monkeypatch.setattr(planner, "vector_index_segments", read)
    assert plan_query(snapshot, target, query, group_size=2) == first
