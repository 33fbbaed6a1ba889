"""The query node's fixed cost: a warm query on an unchanged table asks storage nothing.

The query node reads Azurite through a proxy that counts HTTP requests; the
writer reaches the same container directly (another replica, say) and
publishes its versions in the shared version registry, as the service does.
No Ray needed: planning is the query node's part of a query.
"""

from __future__ import annotations

import pickle
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from lancedb.index import IvfPq

from lancedb_ray.execution import plan as plan_module
from lancedb_ray.execution.base import QueryTarget
from lancedb_ray.execution.distributed import DistributedExecutor, ExecutorPool
from lancedb_ray.execution.plan import SubPlanKind
from lancedb_ray.protocol import QueryRequest
from lancedb_ray.settings import CredentialMode, Settings, StorageLocation, StorageSettings
from lancedb_ray.storage.catalog import StorageCatalog
from lancedb_ray.storage.connections import Connections
from lancedb_ray.storage.versions import LatestVersions, VersionRegistry
from lancedb_ray.types import TableRef
from tests.support.azurite import PROVIDER, Azurite
from tests.support.proxy import CountingProxy

DIM = 8
REF = TableRef("db", (), "t")
# Long enough that the registry's entries stay trusted for the whole test on a slow machine;
# the bound for outside writers is tested on its own below.
TRUSTED_SECONDS = 600.0


def _rows(start: int, count: int) -> pa.Table:
    vectors = np.random.default_rng(start).normal(size=(count, DIM)).astype("float32")
    return pa.table({"id": np.arange(start, start + count),
                     "vector": pa.array(vectors.tolist(), pa.list_(pa.float32(), DIM))})


def _connections(location: StorageLocation, registry: VersionRegistry, seconds: float) -> Connections:
    catalog = StorageCatalog(StorageSettings(root=location))
    return Connections(catalog, seconds, LatestVersions(registry, seconds))


def _query_node(location: StorageLocation, registry: VersionRegistry, seconds: float
                ) -> DistributedExecutor:
    settings = Settings(storage={"root": location}, executors={"fragments_per_group": 2})
    connections = _connections(location, registry, seconds)
    return DistributedExecutor(settings, connections, ExecutorPool(settings))


def _write(writer: Connections, data: pa.Table) -> int:
    """Append as the service's write path does: commit, then publish before acknowledging."""
    table = writer.table(REF)
    table.add(data)
    writer.committed(REF, table.version)
    return table.version


@pytest.fixture
def proxy(azurite: Azurite) -> Iterator[CountingProxy]:
    counting = CountingProxy(azurite.port)
    yield counting
    counting.close()


QUERIES = [
    QueryRequest(vector=[0.1] * DIM, k=5),
    QueryRequest(vector=[0.1] * DIM, k=5, filter="id > 10", prefilter=True),
    QueryRequest(vector=[0.2] * DIM, k=3, bypass_vector_index=True),
    QueryRequest(filter="id % 7 = 0", limit=20),
]


