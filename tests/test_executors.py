"""The plan executors behind the live service: distributed answers, consistency, fail-over."""

from __future__ import annotations

import os
import signal
import threading
import time

import lancedb
import numpy as np
import pyarrow as pa
import pytest
import ray

from tests.support.service import FIXED_LAYOUT_DATABASES, INDEXED, LiveService
from tests.support.waiting import wait_for

DIM = 16
DATABASE = f"{FIXED_LAYOUT_DATABASES[:-1]}executors"
NAMESPACE = "lancedb-ray"


def _rows(rng: np.random.Generator, start: int, count: int) -> pa.Table:
    centers = rng.normal(size=(8, DIM)) * 4
    vectors = centers[rng.integers(0, 8, count)] + rng.normal(size=(count, DIM))
    return pa.table({
        "id": np.arange(start, start + count),
        "group": [f"g{i % 4}" for i in range(start, start + count)],
        "vector": pa.array(vectors.astype("float32").tolist(), pa.list_(pa.float32(), DIM)),
    })


@pytest.fixture(scope="module")
def tables(live_service: LiveService):
    """A table with an index and unindexed appends, through the service and embedded.

    The embedded handle opens the service's own storage, so both search the same
    index (IVF training is randomised: two builds would not be comparable).
    """
    rng = np.random.default_rng(11)
    # A database the agent does not compact: the fixture spreads buckets over both executors.
    remote = live_service.connect(DATABASE).create_table("t", _rows(rng, 0, 1500), mode="overwrite")
    for i in range(3):
        remote.add(_rows(rng, 1500 + i * 100, 100))
    remote.create_index(metric="l2", vector_column_name="vector", num_partitions=4,
                        num_sub_vectors=4, wait_timeout=INDEXED)
    for i in range(3, 5):
        remote.add(_rows(rng, 1500 + i * 100, 100))
    _until_both_executors_own_buckets(remote, rng)
    embedded = lancedb.connect(live_service.root / DATABASE).open_table("t")
    return remote, embedded


def _until_both_executors_own_buckets(remote, rng: np.random.Generator) -> None:
    """Rendezvous hashing over this run's table path decides which executor owns each bucket of
    two fragments; with few buckets one executor may own none (the fail-over tests then had
    nothing to take away from it). Append buckets until a flat search reaches both."""
    q = _queries(1)[0]
    for start in range(2000, 2000 + 20 * 200, 200):
        before = [_stats(f"plan-executor-{i}") for i in range(2)]
        remote.search(q).bypass_vector_index().limit(5).to_arrow()
        after = [_stats(f"plan-executor-{i}") for i in range(2)]
        if all(a["hits"] + a["misses"] > b["hits"] + b["misses"] for a, b in zip(after, before, strict=True)):
            return
        remote.add(_rows(rng, start, 100))
        remote.add(_rows(rng, start + 100, 100))
    raise AssertionError("20 more buckets and still one executor owns none of them")


def _queries(count: int) -> np.ndarray:
    return np.random.default_rng(5).normal(size=(count, DIM)).astype("float32") * 2


def test_exact_search_identical_to_embedded(tables) -> None:
    remote, embedded = tables
    for q in _queries(10):
        got = remote.search(q).bypass_vector_index().limit(10).with_row_id(True).to_arrow()
        want = embedded.search(q).bypass_vector_index().limit(10).with_row_id(True).to_arrow()
        assert got["id"].to_pylist() == want["id"].to_pylist()
        assert got["_rowid"].to_pylist() == want["_rowid"].to_pylist()
        np.testing.assert_allclose(got["_distance"].to_numpy(), want["_distance"].to_numpy(),
                                   rtol=1e-6)


def test_indexed_recall_matches_embedded(tables) -> None:
    remote, embedded = tables
    # The agent may add index segments or compact meanwhile: compare one version.
    version = remote.version
    remote.checkout(version)
    embedded.checkout(version)
    recalls = {"remote": [], "embedded": []}
    for q in _queries(30):
        truth = set(embedded.search(q).bypass_vector_index().limit(10).to_arrow()["id"].to_pylist())
        for name, table in (("remote", remote), ("embedded", embedded)):
            found = table.search(q).nprobes(2).refine_factor(2).limit(10).to_arrow()["id"]
            recalls[name].append(len(truth & set(found.to_pylist())) / 10)
    remote.checkout_latest()
    embedded.checkout_latest()
    assert abs(np.mean(recalls["remote"]) - np.mean(recalls["embedded"])) <= 0.01


