"""What the executors read, and where from: the manifest, a scalar index, or bounded cached copies.

No Ray: the planner, the executor class and the query node's count run in-process;
embedded lancedb on the same directory is the oracle.
"""

from __future__ import annotations

from pathlib import Path

import lance
import lancedb
import numpy as np
import pyarrow as pa
import pytest
from lancedb.index import BTree, IvfPq

from lancedb_ray.execution.base import QueryTarget
from lancedb_ray.execution.distributed import DistributedExecutor
from lancedb_ray.execution.executor_actor import PlanExecutor
from lancedb_ray.execution.merge import merge_scan
from lancedb_ray.execution.plan import DatasetRef, Snapshot, SubPlanKind, plan_count, plan_query
from lancedb_ray.protocol import UNLIMITED, QueryRequest
from lancedb_ray.settings import Settings, StorageSettings
from lancedb_ray.storage.catalog import StorageCatalog
from lancedb_ray.storage.connections import Connections
from lancedb_ray.storage.versions import LatestVersions, VersionRegistry
from lancedb_ray.types import TableRef

REF = TableRef("db", (), "t")


def _rows(start: int, count: int) -> pa.Table:
    ids = np.arange(start, start + count)
    return pa.table({"id": ids, "tag": [f"t{i % 7}" for i in ids],
                     "payload": [("x" * 200) + str(i) for i in ids],
                     "maybe": pa.array([None if i % 5 == 0 else i for i in ids], pa.int64())})


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> lancedb.table.LanceTable:
    root = tmp_path_factory.mktemp("cache")
    created = lancedb.connect(root / "db").create_table("t", _rows(0, 500))
    for start in range(500, 2000, 500):
        created.add(_rows(start, 500))
    created.delete("id % 13 = 0")
    created.create_index("id", config=BTree())
    return created


def _root(table) -> Path:
    return Path(table.to_lance().uri).parents[1]


def _snapshot(table) -> tuple[Snapshot, DatasetRef]:
    snapshot = Snapshot.of(table.to_lance())
    dataset = snapshot.dataset
    return snapshot, DatasetRef(REF, dataset.uri, dataset.version, snapshot.fingerprint)


class _NoExecutors:
    """A pool that fails the test if a query reaches an executor."""

    names = ["none"]
    replicas = 1

    def route(self, partition: str) -> list[str]:
        return ["none"]

    def handle(self, name: str, fresh: bool = False):
        raise AssertionError("this count should not need an executor")


def test_count_without_a_filter_comes_from_the_manifest(table) -> None:
    settings = Settings(storage={"root": {"uri": str(_root(table))}})
    catalog = StorageCatalog(StorageSettings(root={"uri": str(_root(table))}))
    connections = Connections(catalog, 60.0, LatestVersions(VersionRegistry(), 60.0))
    node = DistributedExecutor(settings, connections, _NoExecutors())  # type: ignore[arg-type]
    assert node.count(QueryTarget(REF, None), None) == table.count_rows()
    assert node.count(QueryTarget(REF, 1), None) == 500


def test_a_query_of_one_small_sub_plan_runs_on_the_query_node(table) -> None:
    """No executor hop where it costs more than the work: one flat/scan/count sub-plan, few rows."""
    settings = Settings(storage={"root": {"uri": str(_root(table))}})
    catalog = StorageCatalog(StorageSettings(root={"uri": str(_root(table))}))
    connections = Connections(catalog, 60.0, LatestVersions(VersionRegistry(), 60.0))
    node = DistributedExecutor(settings, connections, _NoExecutors())  # type: ignore[arg-type]
    for version in (1, None):  # one fragment; all four (one bucket of fragments_per_group 8)
        target = QueryTarget(REF, version)
        if version:
            table.checkout(version)
        try:
            assert node.count(target, "tag = 't3'") == table.count_rows("tag = 't3'")
            query = QueryRequest(filter="tag = 't3' AND maybe > 100", k=20, columns=["id", "maybe"])
            want = table.search().where("tag = 't3' AND maybe > 100").select(["id", "maybe"]).limit(20)
            assert node.search(target, query).to_pylist() == want.to_arrow().to_pylist()
        finally:
            table.checkout_latest()


