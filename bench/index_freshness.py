"""Index freshness benchmark: how soon the agent indexes new rows, and whether reads go stale.

One command (``.venv/bin/python bench/index_freshness.py``) starts a local Ray
with the service (query nodes, plan executors, the Lance agent on the embedded
bus) on a temporary directory, on DEFAULT settings (only the storage root is
given, plus whatever ``--debounce`` / ``--compact-min-fragments`` /
``--ray-cpus`` name explicitly), loads an IVF_PQ-indexed table (default
200,000 x 384) through the official lancedb client, then:

1. **Freshness.** ``--trials`` times: append ``--append`` rows (default
   10,000) and poll ``index_stats("vector_idx").num_unindexed_rows`` until it
   reads 0, with no other client action. Reports every trial and the p50.
2. **Stale reads.** ``--iterations`` (default 1,000) times: write one row,
   then immediately read it back by filter and by vector search (top-1 of
   its own vector); a read that misses the acknowledged row is stale. The
   agent compacts and indexes the table underneath meanwhile.

Results go to ``bench/results/index_freshness.{md,json,png}``. Use ``--rows``
for a quicker run at a smaller size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import lancedb  # noqa: E402

API_KEY = "lancedb-ray-dev-key"  # the default key: nothing is configured
RESULTS = REPO / "bench" / "results"


def vectors(count: int, dim: int, seed: int) -> np.ndarray:
    """Clustered unit vectors, like embeddings."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(64, dim)).astype("float32")
    data = centers[rng.integers(0, 64, count)] + rng.normal(size=(count, dim)).astype("float32") * 0.4
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def batch(start: int, count: int, dim: int) -> pa.Table:
    data = vectors(count, dim, seed=start)
    return pa.table({
        "id": np.arange(start, start + count, dtype=np.int64),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(data.ravel()), dim),
    })


def start_service(root: Path, port: int, args: argparse.Namespace) -> str:
    import ray
    from ray import serve

    from lancedb_ray.api.app import build_app
    from lancedb_ray.settings import Settings

    ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False,
             namespace="lancedb-ray-bench")
    agent = {name: value for name, value in (("debounce_seconds", args.debounce),
                                             ("compact_min_fragments", args.compact_min_fragments))
             if value is not None}
    settings = Settings.load(storage={"root": {"uri": str(root / "data")}}, agent=agent)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"settings": settings.to_plain()}), name="lancedb", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def wait_indexed(table: Any, timeout_s: float) -> float:
    started = time.perf_counter()
    while True:
        if table.index_stats("vector_idx").num_unindexed_rows == 0:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"rows still unindexed after {timeout_s}s")
        time.sleep(0.1)


def freshness(table: Any, args: argparse.Namespace, next_id: int) -> tuple[list[float], int]:
    seconds = []
    for trial in range(args.trials):
        table.add(batch(next_id, args.append, args.dim))
        next_id += args.append
        unindexed = table.index_stats("vector_idx").num_unindexed_rows
        took = wait_indexed(table, args.timeout)
        seconds.append(took)
        print(f"  trial {trial + 1}: {unindexed} unindexed after the append, 0 after {took:.1f}s",
              flush=True)
    return seconds, next_id


def stale_reads(table: Any, args: argparse.Namespace, next_id: int) -> dict[str, Any]:
    stale_filter = stale_vector = write_errors = 0
    first_error = None
    latencies = []
    for i in range(args.iterations):
        row = batch(next_id, 1, args.dim)
        began = time.perf_counter()
        try:
            table.add(row)
        except Exception as exc:  # noqa: BLE001 - counted and reported, the loop goes on
            write_errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
            next_id += 1
            continue
        by_filter = table.search().where(f"id = {next_id}").limit(1).to_arrow()["id"].to_pylist()
        query = row["vector"][0].as_py()
        by_vector = table.search(query).refine_factor(20).limit(1).to_arrow()["id"].to_pylist()
        latencies.append(time.perf_counter() - began)
        stale_filter += by_filter != [next_id]
        stale_vector += by_vector != [next_id]
        next_id += 1
        if (i + 1) % 100 == 0:
            print(f"  {i + 1} writes, stale reads so far: filter {stale_filter}, "
                  f"vector {stale_vector}; failed writes {write_errors}", flush=True)
    return {"iterations": args.iterations, "stale_filter": stale_filter, "stale_vector": stale_vector,
            "write_errors": write_errors, "first_error": first_error,
            "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
            "p99_ms": float(np.percentile(latencies, 99)) * 1000 if latencies else float("nan")}


