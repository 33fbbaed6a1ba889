"""The GPU training benchmark (``bench/gpu_index_train.py``) on a machine without a GPU: it says why it
skips, and its CPU path works end to end at a tiny size (the full size runs on a lent GPU machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lancedb_ray.indexers.accelerator import cuda_status

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_index_train.py"


def bench(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout_s)


@pytest.mark.skipif(cuda_status()[0], reason="this machine has CUDA: the benchmark would run")
def test_without_cuda_it_says_why_and_writes_nothing(tmp_path: Path) -> None:
    run = bench("--out", str(tmp_path))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "SKIPPED: no usable CUDA device here" in run.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.ray
def test_the_cpu_path_trains_and_builds_through_the_indexers(tmp_path: Path) -> None:
    run = bench("--rows", "2000", "--dim", "16", "--partitions", "4", "--sub-vectors", "2", "--segments", "2",
                "--queries", "5", "--cpu-only", "--out", str(tmp_path))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    record = json.loads((tmp_path / "gpu_index_train_2000x16.json").read_text())
    (training,) = record["training"]
    assert (training["asked"], training["device"], training["fallback_reason"]) == ("cpu", "cpu", None)
    assert training["train_seconds"] > 0
    assert record["build"]["segments"] == 2 and record["build"]["device"] == "cpu"
    assert record["build"]["recall_at_10"] > 0.5
    assert "| cpu | cpu |" in (tmp_path / "gpu_index_train_2000x16.md").read_text()