@pytest.mark.azure
def test_a_warm_query_makes_no_storage_request(azurite: Azurite, proxy: CountingProxy,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    container = f"warm{uuid.uuid4().hex[:8]}"
    # The emulator's published key: no secret, so the executors need none shared with them.
    direct = azurite.location(PROVIDER, container, prefix="dbs", credential=CredentialMode.AZURITE)
    counted = azurite.location(PROVIDER, container, prefix="dbs", credential=CredentialMode.AZURITE,
                               endpoint=proxy.endpoint(PROVIDER))
    registry = VersionRegistry()
    writer = _connections(direct, registry, TRUSTED_SECONDS)
    created = writer.database("db").create_table("t", _rows(0, 300))
    writer.committed(REF, created.version, recreated=True)
    for start in range(300, 600, 100):
        _write(writer, _rows(start, 100))
    table = writer.table(REF)
    table.create_index("vector", config=IvfPq(distance_type="l2", num_partitions=2, num_sub_vectors=2))
    writer.committed(REF, table.version)
    for start in range(600, 800, 50):  # unindexed fragments: flat sub-plans too
        version = _write(writer, _rows(start, 50))

    node = _query_node(counted, registry, TRUSTED_SECONDS)
    target = QueryTarget(REF, None)
    cold = [node.plan(target, q) for q in QUERIES]
    assert proxy.requests > 0, "the proxy sees the query node's storage requests"
    kinds = {p.kind for plans in cold for p in plans}
    assert {SubPlanKind.INDEX_SEGMENT, SubPlanKind.FLAT, SubPlanKind.SCAN} <= kinds
    assert all(p.dataset.version == version for plans in cold for p in plans)
    # Sub-plans cross Ray's control plane: the storage key stays with the executors' own settings.
    assert azurite.provider.key.encode() not in pickle.dumps(cold)

    # Warm: no storage request, and planning walks no fragment metadata again.
    hashed: list[int] = []
    real_key = plan_module.content_key
    monkeypatch.setattr(plan_module, "content_key", lambda *a: hashed.append(1) or real_key(*a))
    before = proxy.requests
    for _ in range(5):
        assert [node.plan(target, q) for q in QUERIES] == cold
    assert proxy.requests - before == 0
    assert hashed == []

    # A write through another replica is read by the next query, with no wait.
    newer = _write(writer, _rows(800, 10))
    assert {p.dataset.version for p in node.plan(target, QUERIES[3])} == {newer}
    before = proxy.requests
    node.plan(target, QUERIES[3])
    assert proxy.requests - before == 0


def test_outside_writes_show_within_the_interval(tmp_path: Path) -> None:
    location = StorageLocation(uri=str(tmp_path))
    registry = VersionRegistry()
    seconds = 0.5
    node = _query_node(location, registry, seconds)
    outside = lancedb.connect(tmp_path / "db").create_table("t", _rows(0, 20))
    target = QueryTarget(REF, None)
    assert {p.dataset.version for p in node.plan(target, QueryRequest())} == {outside.version}
    outside.add(_rows(20, 5))  # not through the service: nothing is published
    deadline = time.monotonic() + seconds + 5
    while {p.dataset.version for p in node.plan(target, QueryRequest())} != {outside.version}:
        assert time.monotonic() < deadline, "an outside write stayed invisible past the interval"
        time.sleep(0.05)


def test_a_table_recreated_outside_is_read_anew(tmp_path: Path) -> None:
    seconds = 0.3
    node = _query_node(StorageLocation(uri=str(tmp_path)), VersionRegistry(), seconds)
    outside = lancedb.connect(tmp_path / "db")
    first = outside.create_table("t", _rows(0, 20))
    for start in (20, 40, 60):
        first.add(_rows(start, 5))
    target = QueryTarget(REF, None)
    assert {p.dataset.version for p in node.plan(target, QueryRequest())} == {4}
    outside.drop_table("t")
    outside.create_table("t", _rows(100, 3))  # version 1 again: storage went backwards
    deadline = time.monotonic() + seconds + 5
    while (plans := node.plan(target, QueryRequest())) and plans[0].dataset.version != 1:
        assert time.monotonic() < deadline, "the re-created table was never read"
        time.sleep(0.05)
    assert len(plans) == 1 and plans[0].fragment_ids == (0,)


def test_registry_versions_only_move_forward_within_a_generation() -> None:
    registry = VersionRegistry()
    first = registry.publish("k", 3, recreated=True)
    assert registry.publish("k", 2).version == 3, "a late observer never moves a table back"
    assert registry.publish("k", 5).version == 5
    dropped = registry.publish("k", 0, recreated=True)
    assert (dropped.version, dropped.generation) == (0, first.generation + 1)
    assert registry.publish("k", 1, recreated=True).version == 1
    seen = registry.publish("k", 4)
    assert registry.publish("k", 2, seen=registry.publish("k", 5)).version == 2, "nothing since: recreated"
    assert registry.get("k").generation == seen.generation + 1
    stale = registry.get("k")
    registry.publish("k", 3)  # a commit after the observer read the registry
    assert registry.publish("k", 1, seen=stale).version == 3, "a racing read never moves it back"
