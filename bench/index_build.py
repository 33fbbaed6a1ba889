"""Index build throughput: the indexers' parallel segments on Ray vs embedded lancedb.

    .venv/bin/python bench/index_build.py [--rows 200000] [--dim 384] [--segments 2,4]

One clustered data set (``--rows`` x ``--dim`` float32 vectors around
``--clusters`` centres) is written once as a Lance table of ``--fragments``
fragments. Then the same IVF_PQ index (same partitions, sub-vectors and
sample rate) is built on it:

- by embedded lancedb: ``LanceTable.create_index`` in this process;
- by ``lancedb_ray.indexers.build_vector_index``: training once in one Ray task,
  then ``N`` segments built in parallel Ray tasks and committed together, for
  each ``N`` in ``--segments``, on a local Ray instance of ``--cpus`` CPUs
  (``N=1`` separates the effect of training once from that of parallel segments);
- by ``lance_ray.create_index`` (unless ``--no-lance-ray``), with the largest
  ``N``: lance-ray's own segmented build, which trains in the calling process
  and cannot take centroids trained elsewhere (why the indexers keep theirs).

Each build is timed end to end (Ray start-up excluded, task dispatch included)
and its recall@10 is measured against exact search over ``--queries`` queries
at ``--nprobes`` (re-ranked with ``--refine-factor``). Prints a markdown table
and writes it, with a bar chart, to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import lance
import lance_ray
import lancedb
import numpy as np
import pyarrow as pa
import ray
from lancedb.index import IvfPq

from lancedb_ray.indexers import JobContext, TableHandle, build_vector_index
from lancedb_ray.resources import TaskResources

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Result:
    method: str
    segments: int
    seconds: float
    rows: int
    recall: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds


def clustered_vectors(rows: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32) * 4
    out = np.empty((rows, dim), dtype=np.float32)
    step = 50_000
    for start in range(0, rows, step):  # in chunks, to keep peak memory near the output's
        n = min(step, rows - start)
        out[start:start + n] = centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim))
    return out


def write_table(root: Path, vectors: np.ndarray, fragments: int) -> str:
    uri = str(root / "bench.lance")
    rows, dim = vectors.shape
    table = pa.table({"id": np.arange(rows),
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)})
    lance.write_dataset(table, uri, max_rows_per_file=-(-rows // fragments))
    return uri


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> list[set[int]]:
    norms = (vectors * vectors).sum(axis=1)
    out = []
    for q in queries:
        distances = norms - 2 * vectors @ q
        out.append(set(np.argpartition(distances, k)[:k].tolist()))
    return out


def measure_recall(uri: str, queries: np.ndarray, truth: list[set[int]], k: int, nprobes: int,
                   refine_factor: int) -> float:
    dataset = lance.dataset(uri)
    hits = 0
    nearest = {"column": "vector", "k": k, "nprobes": nprobes}
    if refine_factor:
        nearest["refine_factor"] = refine_factor
    for q, expected in zip(queries, truth, strict=True):
        found = dataset.scanner(columns=["id"], nearest={**nearest, "q": q},
                                disable_scoring_autoprojection=True).to_table()["id"].to_pylist()
        hits += len(expected & set(found))
    return hits / (k * len(queries))


def warm(uri: str) -> None:
    """Read the vectors once, so that no build pays for a cold page cache."""
    for _ in lance.dataset(uri).to_batches(columns=["vector"]):
        pass


def markdown(results: list[Result], args: argparse.Namespace) -> str:
    lines = [
        f"IVF_PQ, {args.rows:,} x {args.dim} float32 ({args.clusters} clusters, {args.fragments} "
        f"fragments), {args.partitions} partitions, {args.sub_vectors} sub-vectors; recall@10 at "
        f"nprobes={args.nprobes}, refine_factor={args.refine_factor} over {args.queries} queries; "
        f"{os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), Ray with {args.cpus} CPUs; 1-minute load "
        f"average {args.load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other work on the "
        "machine stretches wall times).",
        "",
        "| method | segments | build seconds | rows/s | speed-up | recall@10 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base = results[0].seconds
    for r in results:
        lines.append(f"| {r.method} | {r.segments} | {r.seconds:.1f} | {r.rows_per_second:,.0f} | "
                     f"{base / r.seconds:.2f}x | {r.recall:.3f} |")
    return "\n".join(lines)


def chart(results: list[Result], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.method if r.method.startswith("embedded") else f"{r.method}\n{r.segments} seg"
              for r in results]
    fig, ax = plt.subplots(figsize=(1.8 * len(results) + 2, 4))
    bars = ax.bar(labels, [r.rows_per_second for r in results],
                  color=["#888888"] + ["#2b7bb9"] * (len(results) - 1))
    for bar, r in zip(bars, results, strict=True):
        ax.annotate(f"{r.seconds:.1f} s\nrecall {r.recall:.2f}", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("rows indexed per second")
    ax.set_title(title, fontsize=9)
    ax.margins(y=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--fragments", type=int, default=16)
    parser.add_argument("--partitions", type=int, default=None, help="default: sqrt(rows)")
    parser.add_argument("--sub-vectors", type=int, default=None, help="default: dim / 16")
    parser.add_argument("--segments", default="1,2,4", help="comma-separated segment counts")
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--nprobes", type=int, default=20)
    parser.add_argument("--refine-factor", type=int, default=10, help="0: rank by PQ codes alone")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-lance-ray", dest="lance_ray", action="store_false",
                        help="leave out lance_ray.create_index")
    parser.add_argument("--lance-ray-first", action="store_true",
                        help="build with lance-ray before the indexers (load on a shared machine drifts)")
    args = parser.parse_args()
    args.partitions = args.partitions or max(1, round(args.rows ** 0.5))
    args.sub_vectors = args.sub_vectors or max(1, args.dim // 16)
    return args


def main() -> None:
    args = parse_args()
    args.load_before = os.getloadavg()[0]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")
    work = Path(tempfile.mkdtemp(prefix="index-build-"))
    try:
        print(f"generating {args.rows:,} x {args.dim} vectors ...", flush=True)
        vectors = clustered_vectors(args.rows, args.dim, args.clusters)
        uri = write_table(work, vectors, args.fragments)
        queries = clustered_vectors(args.queries, args.dim, args.clusters, seed=1)
        truth = exact_top_k(vectors, queries, 10)
        del vectors
        warm(uri)
        results: list[Result] = []

        table = lancedb.connect(work).open_table("bench")
        start = time.perf_counter()
        table.create_index("vector", replace=True, config=IvfPq(
            distance_type="l2", num_partitions=args.partitions, num_sub_vectors=args.sub_vectors))
        seconds = time.perf_counter() - start
        results.append(Result("embedded lancedb create_index", 1, seconds, args.rows,
                              measure_recall(uri, queries, truth, 10, args.nprobes, args.refine_factor)))
        print(f"embedded lancedb: {seconds:.1f} s", flush=True)

        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        handle = TableHandle("bench", "bench", uri, {})
        params = {"num_partitions": args.partitions, "num_sub_vectors": args.sub_vectors}
        counts = [int(s) for s in args.segments.split(",")]

        def indexers(segments: int) -> None:
            # No service shares this Ray instance: one CPU per task (the derived default keeps
            # room for the service's actors and would run every segment at once on 2 cores).
            build_vector_index(handle, "vector", "IVF_PQ", params, num_segments=segments, use_gpu=False,
                               ctx=JobContext(TaskResources(1.0)))

        def lance_ray_build(segments: int) -> None:
            lance_ray.create_index(uri, "vector", "IVF_PQ", name="vector_idx", replace=True,
                                   num_segments=segments, num_workers=min(segments, args.cpus),
                                   ray_remote_args={"num_cpus": 1}, metric="l2",
                                   num_partitions=args.partitions, num_sub_vectors=args.sub_vectors)

        builds = [("lancedb-ray indexers", n, indexers) for n in counts]
        if args.lance_ray:
            lance_ray_run = ("lance-ray create_index", max(counts), lance_ray_build)
            builds = [lance_ray_run, *builds] if args.lance_ray_first else [*builds, lance_ray_run]
        for method, segments, build in builds:
            start = time.perf_counter()
            build(segments)
            seconds = time.perf_counter() - start
            results.append(Result(method, segments, seconds, args.rows,
                                  measure_recall(uri, queries, truth, 10, args.nprobes, args.refine_factor)))
            print(f"{method}, {segments} segments: {seconds:.1f} s", flush=True)
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table_md = markdown(results, args)
    print()
    print(table_md)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"index_build_{args.rows}x{args.dim}"
    (args.out / f"{stem}.md").write_text(table_md + "\n")
    chart(results, args.out / f"{stem}.png", f"IVF_PQ build, {args.rows:,} x {args.dim}")
    print(f"\nwrote {args.out / (stem + '.md')} and {args.out / (stem + '.png')}")


if __name__ == "__main__":
    main()