@pytest.mark.parametrize("prefilter", [True, False])
def test_filters_projections_offsets_match(tables, prefilter: bool) -> None:
    remote, embedded = tables
    q = _queries(1)[0]

    def run(table):
        return (table.search(q).where("group = 'g1'", prefilter=prefilter)
                .select({"id": "id", "twice": "id * 2"}).offset(3).limit(7)
                .bypass_vector_index().to_arrow())

    got, want = run(remote), run(embedded)
    assert got.schema.names == want.schema.names
    assert got["id"].to_pylist() == want["id"].to_pylist()
    assert got["twice"].to_pylist() == want["twice"].to_pylist()


def test_scans_counts_and_versions_match(tables) -> None:
    remote, embedded = tables
    for table in (remote, embedded):
        table.checkout(3)
    try:
        assert remote.count_rows("group = 'g2'") == embedded.count_rows("group = 'g2'")
        got = remote.search().where("id % 11 = 0").select(["id"]).limit(30).to_arrow()
        want = embedded.search().where("id % 11 = 0").select(["id"]).limit(30).to_arrow()
        assert got.to_pydict() == want.to_pydict()
    finally:
        remote.checkout_latest()
        embedded.checkout_latest()
    assert remote.count_rows() == embedded.count_rows() >= 2000  # more if buckets were added


def test_read_your_writes_across_replicas(live_service: LiveService) -> None:
    """Each write, acknowledged by one replica, is seen by the next query on any replica."""
    rng = np.random.default_rng(3)
    live_service.connect("ryw").create_table("t", _rows(rng, 0, 10), mode="overwrite")
    for i in range(30):
        # New connections: the proxy spreads requests over both query node replicas.
        live_service.connect("ryw").open_table("t").add(_rows(rng, 10 + i, 1))
        reader = live_service.connect("ryw").open_table("t")
        assert reader.count_rows() == 11 + i
        assert reader.search().where(f"id = {10 + i}").to_arrow().num_rows == 1


def test_outside_writer_becomes_visible(live_service: LiveService) -> None:
    db = live_service.connect("outside")
    rng = np.random.default_rng(4)
    table = db.create_table("t", _rows(rng, 0, 20), mode="overwrite")
    direct = lancedb.connect(live_service.root / "outside").open_table("t")
    direct.add(_rows(rng, 20, 5))
    wait_for(lambda: table.count_rows() == 25, live_service_staleness(live_service) + 5,
             "an outside write to become visible", interval_s=0.2)


def live_service_staleness(live_service: LiveService) -> float:
    return float(live_service.settings["server"].get("read_consistency_seconds", 0.0))


def _stats(name: str) -> dict:
    return ray.get(ray.get_actor(name, namespace=NAMESPACE).cache_stats.remote())


def _stats_once_back(name: str) -> dict | None:
    """The executor's cache statistics, or None while it restarts."""
    try:
        return _stats(name)
    except Exception:  # noqa: BLE001 - still restarting
        return None


def test_cache_serves_repeated_queries(tables) -> None:
    remote, _ = tables
    q = _queries(1)[0]
    remote.search(q).bypass_vector_index().limit(5).to_arrow()
    before = [_stats(f"plan-executor-{i}") for i in range(2)]
    for _ in range(5):
        remote.search(q).bypass_vector_index().limit(5).to_arrow()
    after = [_stats(f"plan-executor-{i}") for i in range(2)]
    assert sum(a["misses"] for a in after) == sum(b["misses"] for b in before)
    assert sum(a["hits"] for a in after) > sum(b["hits"] for b in before)
    assert all(a["entries"] > 0 for a in after), "both executors own part of the table"