@pytest.mark.parametrize("predicate", ["id >= 400 AND id < 1700", "id IN (1, 13, 1999, 5000)"])
def test_filters_on_scalar_indexed_columns_run_on_the_source(table, predicate: str) -> None:
    snapshot, target = _snapshot(table)
    plans = plan_count(snapshot, target, predicate, group_size=1)
    assert [(p.kind, p.cache_key, p.fragment_ids) for p in plans] == [(SubPlanKind.COUNT, None, ())]
    executor = PlanExecutor("source", Settings(storage={"root": {"uri": str(_root(table))}}).to_plain())
    assert executor.execute_batch(plans) == [table.count_rows(predicate)]
    query = QueryRequest(filter=predicate, k=30, offset=5, columns=["id", "maybe"])
    scans = plan_query(snapshot, target, query, group_size=1)
    assert len(scans) == 1 and scans[0].cache_key is None
    got = merge_scan(executor.execute_batch(scans), query)
    want = table.search().where(predicate).select(["id", "maybe"]).offset(5).limit(30).to_arrow()
    assert got.to_pydict() == want.to_pydict()


@pytest.mark.parametrize("predicate", ["tag = 't1'", "id > 3 AND maybe IS NULL", "tag = 'id'"])
def test_filters_on_other_columns_use_the_cached_buckets(table, predicate: str) -> None:
    snapshot, target = _snapshot(table)
    plans = plan_count(snapshot, target, predicate, group_size=1)
    assert len(plans) == len(snapshot.fragments) and all(p.cache_key for p in plans)


def test_a_table_twice_the_cache_budget_stays_within_it(table, tmp_path: Path) -> None:
    snapshot, target = _snapshot(table)
    table_bytes = table.to_arrow().nbytes
    budget = table_bytes  # the fragment copies get half of it: half the table
    settings = Settings(storage={"root": {"uri": str(_root(table))}},
                        executors={"cache_bytes": budget, "spill_dir": str(tmp_path),
                                   "spill_bytes": 4 * table_bytes})
    executor = PlanExecutor("bounded", settings.to_plain())
    memory_budget = budget // 2
    counts = plan_count(snapshot, target, "tag = 't3'", group_size=1)
    query = QueryRequest(filter="maybe IS NOT NULL AND tag != 't0'", k=UNLIMITED)
    scans = plan_query(snapshot, target, query, group_size=1)
    seen = []
    for plans in (counts, scans, counts):  # twice over: hits come from the spill tier
        answers = []
        for plan in plans:
            answers += executor.execute_batch([plan])
            seen.append(executor.cache_stats()["memory_bytes"])
        if plans is counts:
            assert sum(answers) == table.count_rows("tag = 't3'")
        else:
            want = table.search().where(query.filter).limit(None).to_arrow()
            assert merge_scan(answers, query).to_pydict() == want.to_pydict()
    assert max(seen) <= memory_budget, (max(seen), memory_budget)
    stats = executor.cache_stats()
    assert stats["evictions"] > 0 and stats["spill_bytes"] > 0
    assert lance.dataset(target.uri).count_rows() == table.count_rows()


