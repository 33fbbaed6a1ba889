"""What the executor hop costs: one sub-plan batch through a plan executor actor vs in-process.

``.venv/bin/python bench/executor_hop.py`` starts a private local Ray instance,
one ``PlanExecutor`` as an actor and one in this process, warms both on a small
table, and reports p50/p99 of: an empty actor call, a small sub-plan batch via
the actor, the same batch in-process, and their difference (the hop).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lancedb_ray.execution.executor_actor import PlanExecutor  # noqa: E402
from lancedb_ray.execution.plan import DatasetRef, Snapshot, plan_count, plan_query  # noqa: E402
from lancedb_ray.protocol import QueryRequest  # noqa: E402
from lancedb_ray.settings import Settings  # noqa: E402
from lancedb_ray.types import TableRef  # noqa: E402


def _timings(call, repeat: int) -> tuple[float, float]:
    for _ in range(10):
        call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), float(np.percentile(samples, 99))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args(argv)

    import ray

    root = Path(tempfile.mkdtemp(prefix="lancedb-ray-hop-"))
    uri = str(root / "db" / "t.lance")
    vectors = np.random.default_rng(1).normal(size=(args.rows, args.dim)).astype("float32")
    data = pa.table({"id": np.arange(args.rows), "vector": pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.ravel()), args.dim)})
    lance.write_dataset(data, uri, max_rows_per_file=args.rows // 4)
    snapshot = Snapshot.of(lance.dataset(uri))
    target = DatasetRef(TableRef("db", (), "t"), uri, snapshot.dataset.version, snapshot.fingerprint)
    settings = Settings(storage={"root": {"uri": str(root)}}).to_plain()
    batches = {
        "count, 1 sub-plan": plan_count(snapshot, target, None, group_size=8),
        "flat k=10, 1 sub-plan": plan_query(snapshot, target, QueryRequest(
            vector=vectors[0].tolist(), k=10), group_size=8),
        "flat k=10, 4 sub-plans": plan_query(snapshot, target, QueryRequest(
            vector=vectors[0].tolist(), k=10), group_size=1),
    }

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        actor = ray.remote(PlanExecutor).options(max_concurrency=8).remote("hop", settings)
        local = PlanExecutor("hop-local", settings)
        ray.get(actor.ready.remote())
        lines = ["| call | p50 ms | p99 ms |", "|---|---|---|"]
        p50, p99 = _timings(lambda: ray.get(actor.ready.remote()), args.repeat)
        lines.append(f"| empty actor call | {p50:.3f} | {p99:.3f} |")
        for name, plans in batches.items():
            remote50, remote99 = _timings(lambda p=plans: ray.get(actor.execute_batch.remote(p)),
                                          args.repeat)
            local50, local99 = _timings(lambda p=plans: local.execute_batch(p), args.repeat)
            lines.append(f"| {name}: via actor | {remote50:.3f} | {remote99:.3f} |")
            lines.append(f"| {name}: in-process | {local50:.3f} | {local99:.3f} |")
            lines.append(f"| {name}: hop (p50 difference) | {remote50 - local50:.3f} | |")
        print("\n".join(lines))
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