def test_killing_an_executor_loses_no_query(tables) -> None:
    remote, embedded = tables
    queries = _queries(40)
    want = [embedded.search(q).bypass_vector_index().limit(5).to_arrow()["id"].to_pylist()
            for q in queries]
    answers: list[list[int]] = []
    errors: list[BaseException] = []

    def load() -> None:
        for q in queries:
            try:
                answers.append(remote.search(q).bypass_vector_index().limit(5)
                               .to_arrow()["id"].to_pylist())
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    worker = threading.Thread(target=load)
    worker.start()
    wait_for(lambda: answers or errors, 60, "the load's first answer", interval_s=0.02)  # killed mid-load
    ray.kill(ray.get_actor("plan-executor-0", namespace=NAMESPACE), no_restart=False)
    worker.join(timeout=300)
    assert not errors
    assert answers == want
    # The executor comes back with an empty cache and refills it on the next queries.
    stats = wait_for(lambda: _stats_once_back("plan-executor-0"), 60, "plan-executor-0 to restart")
    # Once it answers again (a silent executor is tried last for a few seconds), queries refill it.
    deadline = time.monotonic() + 90
    while _stats("plan-executor-0")["entries"] == 0 and stats["entries"] == 0:
        assert time.monotonic() < deadline, (
            "the restarted executor never got its partitions back: "
            f"{[_stats(f'plan-executor-{i}') for i in range(2)]}")
        for q in queries[:5]:
            remote.search(q).bypass_vector_index().limit(5).to_arrow()


def test_a_frozen_executor_is_failed_over(tables) -> None:
    """An executor that stops answering (its node lost, its process frozen) is given up on after a
    ping, not after the sub-plan timeout: the queries still get the right answers."""
    remote, embedded = tables
    queries = _queries(4)
    want = [embedded.search(q).bypass_vector_index().limit(5).to_arrow()["id"].to_pylist()
            for q in queries]
    victim = ray.get_actor("plan-executor-0", namespace=NAMESPACE)
    pid = ray.get(victim.__ray_call__.remote(lambda _self: os.getpid()))
    os.kill(pid, signal.SIGSTOP)
    try:
        got = [remote.search(q).bypass_vector_index().limit(5).to_arrow()["id"].to_pylist()
               for q in queries]
    finally:
        os.kill(pid, signal.SIGCONT)
    assert got == want


def test_with_every_executor_frozen_the_query_node_answers(tables) -> None:
    """The query node is the last resort: when no executor of a sub-plan answers, it runs it."""
    remote, embedded = tables
    queries = _queries(3)
    want = [embedded.search(q).bypass_vector_index().limit(5).to_arrow()["id"].to_pylist()
            for q in queries]
    want.append(embedded.count_rows("group = 'g2'"))
    pids = [ray.get(ray.get_actor(f"plan-executor-{i}", namespace=NAMESPACE)
                    .__ray_call__.remote(lambda _self: os.getpid())) for i in range(2)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        got: list = [remote.search(q).bypass_vector_index().limit(5).to_arrow()["id"].to_pylist()
                     for q in queries]
        got.append(remote.count_rows("group = 'g2'"))
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert got == want


def test_prewarm_loads_a_table_before_its_first_query(live_service: LiveService) -> None:
    from lancedb_ray.execution.distributed import DistributedExecutor, ExecutorPool
    from lancedb_ray.settings import Settings
    from lancedb_ray.storage.catalog import StorageCatalog
    from lancedb_ray.storage.connections import Connections

    rng = np.random.default_rng(8)
    remote = live_service.connect("prewarmed").create_table("t", _rows(rng, 0, 200),
                                                            mode="overwrite")
    for i in range(4):
        remote.add(_rows(rng, 200 + i * 50, 50))
    settings = Settings.load(None, **live_service.settings)
    connections = Connections(StorageCatalog(settings.storage), 0)
    DistributedExecutor(settings, connections, ExecutorPool(settings)).prewarm(["prewarmed/t"])
    before = [_stats(f"plan-executor-{i}")["misses"] for i in range(2)]
    assert remote.search().where("id >= 0").limit(None).to_arrow().num_rows == 400
    assert remote.count_rows("group = 'g1'") == 100
    assert [_stats(f"plan-executor-{i}")["misses"] for i in range(2)] == before


def test_cache_metrics_reach_prometheus(tables) -> None:
    import urllib.request

    remote, _ = tables
    remote.search(_queries(1)[0]).bypass_vector_index().limit(5).to_arrow()
    port = ray.nodes()[0]["MetricsExportPort"]
    wanted = ["ray_lancedb_ray_cache_hits_total{", "ray_lancedb_ray_cache_misses_total{",
              "ray_lancedb_ray_cache_bytes{", 'executor="plan-executor-']

    def exported() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        return all(w in text for w in wanted)

    wait_for(exported, 120, f"Ray's metrics endpoint to export {wanted}", interval_s=2)