@pytest.mark.parametrize("object_store", [True, False], ids=["object-store", "local-disk"])
def test_refine_reads_the_cached_vectors_not_storage(tmp_path: Path, object_store: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An index segment's re-ranking: the rows and distances of lance's refine. On object storage
    it reads the cached vectors (no storage read); on a local disk lance's own refine reads the
    page cache, which measured faster than re-ranking a copy (bench/results/query_bench.md)."""
    from lancedb_ray.execution import subplans
    from lancedb_ray.execution.cache import FragmentCache

    # The table lies in tmp_path; on_object_store decides by its URI, so it is told which to be.
    monkeypatch.setattr(subplans, "on_object_store", lambda uri: object_store)

    dim = 16
    vectors = np.random.default_rng(3).normal(size=(2000, dim)).astype("float32")
    data = pa.table({"id": np.arange(2000), "label": [f"l{i % 3}" for i in range(2000)],
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)})
    uri = str(tmp_path / "r.lance")
    lance.write_dataset(data, uri, max_rows_per_file=500)
    lance.dataset(uri).create_index("vector", "IVF_PQ", num_partitions=4, num_sub_vectors=4)
    dataset = lance.dataset(uri)
    snapshot = Snapshot.of(dataset)
    target = DatasetRef(REF, uri, dataset.version, snapshot.fingerprint)
    cache = FragmentCache("refine", 64 * 1024**2, None, 0)
    for q in vectors[:5] + 0.05:
        for columns in (["id"], None):
            query = QueryRequest(vector=q.tolist(), k=5, nprobes=2, refine_factor=3, columns=columns,
                                 with_row_id=True)
            plans = plan_query(snapshot, target, query, group_size=2)
            assert [p.kind for p in plans] == [SubPlanKind.INDEX_SEGMENT]
            subplans.run(plans[0], lambda _plan: dataset, cache)  # loads the segment's copy
            dataset.io_stats_incremental()
            got = subplans.run(plans[0], lambda _plan: dataset, cache)
            reads = dataset.io_stats_incremental().read_iops
            assert reads == 0 if object_store else reads > 0
            want = dataset.scanner(nearest={"column": "vector", "q": q, "k": 5, "nprobes": 2,
                                            "refine_factor": 3},
                                   columns=columns, with_row_id=True).to_table()
            assert got.schema.names == want.schema.names
            assert got.drop_columns(["_distance"]).to_pydict() == want.drop_columns(["_distance"]).to_pydict()
            np.testing.assert_allclose(got["_distance"].to_numpy(), want["_distance"].to_numpy(), rtol=1e-6)


def test_bucket_copies_hold_only_the_columns_a_query_reads(table, tmp_path: Path) -> None:
    snapshot, target = _snapshot(table)
    settings = Settings(storage={"root": {"uri": str(_root(table))}},
                        executors={"spill_dir": str(tmp_path)})
    executor = PlanExecutor("narrow", settings.to_plain())
    query = QueryRequest(filter="tag = 't2' AND maybe IS NOT NULL", k=UNLIMITED, columns=["id"])
    got = merge_scan(executor.execute_batch(plan_query(snapshot, target, query, group_size=1)), query)
    want = table.search().where(query.filter).select(["id"]).limit(None).to_arrow()
    assert got.to_pydict() == want.to_pydict()
    assert executor.cache_stats()["memory_bytes"] < table.to_arrow()["payload"].nbytes, "no payload read"
    counts = executor.execute_batch(plan_count(snapshot, target, "tag = 't2'", group_size=1))
    assert sum(counts) == table.count_rows("tag = 't2'")
    everything = QueryRequest(filter="tag = 't2'", k=UNLIMITED)  # every column: the whole copy
    got = merge_scan(executor.execute_batch(plan_query(snapshot, target, everything, 1)), everything)
    assert got.to_pydict() == table.search().where(everything.filter).limit(None).to_arrow().to_pydict()


def _indexed(root: Path, name: str) -> lancedb.table.LanceTable:
    rng = np.random.default_rng(3)
    vectors = pa.array(rng.normal(size=(1000, 8)).astype("float32").tolist(), pa.list_(pa.float32(), 8))
    created = lancedb.connect(root / "db").create_table(name, pa.table({"id": np.arange(1000),
                                                                        "vector": vectors}))
    created.create_index("vector", config=IvfPq(num_partitions=4, num_sub_vectors=2))
    return created


@pytest.mark.parametrize("prewarm_index", [True, False])
def test_index_prewarm_leaves_the_first_query_nothing_to_read(
    tmp_path: Path, prewarm_index: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data and index prewarmed: the first ANN query reads nothing of the index from storage,
    only the segment's vectors for the re-ranking (one cache miss, one read); without the index
    prewarm it reads the index too. As on object storage, where re-ranking reads a cached copy."""
    from lancedb_ray.execution import subplans

    monkeypatch.setattr(subplans, "on_object_store", lambda uri: True)
    table = _indexed(tmp_path, "t")
    snapshot = Snapshot.of(table.to_lance())
    target = DatasetRef(REF, snapshot.dataset.uri, snapshot.dataset.version, snapshot.fingerprint)
    executor = PlanExecutor("warm", Settings(storage={"root": {"uri": str(tmp_path)}}).to_plain())
    executor.prewarm(plan_count(snapshot, target, None, group_size=8))  # the data files' metadata
    if prewarm_index:
        executor.prewarm_index(target, "vector_idx")
    # A refine asked for: a lone index re-ranks only then, as in lance.
    query = QueryRequest(vector=[0.5] * 8, k=5, columns=["id"], refine_factor=1)
    plans = plan_query(snapshot, target, query, group_size=8)
    assert [p.kind for p in plans] == [SubPlanKind.INDEX_SEGMENT]
    source = executor._dataset(target)  # the dataset object the sub-plan reads through
    source.io_stats_incremental()
    misses = executor.cache_stats()["misses"]
    got = executor.execute_batch(plans)[0]
    reads = source.io_stats_incremental().read_iops
    assert executor.cache_stats()["misses"] - misses == 1
    assert (reads == 1) if prewarm_index else (reads > 1), reads
    want = table.search([0.5] * 8).select(["id"]).limit(5).refine_factor(1).to_arrow()
    # The same candidates, re-ranked on the cached copy instead of read vectors.
    assert sorted(got["id"].to_pylist()) == sorted(want["id"].to_pylist())


def test_index_prewarm_of_an_unknown_name_fails_as_embedded(tmp_path: Path) -> None:
    table = _indexed(tmp_path, "t")
    snapshot = Snapshot.of(table.to_lance())
    target = DatasetRef(REF, snapshot.dataset.uri, snapshot.dataset.version, snapshot.fingerprint)
    executor = PlanExecutor("warm", Settings(storage={"root": {"uri": str(tmp_path)}}).to_plain())
    with pytest.raises(RuntimeError, match="not found: name=nope") as want:
        table.prewarm_index("nope")
    with pytest.raises(type(want.value), match="not found: name=nope"):
        executor.prewarm_index(target, "nope")


class _NoPool:
    """A deployment whose executors the test does not start: what the query node does alone."""

    names: list[str] = []
    replicas = 1


def test_index_prewarm_of_a_small_table_warms_the_query_node(tmp_path: Path) -> None:
    """A small table's single sub-plans run on the query node: its lance session gets the index,
    and the first query on the scalar index then loads nothing more into it."""
    created = lancedb.connect(tmp_path / "db").create_table("t", _rows(0, 300))
    created.create_index("id", config=BTree())
    catalog = StorageCatalog(StorageSettings(root={"uri": str(tmp_path)}))
    connections = Connections(catalog, 60.0, LatestVersions(VersionRegistry(), 60.0))
    node = DistributedExecutor(Settings(storage={"root": {"uri": str(tmp_path)}}), connections,
                               _NoPool())  # type: ignore[arg-type]
    query = QueryRequest(filter="id = 7", k=10, columns=["id", "tag"])
    plans = node.plan(QueryTarget(REF, None), query)
    assert [(p.kind, p.cache_key) for p in plans] == [(SubPlanKind.SCAN, None)]  # on the source
    node.prewarm_index(QueryTarget(REF, None), "id_idx")
    here = node._here()  # the executor inside the query node
    loaded = here.cache_stats()["index_cache_bytes"]
    assert node.search(QueryTarget(REF, None), query).to_pylist() == \
        created.search().where("id = 7").select(["id", "tag"]).limit(10).to_arrow().to_pylist()
    assert here.cache_stats()["index_cache_bytes"] == loaded
