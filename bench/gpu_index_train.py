"""IVF/PQ training on a GPU against the CPU, and one build through the indexers (issue 11, item 10).

    .venv/bin/python bench/gpu_index_train.py                      # 1,000,000 x 384; needs CUDA
    .venv/bin/python bench/gpu_index_train.py --rows 2000 --dim 16 --cpu-only --out /tmp/x

One clustered data set (``--rows`` x ``--dim`` float32, as ``index_build.py``
makes it) is written as a Lance table. Then, on a local Ray instance with the
machine's CPUs and GPUs:

1. the indexers' training step alone (``train_vector_model``: IVF k-means with
   lance's ``accelerator="cuda"`` on a GPU worker, PQ codebook) on the CPU, then
   with ``use_gpu`` (skipped with ``--cpu-only``);
2. the whole index through the indexers (``run_vector_build``: training once,
   ``--segments`` segments built in parallel, one commit), with the GPU unless
   ``--cpu-only``, and its recall@10 against exact search.

Without a usable CUDA device (PyTorch, driver) it prints why and exits 0 before
starting anything, unless ``--cpu-only``. Sized to finish within 10 minutes on
one H200 with 16 cores. Writes ``gpu_index_train_<rows>x<dim>.{md,json}`` to ``--out``
(``bench/results`` by default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=500)
    parser.add_argument("--fragments", type=int, default=16)
    parser.add_argument("--partitions", type=int, default=None, help="default: sqrt(rows)")
    parser.add_argument("--sub-vectors", type=int, default=None, help="default: dim / 16")
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--nprobes", type=int, default=20)
    parser.add_argument("--cpu-only", action="store_true", help="run the CPU parts only (no CUDA needed)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.partitions = args.partitions or max(1, int(args.rows ** 0.5))
    args.sub_vectors = args.sub_vectors or max(1, args.dim // 16)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lancedb_ray.indexers.accelerator import cuda_status

    usable, why = cuda_status()
    if not usable and not args.cpu_only:
        print(f"SKIPPED: no usable CUDA device here ({why}); run it on a GPU machine, or pass "
              "--cpu-only for the CPU parts alone", flush=True)
        return 0
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ray
    from index_build import clustered_vectors, exact_top_k, measure_recall, warm, write_table

    from lancedb_ray.indexers import JobContext, TableHandle, run_vector_build, train_vector_model
    from lancedb_ray.resources import TaskResources

    work = Path(tempfile.mkdtemp(prefix="gpu-index-train-"))
    record: dict = {"rows": args.rows, "dim": args.dim, "partitions": args.partitions,
                    "sub_vectors": args.sub_vectors, "segments": args.segments, "cpus": os.cpu_count(),
                    "machine": platform.processor() or platform.machine(), "cuda": usable,
                    "why_no_cuda": why or None, "gpu": _gpu_name() if usable else None}
    try:
        start = time.perf_counter()
        vectors = clustered_vectors(args.rows, args.dim, args.clusters)
        uri = write_table(work, vectors, args.fragments)
        queries = clustered_vectors(args.queries, args.dim, args.clusters, seed=1)
        truth = exact_top_k(vectors, queries, 10)
        del vectors
        warm(uri)
        record["load_seconds"] = round(time.perf_counter() - start, 1)
        print(f"wrote {args.rows:,} x {args.dim} in {record['load_seconds']} s", flush=True)

        ray.init(include_dashboard=False, log_to_driver=False)
        handle = TableHandle("bench", "bench", uri, {})
        params = {"num_partitions": args.partitions, "num_sub_vectors": args.sub_vectors}
        # No service shares this Ray instance: one CPU per task, as index_build.py does.
        ctx = JobContext(TaskResources(1.0))
        devices = [False] if args.cpu_only else [False, True]
        record["training"] = []
        for use_gpu in devices:
            start = time.perf_counter()
            model = train_vector_model(handle, "vector", "IVF_PQ", params, use_gpu=use_gpu,
                                       gpu_wait_seconds=30, ctx=ctx)
            row = {"asked": "gpu" if use_gpu else "cpu", "device": model.device,
                   "fallback_reason": model.fallback_reason, "train_seconds": round(model.seconds, 2),
                   "with_dispatch_seconds": round(time.perf_counter() - start, 2)}
            record["training"].append(row)
            print(f"training ({row['asked']}): {row}", flush=True)

        start = time.perf_counter()
        build = run_vector_build(handle, "vector", "IVF_PQ", params, num_segments=args.segments,
                                 use_gpu=not args.cpu_only, gpu_wait_seconds=30, ctx=ctx)
        record["build"] = {
            "device": build.model.device if build.model else "cpu",
            "train_seconds": round(build.model.seconds, 2) if build.model else None,
            "seconds": round(time.perf_counter() - start, 1), "segments": len(build.segments),
            "version": build.version,
            "recall_at_10": round(measure_recall(uri, queries, truth, 10, args.nprobes, 10), 3)}
        print(f"build through the indexers: {record['build']}", flush=True)
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"gpu_index_train_{args.rows}x{args.dim}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(record) + "\n")
    print(markdown(record))
    print(f"\nwrote {stem}.md and {stem}.json")
    return 0


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0)


def markdown(record: dict) -> str:
    lines = [
        f"IVF_PQ training, {record['rows']:,} x {record['dim']} float32, {record['partitions']} partitions, "
        f"{record['sub_vectors']} sub-vectors; {record['cpus']} cores ({record['machine']}), "
        f"GPU: {record['gpu'] or 'none'}.",
        "",
        "| training asked on | ran on | train s | with dispatch s | fallback |",
        "|---|---|---:|---:|---|",
    ]
    for row in record["training"]:
        lines.append(f"| {row['asked']} | {row['device']} | {row['train_seconds']} | "
                     f"{row['with_dispatch_seconds']} | {row['fallback_reason'] or ''} |")
    build = record["build"]
    lines += ["", f"Whole build through the indexers ({build['segments']} segments, trained on "
              f"{build['device']} in {build['train_seconds']} s): {build['seconds']} s, recall@10 "
              f"{build['recall_at_10']}."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