def agent_jobs(root: Path) -> dict[str, int]:
    from lancedb_ray.agent.report import read_jobs
    from lancedb_ray.settings import Settings

    counts: dict[str, int] = {}
    for job in read_jobs(Settings.load(storage={"root": {"uri": str(root / "data")}})):
        key = f"{job['kind']}:{job['state']}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def report(result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = result["output"]
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1))
    trials = ", ".join(f"{s:.1f}" for s in result["freshness_s"])
    stale = result["stale"]
    lines = [
        "# Index freshness",
        "",
        f"Table of {result['rows']:,} x {result['dim']} (IVF_PQ), {result['append']:,} rows appended "
        f"per trial; settings: {result['settings']}; Ray CPUs {result['ray_cpus']}; {result['machine']}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| time to zero unindexed rows, p50 over {len(result['freshness_s'])} trials | "
        f"{result['freshness_p50_s']:.1f} s |",
        f"| trials (s) | {trials} |",
        f"| write-then-query iterations | {stale['iterations']:,} |",
        f"| stale reads by filter | {stale['stale_filter']} |",
        f"| stale reads by vector search (top-1 of its own vector) | {stale['stale_vector']} |",
        f"| failed writes | {stale['write_errors']}"
        + (f" (first: `{stale['first_error']}`)" if stale["first_error"] else "") + " |",
        f"| write + 2 queries, p50 / p99 | {stale['p50_ms']:.0f} / {stale['p99_ms']:.0f} ms |",
        f"| agent jobs (kind:state) | {', '.join(f'{k} {v}' for k, v in sorted(result['jobs'].items()))} |",
        f"| initial load + index build | {result['load_s']:.0f} s + {result['index_s']:.0f} s |",
        "",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    numbers = range(1, len(result["freshness_s"]) + 1)
    left.bar(numbers, result["freshness_s"], color="tab:blue")
    left.axhline(result["freshness_p50_s"], color="tab:orange", linestyle="--", label="p50")
    left.set_xticks(list(numbers))
    left.set_xlabel("trial")
    left.set_ylabel("seconds until 0 unindexed rows")
    left.set_title(f"+{result['append']:,} rows into {result['rows']:,} x {result['dim']}")
    left.legend()
    counts = [stale["stale_filter"], stale["stale_vector"], stale["write_errors"]]
    bars = right.bar(["stale (filter)", "stale (vector)", "failed writes"], counts, color="tab:red")
    right.bar_label(bars)
    right.set_ylim(0, max(1, *counts) * 1.2)
    right.set_title(f"stale reads in {stale['iterations']:,} write-then-query loops")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--append", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=1_000)
    parser.add_argument("--partitions", type=int, default=None, help="IVF partitions (default ~sqrt)")
    parser.add_argument("--debounce", type=float, default=None,
                        help="agent debounce seconds (default: the settings' default)")
    parser.add_argument("--compact-min-fragments", type=int, default=None,
                        help="agent setting: compact once this many small fragments pile up "
                             "(default: the settings' default)")
    parser.add_argument("--output", default="index_freshness", help="result file name stem")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--ray-cpus", type=int, default=None, help="default: this machine's CPUs")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="lancedb-ray-freshness-"))
    url = start_service(root, args.port, args)
    db = lancedb.connect("db://bench", api_key=API_KEY, host_override=url)
    print(f"loading {args.rows:,} x {args.dim} through {url}", flush=True)
    began = time.perf_counter()
    table = db.create_table("docs", batch(0, min(args.rows, 20_000), args.dim))
    for start in range(20_000, args.rows, 20_000):
        table.add(batch(start, min(20_000, args.rows - start), args.dim))
    load_s = time.perf_counter() - began
    began = time.perf_counter()
    partitions = args.partitions or max(4, int(args.rows ** 0.5) // 2)
    table.create_index(metric="cosine", vector_column_name="vector", num_partitions=partitions,
                       num_sub_vectors=args.dim // 16,
                       wait_timeout=timedelta(seconds=args.timeout))  # the build is a job of the agent
    index_s = time.perf_counter() - began
    print(f"loaded in {load_s:.0f}s, indexed in {index_s:.0f}s; letting the agent settle", flush=True)
    wait_indexed(table, args.timeout)
    time.sleep(3)  # past the default debounce, so the first trial starts from a quiet table

    print(f"freshness: {args.trials} x {args.append:,} appended rows", flush=True)
    seconds, next_id = freshness(table, args, args.rows)
    print(f"stale reads: {args.iterations:,} write-then-query loops", flush=True)
    stale = stale_reads(table, args, next_id)
    result = {
        "rows": args.rows, "dim": args.dim, "append": args.append, "output": args.output,
        "settings": "defaults" if args.debounce is None and args.compact_min_fragments is None else
        f"debounce {args.debounce}, compact_min_fragments {args.compact_min_fragments}",
        "ray_cpus": args.ray_cpus or os.cpu_count(),
        "freshness_s": seconds, "freshness_p50_s": statistics.median(seconds), "stale": stale,
        "jobs": agent_jobs(root), "load_s": load_s, "index_s": index_s,
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
    }
    report(result)
    from ray import serve

    serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
