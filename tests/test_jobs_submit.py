"""The ingest and index entrypoints through ``ray job submit``, on a cluster of their own.

The cluster (a head with the dashboard, which hosts the job server) is started
and stopped by ``ray.cluster_utils.Cluster`` in a separate Python process, so
it neither meets the session's shared cluster nor outlives the test. The jobs
are submitted with the ``ray job submit`` command line, as an operator would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.ray
def test_ray_job_submit_runs_ingest_then_index(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
    pq.write_table(pa.table({"id": np.arange(2000), "vector": pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.ravel()), 8)}), tmp_path / "source.parquet")
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({
        "storage": {"root": {"uri": str(tmp_path / "data")}},
        "events": {"embedded": {"directory": str(tmp_path / "events")},
                   "outbox_directory": str(tmp_path / "outbox")},
    }))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.run(
        [sys.executable, "-m", "tests.test_jobs_submit", str(tmp_path), str(config)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert process.returncode == 0, process.stdout[-4000:] + process.stderr[-4000:]
    logs = json.loads(process.stdout.strip().splitlines()[-1])
    assert "ingest: committed 2,000 rows in 4 fragments as version 1" in logs["ingest"]
    assert "index: committed version 2" in logs["index"]

    dataset = lance.dataset(str(tmp_path / "data" / "jobs" / "points.lance"))
    assert (dataset.version, dataset.count_rows()) == (2, 2000)
    assert len(dataset.describe_indices()[0].segments) == 2


def _submit(ray: str, address: str, *entrypoint: str) -> str:
    """``ray job submit`` waits for the job and prints its logs; a failed job exits non-zero."""
    deadline = time.monotonic() + 90
    while True:
        process = subprocess.run(
            [ray, "job", "submit", f"--address={address}", "--", *entrypoint],
            capture_output=True, text=True, timeout=240,
        )
        # The job server answers before the head's dashboard agent, which runs the job, is up.
        if "No available agent" not in process.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    if process.returncode != 0:
        raise RuntimeError(f"job {entrypoint} failed:\n{process.stdout[-3000:]}\n{process.stderr[-3000:]}")
    return process.stdout


def _scenario(workdir: Path, config: Path) -> dict[str, str]:

    from tests.support.multinode import new_cluster
    from tests.support.service import free_port

    # Ports of its own: the shared cluster's dashboard agent may hold Ray's default ones.
    cluster = new_cluster(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1",
                          dashboard_port=free_port())
    try:
        address = f"http://{cluster.head_node.address_info['webui_url']}"
        ray = str(Path(sys.executable).parent / "ray")
        common = ["--database", "jobs", "--table", "points", "--config", str(config), "--no-event"]
        ingest = _submit(ray, address, sys.executable, "-m", "lancedb_ray.jobs.ingest", *common,
                         "--source", str(workdir / "source.parquet"), "--mode", "create",
                         "--rows-per-fragment", "500")
        index = _submit(ray, address, sys.executable, "-m", "lancedb_ray.jobs.index", *common,
                        "--column", "vector", "--index-type", "IVF_FLAT", "--num-partitions", "4",
                        "--segments", "2", "--no-gpu")
        return {"ingest": ingest, "index": index}
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    print(json.dumps(_scenario(Path(sys.argv[1]), Path(sys.argv[2]))), flush=True)
