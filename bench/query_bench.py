"""Query benchmark: the service over HTTP side by side with embedded lancedb, on three storages.

One command (``.venv/bin/python bench/query_bench.py``) builds a clustered
table (default 200,000 x 384) once through the service and indexes it there;
embedded lancedb then opens the very same directory or blob prefix, so both
search one index and their recall is comparable. Storage settings:

- a local directory;
- Azurite (Azure Blob emulator), reached through a counting TCP proxy;
- the same Azurite behind a proxy that adds 10 ms to every request (the
  first-byte latency of real Azure Blob), started by the benchmark itself.

For each it reports recall@10 against exact search, p50/p99 latency, QPS at
1 and N client threads, the first query after a restart (executors killed /
table reopened), and storage requests per warm query (counted by the proxy, so
n/a on a local directory), as a markdown table and a PNG under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")  # the service's default ingress

import lancedb  # noqa: E402

from lancedb_ray.settings import Settings  # noqa: E402

API_KEY = "bench-key"
NAMESPACE = "lancedb-ray"


@dataclass
class Result:
    storage: str
    system: str
    recall: float
    p50_ms: float
    p99_ms: float
    qps_1: float
    qps_n: float
    threads: int
    cold_ms: float
    requests_per_query: float | None  # storage requests per warm query (None: not countable)
    # ... when the same queries run again: what they read is in every cache it can be in.
    requests_repeated: float | None


def clustered_vectors(rows: int, dim: int, seed: int) -> np.ndarray:
    """Gaussian clusters of different sizes and spreads, like real embeddings."""
    rng = np.random.default_rng(seed)
    clusters = max(16, rows // 1000)
    centers = rng.normal(size=(clusters, dim)).astype("float32")
    weights = rng.pareto(1.5, clusters) + 1
    labels = rng.choice(clusters, size=rows, p=weights / weights.sum())
    spread = rng.uniform(0.2, 0.6, clusters).astype("float32")[labels, None]
    vectors = centers[labels] + rng.normal(size=(rows, dim)).astype("float32") * spread
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def make_table(vectors: np.ndarray) -> pa.Table:
    dim = vectors.shape[1]
    return pa.table({
        "id": np.arange(len(vectors)),
        "category": pa.array([f"c{i % 10}" for i in range(len(vectors))]),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
    })


def load(table, data: pa.Table, batch: int = 50_000) -> None:
    for start in range(0, data.num_rows, batch):
        table.add(data.slice(start, batch))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def run_system(storage: str, name: str, open_table, queries: np.ndarray, truth: list[set[int]],
               threads: int, args: argparse.Namespace, cold, requests=None) -> Result:
    """``requests``: a callable giving the storage requests so far (None where not countable)."""
    table = open_table()

    def search(t, q):
        return t.search(q).nprobes(args.nprobes).refine_factor(args.refine).limit(10).select(["id"])

    cold_ms = cold(lambda: search(table, queries[0]).to_arrow())
    for q in queries[:20]:  # warm up
        search(table, q).to_arrow()
    before = requests() if requests else 0
    latencies, recalls = [], []
    for q, want in zip(queries, truth, strict=True):
        started = time.perf_counter()
        got = search(table, q).to_arrow()["id"].to_pylist()
        latencies.append((time.perf_counter() - started) * 1000)
        recalls.append(len(want & set(got)) / 10)
    per_query = (requests() - before) / len(queries) if requests else None
    repeated = None
    if requests:
        before = requests()
        for q in queries:
            search(table, q).to_arrow()
        repeated = (requests() - before) / len(queries)
    elapsed = sum(latencies) / 1000
    handles = [open_table() for _ in range(threads)]
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: search(handles[i % threads], queries[i]).to_arrow(),
                      range(len(queries))))
    parallel = time.perf_counter() - start
    result = Result(storage, name, float(np.mean(recalls)), statistics.median(latencies),
                    float(np.percentile(latencies, 99)), len(queries) / elapsed,
                    len(queries) / parallel, threads, cold_ms, per_query, repeated)
    print(f"  {storage} / {name}: p50 {result.p50_ms:.2f} ms, recall {result.recall:.3f}", flush=True)
    return result


def set_own_instance_env() -> None:
    """As `lancedb-ray serve` sets up a Ray instance of its own: Serve's machine-wide ports apart
    from any other instance here, and no outer load balancer to wait for when a replica stops."""
    from lancedb_ray.serve_ports import ports_apart

    os.environ.update(ports_apart(os.environ))
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")


def service_settings(storage: dict, state: Path, namespace: str, **executors: Any) -> Settings:
    return Settings(
        server={"api_keys": [API_KEY], "num_replicas": 2, "num_cpus": 0.25},
        storage=storage,
        executors={"num_executors": 2, "num_cpus": 0.25, "spill_dir": str(state / "spill"),
                   **executors},
        events={"embedded": {"directory": str(state / "events")},
                "outbox_directory": str(state / "outbox")},
        agent={"enabled": False, "jobs_directory": str(state / "jobs")},
        ray={"namespace": namespace},
    )


def start_service(settings: Settings, name: str, base: str, prefix: str) -> None:
    """Serve the app and wait until its route answers; its secrets (an account key) must be in
    the secrets file already (``tests.support.secrets.shared``): Ray's processes read them from
    there, never from Ray."""
    from ray import serve

    from lancedb_ray.api.app import build_app
    from tests.support.service import wait_routed

    serve.run(build_app({"settings": settings.to_plain()}), name=name, route_prefix=prefix)
    # Serve's ingress takes a new route a little after serve.run returns (see wait_routed).
    wait_routed(base + prefix, API_KEY)


def restart_executors(namespace: str):
    """Kill every plan executor; each restarts with an empty cache (a cold start)."""
    import ray

    def cold(first_query) -> float:
        for i in range(2):
            ray.kill(ray.get_actor(f"plan-executor-{i}", namespace=namespace), no_restart=False)
        deadline = time.monotonic() + 60
        while True:
            try:
                for i in range(2):
                    ray.get(ray.get_actor(f"plan-executor-{i}", namespace=namespace)
                            .ready.remote())
                break
            except Exception:  # noqa: BLE001 - still restarting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return timed(first_query)

    return cold


def write_report(results: list[Result], args: argparse.Namespace, out: Path) -> str:
    lines = [
        f"# Query benchmark: {args.rows:,} x {args.dim} vectors, {args.queries} queries, "
        f"IVF_PQ ({args.partitions} partitions x {args.dim // 8} sub-vectors), "
        f"nprobes={args.nprobes}, refine_factor={args.refine}",
        "",
        "| storage | system | recall@10 | p50 ms | p99 ms | QPS (1) | QPS (N threads) "
        "| first query after restart ms | storage requests per warm query "
        "| ... the same queries again |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        requests, repeated = ("n/a" if n is None else f"{n:.2f}"
                              for n in (r.requests_per_query, r.requests_repeated))
        lines.append(f"| {r.storage} | {r.system} | {r.recall:.3f} | {r.p50_ms:.2f} | "
                     f"{r.p99_ms:.2f} | {r.qps_1:.0f} | {r.qps_n:.0f} ({r.threads}) | "
                     f"{r.cold_ms:.1f} | {requests} | {repeated} |")
    report = "\n".join(lines) + "\n"
    name = f"query_bench_{args.rows}" if args.rows != 200_000 else "query_bench"
    (out / f"{name}.md").write_text(report)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    labels = [f"{r.storage}\n{r.system}" for r in results]
    axes[0].bar(labels, [r.p50_ms for r in results], label="p50")
    axes[0].bar(labels, [r.p99_ms - r.p50_ms for r in results], bottom=[r.p50_ms for r in results],
                alpha=0.5, label="p99")
    axes[0].set_ylabel("latency (ms)")
    axes[0].legend()
    axes[1].bar(labels, [r.qps_n for r in results])
    axes[1].set_ylabel("QPS, concurrent")
    axes[2].bar(labels, [r.cold_ms for r in results])
    axes[2].set_ylabel("first query after restart (ms)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30, labelsize=7)
    fig.suptitle(f"{args.rows:,} x {args.dim}, recall@10: "
                 + ", ".join(f"{r.storage}/{r.system} {r.recall:.2f}" for r in results), fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=100)
    return report


def stop_service(name: str, namespace: str) -> None:
    """Free the machine for the next storage setting: the app and its detached actors."""
    import ray
    from ray import serve

    serve.delete(name)
    for actor in [f"plan-executor-{i}" for i in range(2)] + ["version-registry"]:
        try:
            ray.kill(ray.get_actor(actor, namespace=namespace), no_restart=True)
        except ValueError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=256)
    parser.add_argument("--nprobes", type=int, default=20)
    parser.add_argument("--refine", type=int, default=10)
    parser.add_argument("--delay-ms", type=float, default=10.0, help="the slow proxy's added latency")
    parser.add_argument("--no-azure", action="store_true", help="local directory only")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)

    from tests.support.secrets import secrets_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lancedb-ray-bench-"))
    vectors = clustered_vectors(args.rows, args.dim, seed=1)
    data = make_table(vectors)
    # Queries near the data (held-out perturbations of stored vectors), as real queries are.
    rng = np.random.default_rng(2)
    queries = vectors[rng.choice(len(vectors), args.queries, replace=False)]
    queries = queries + rng.normal(size=queries.shape).astype("float32") * 0.02
    # As a deployment does, every Ray process reads the secrets (Azurite's account key) from a file.
    with secrets_file(work / "secrets.yaml"):
        results = measure(args, work, data, queries)
    print(write_report(results, args, out))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def measure(args: argparse.Namespace, work: Path, data: pa.Table, queries: np.ndarray) -> list[Result]:
    """Every system on every storage setting, in one Ray cluster of the benchmark's own."""
    import ray

    from tests.support.proxy import CountingProxy
    from tests.support.secrets import shared

    # address="local": a cluster of its own, even where another (`ray start`) runs on this machine.
    set_own_instance_env()
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    from ray import serve

    port = int(os.environ.get("BENCH_PORT", "8765"))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"

    def remote(prefix: str):
        return lambda: lancedb.connect("db://bench", api_key=API_KEY,
                                       host_override=base + prefix).open_table("vectors")

    def build(prefix: str) -> None:
        print(f"building {args.rows:,} x {args.dim} through the service at {prefix} ...", flush=True)
        table = lancedb.connect("db://bench", api_key=API_KEY, host_override=base + prefix) \
            .create_table("vectors", data.slice(0, 1), mode="overwrite")
        table.delete("true")
        load(table, data, batch=20_000)
        table.create_index(metric="cosine", vector_column_name="vector",
                           num_partitions=args.partitions, num_sub_vectors=args.dim // 8,
                           wait_timeout=timedelta(minutes=30))  # the build is a job of the agent

    results: list[Result] = []
    # -- local directory --------------------------------------------------------------------
    start_service(service_settings({"root": {"uri": str(work / "local")}}, work / "state-local",
                                   NAMESPACE), "local", base, "/local")
    build("/local")

    def embedded_local():
        return lancedb.connect(work / "local" / "bench").open_table("vectors")

    exact = embedded_local()
    truth = [set(exact.search(q).bypass_vector_index().limit(10).select(["id"]).to_arrow()["id"]
                 .to_pylist()) for q in queries]

    def reopen(open_table):
        def cold(first_query) -> float:
            return timed(lambda: open_table().search(queries[0]).limit(10).to_arrow())
        return cold

    results.append(run_system("local dir", "embedded lancedb", embedded_local, queries, truth, 4,
                              args, reopen(embedded_local)))
    results.append(run_system("local dir", "service", remote("/local"), queries, truth, 8, args,
                              restart_executors(NAMESPACE)))
    stop_service("local", NAMESPACE)
    # On a local disk the query node runs index searches itself: the same table with the
    # executors searching it shows what that hop would cost.
    start_service(service_settings({"root": {"uri": str(work / "local")}}, work / "state-local-hop",
                                   NAMESPACE, search_local_disk_indexes=True),
                  "local-hop", base, "/local-hop")
    results.append(run_system("local dir", "service, executors search", remote("/local-hop"),
                              queries, truth, 8, args, restart_executors(NAMESPACE)))
    stop_service("local-hop", NAMESPACE)

    azurite = None
    if not args.no_azure:
        from lancedb_ray.settings import StorageSettings
        from lancedb_ray.storage.catalog import StorageCatalog
        from tests.support.azurite import PROVIDER, Azurite, free_port

        azurite = Azurite(free_port(), None, work / "azurite.log")
        azurite.start()
        for storage, delay, namespace in (("Azurite", 0.0, "lancedb-ray-azure"),
                                          (f"Azurite + {args.delay_ms:g} ms proxy",
                                           args.delay_ms / 1000, "lancedb-ray-slow")):
            proxy = CountingProxy(azurite.port, delay_s=delay)
            root = azurite.location(PROVIDER, "bench", prefix="dbs", endpoint=proxy.endpoint(PROVIDER))
            app = namespace.removeprefix("lancedb-ray-")
            settings = service_settings({"root": root.model_dump()}, work / f"state-{app}", namespace)
            with shared(settings):  # for as long as the app runs: restarted executors read it too
                start_service(settings, app, base, f"/{app}")
                if delay == 0.0:
                    build(f"/{app}")  # once: the slow setting reads the same blobs
                where = StorageCatalog(StorageSettings(root=root)).locate("bench")

                def embedded_blob(where=where):
                    return lancedb.connect(where.uri, storage_options=where.storage_options) \
                        .open_table("vectors")

                counter = lambda proxy=proxy: proxy.requests  # noqa: E731
                results.append(run_system(storage, "embedded lancedb", embedded_blob, queries, truth,
                                          4, args, reopen(embedded_blob), counter))
                results.append(run_system(storage, "service", remote(f"/{app}"), queries, truth, 8,
                                          args, restart_executors(namespace), counter))
                stop_service(app, namespace)
            proxy.close()
    serve.shutdown()
    ray.shutdown()
    if azurite is not None:
        azurite.stop()
    return results


if __name__ == "__main__":
    sys.exit(main())
