"""Where an index search runs: on the query node for a table on a local disk (as embedded lancedb
runs it: the executors' caches add nothing to the OS page cache there), on the executors for a
table on object storage or with ``executors.search_local_disk_indexes``. Same answers either way."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pytest
import ray
from lancedb.index import IvfPq

from lancedb_ray.execution import distributed
from lancedb_ray.execution.base import QueryTarget
from lancedb_ray.execution.distributed import DistributedExecutor
from lancedb_ray.execution.executor_actor import PlanExecutor
from lancedb_ray.execution.plan import SubPlan
from lancedb_ray.protocol import QueryRequest
from lancedb_ray.settings import Settings
from lancedb_ray.storage.catalog import StorageCatalog
from lancedb_ray.storage.connections import Connections
from lancedb_ray.storage.versions import LatestVersions, VersionRegistry
from lancedb_ray.types import TableRef

DIM = 16
REF = TableRef("db", (), "t")
QUERY = dict(k=5, nprobes=4, refine_factor=5)


class _Pool:
    """Two executors that run what they are sent in this process, and note it."""

    names = ["plan-executor-0", "plan-executor-1"]
    replicas = 1

    def __init__(self, settings: Settings) -> None:
        self.sent: list[SubPlan] = []
        self._executor = PlanExecutor("plan-executor-0", settings.to_plain())

    def route(self, partition: str) -> list[str]:
        return list(self.names)

    def handle(self, name: str) -> Any:
        return self

    @property
    def execute_batch(self) -> Any:
        return self

    def remote(self, plans: list[SubPlan]) -> Any:
        self.sent.extend(plans)
        return ray.put(self._executor.execute_batch(plans))


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("local-disk")
    vectors = np.random.default_rng(0).normal(size=(2000, DIM)).astype("float32")
    data = pa.table({"id": np.arange(2000),
                     "vector": pa.array(vectors.tolist(), pa.list_(pa.float32(), DIM))})
    table = lancedb.connect(root / "db").create_table("t", data)
    table.create_index("vector", config=IvfPq(num_partitions=4, num_sub_vectors=4))
    return root


def _query_node(root: Path, **executors: Any) -> tuple[DistributedExecutor, _Pool]:
    settings = Settings(storage={"root": {"uri": str(root)}}, executors=executors)
    catalog = StorageCatalog(settings.storage)
    connections = Connections(catalog, 0.0, LatestVersions(VersionRegistry(), 0.0))
    pool = _Pool(settings)
    return DistributedExecutor(settings, connections, pool), pool


def _ids(table: pa.Table) -> list[int]:
    return table["id"].to_pylist()


def _embedded_ids(root: Path, vector: list[float]) -> list[int]:
    table = lancedb.connect(root / "db").open_table("t")
    found = table.search(vector).limit(QUERY["k"]).nprobes(QUERY["nprobes"]) \
        .refine_factor(QUERY["refine_factor"]).to_arrow()
    return _ids(found)


def _vector(seed: int) -> list[float]:
    return np.random.default_rng(seed).normal(size=DIM).astype("float32").tolist()


def test_an_index_search_on_a_local_disk_runs_on_the_query_node(ray_cluster: None, table_dir: Path) -> None:
    executor, pool = _query_node(table_dir)
    target = QueryTarget(REF, None)
    for seed in range(5):
        vector = _vector(seed)
        answer = executor.search(target, QueryRequest(vector=vector, **QUERY))
        assert _ids(answer) == _embedded_ids(table_dir, vector)
    assert pool.sent == []  # no executor was asked
    assert "-> query-node" in executor.explain(target, QueryRequest(vector=_vector(0), **QUERY), False)


@pytest.mark.parametrize("search_local_disk_indexes", [False, True])
def test_a_lone_index_answers_with_its_own_distances_as_lancedb(
        ray_cluster: None, table_dir: Path, search_local_disk_indexes: bool) -> None:
    """Without refine_factor, lancedb ranks a fully indexed table by the index's approximate
    distances (it re-ranks only what it merges with unindexed rows): the same order, the same
    ``_distance``, wherever the search runs."""
    executor, _ = _query_node(table_dir, search_local_disk_indexes=search_local_disk_indexes)
    table = lancedb.connect(table_dir / "db").open_table("t")
    for seed in range(5):
        vector = _vector(seed)
        answer = executor.search(QueryTarget(REF, None), QueryRequest(vector=vector, k=5, nprobes=4))
        embedded = table.search(vector).limit(5).nprobes(4).to_arrow()
        assert _ids(answer) == _ids(embedded)
        assert answer["_distance"].to_pylist() == pytest.approx(embedded["_distance"].to_pylist())


def test_the_executors_search_when_told_to(ray_cluster: None, table_dir: Path) -> None:
    executor, pool = _query_node(table_dir, search_local_disk_indexes=True)
    vector = _vector(7)
    answer = executor.search(QueryTarget(REF, None), QueryRequest(vector=vector, **QUERY))
    assert _ids(answer) == _embedded_ids(table_dir, vector)
    assert [plan.kind.value for plan in pool.sent] == ["index_segment"]


def test_the_executors_search_a_table_on_object_storage(ray_cluster: None, table_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    executor, pool = _query_node(table_dir)
    monkeypatch.setattr(distributed, "on_object_store", lambda uri: True)  # as if it were a blob
    vector = _vector(8)
    answer = executor.search(QueryTarget(REF, None), QueryRequest(vector=vector, **QUERY))
    assert _ids(answer) == _embedded_ids(table_dir, vector)
    assert [plan.kind.value for plan in pool.sent] == ["index_segment"]


# In a process of its own: a process has one lance session, sized by its first user.
INDEX_CACHE_AFTER_QUERIES = textwrap.dedent("""
    import sys
    import numpy as np
    from lancedb_ray.execution.base import QueryTarget
    from lancedb_ray.execution.distributed import DistributedExecutor, ExecutorPool
    from lancedb_ray.protocol import QueryRequest
    from lancedb_ray.settings import Settings
    from lancedb_ray.storage.catalog import StorageCatalog
    from lancedb_ray.storage.connections import Connections
    from lancedb_ray.storage.session import process_session
    from lancedb_ray.storage.versions import LatestVersions, VersionRegistry
    from lancedb_ray.types import TableRef

    settings = Settings(storage={"root": {"uri": sys.argv[1]}},
                        executors={"num_executors": 2, "cache_bytes": int(sys.argv[2])})
    connections = Connections(StorageCatalog(settings.storage), 0.0, LatestVersions(VersionRegistry(), 0.0))
    query_node = DistributedExecutor(settings, connections, ExecutorPool(settings))
    for seed in range(30):  # every partition of the index, many times over
        vector = np.random.default_rng(seed).normal(size=int(sys.argv[3])).astype("float32").tolist()
        query_node.search(QueryTarget(TableRef("db", (), "t"), None),
                          QueryRequest(vector=vector, k=5, nprobes=16, refine_factor=2))
    print(process_session(0, 0).index_cache_size_bytes())
""")


def test_the_query_nodes_index_cache_is_an_executors_share_of_the_budget(tmp_path: Path) -> None:
    """Where the query node searches local indexes, their partitions are cached within half of
    ``executors.cache_bytes``, as on an executor (it had a fixed 64 MiB, too small for the index
    of a local table of about 1.4 million 384-d rows)."""
    vectors = np.random.default_rng(0).normal(size=(50_000, DIM)).astype("float32")
    data = pa.table({"id": np.arange(len(vectors)),
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM)})
    lancedb.connect(tmp_path / "db").create_table("t", data).create_index(
        "vector", config=IvfPq(num_partitions=16, num_sub_vectors=4))

    def cached_after_queries(cache_bytes: int) -> int:
        command = [sys.executable, "-c", INDEX_CACHE_AFTER_QUERIES, str(tmp_path), str(cache_bytes), str(DIM)]
        run = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        return int(run.stdout.split()[-1])

    small = 256 * 1024
    whole = cached_after_queries(Settings().executors.cache_bytes)  # the default budget holds it all
    assert whole > small // 2
    assert cached_after_queries(small) <= small // 2
