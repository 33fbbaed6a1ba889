"""GPU placement of index training on a local multi-node Ray cluster.

The scenario runs in its own Python process (``python -m tests.test_indexers_gpu_scheduling``),
because it builds its own cluster with ``ray.cluster_utils.Cluster``: a head with
CPUs only, and a second node that *declares* one GPU (and a ``gpu_node`` custom
resource to find it by). This machine has no CUDA device, so the training task
lands on the GPU node as Ray places it, finds no usable CUDA there (PyTorch is
not installed here; with PyTorch, ``torch.cuda.is_available()`` is False) and
trains on the CPU with a warning. The real CUDA training path only runs on a
machine with a GPU.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import types
from pathlib import Path

import pytest

from lancedb_ray.indexers.accelerator import choose_accelerator, cuda_status
from tests.support.processes import run_scenario

PARAMS = {"num_partitions": 8, "num_sub_vectors": 4}


def test_training_lands_on_the_gpu_node_and_falls_back_to_cpu_without_cuda(tmp_path: Path) -> None:
    result = run_scenario("tests.test_indexers_gpu_scheduling", tmp_path, timeout_s=400)

    # With a GPU node: the training task asked for num_gpus=1 and ran there.
    assert result["with_gpu_node"]["cluster_has_gpus"] is True
    trained = result["with_gpu_node"]["train"]
    assert trained["node_id"] == result["gpu_node_id"] != result["head_node_id"]
    # ... but that node has no usable CUDA device: CPU training, with the reason said.
    assert trained["accelerator"] is None and trained["device"] == "cpu"
    assert "CUDA" in trained["fallback_reason"] or "PyTorch" in trained["fallback_reason"]
    assert any("fell back to the CPU" in w for w in result["with_gpu_node"]["warnings"])
    build = result["with_gpu_node"]["build"]
    assert build["train_node_id"] == result["gpu_node_id"]
    assert build["segments"] == 2 and build["indexed_rows"] == 4000

    # Without a GPU node: use_gpu resolves to False and training runs on the head's CPU.
    no_gpu = result["without_gpu_node"]
    assert no_gpu["cluster_has_gpus"] is False and no_gpu["resolved_use_gpu"] is False
    assert no_gpu["auto"]["node_id"] == result["head_node_id"]
    assert no_gpu["auto"]["fallback_reason"] is None
    # use_gpu=True with no GPU anywhere: the autoscaler is asked, none comes, CPU training.
    assert no_gpu["forced"]["node_id"] == result["head_node_id"]
    assert any("cluster has no GPU" in w for w in no_gpu["warnings"])


def test_cuda_detection_uses_torch_when_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("torch")
    fake.cuda = types.SimpleNamespace(is_available=lambda: False)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", fake)
    usable, reason = cuda_status()
    assert not usable and "torch.cuda.is_available() is False" in reason
    choice = choose_accelerator(True)
    assert choice.accelerator is None and choice.device == "cpu" and choice.fallback_reason == reason

    fake.cuda = types.SimpleNamespace(is_available=lambda: True)  # type: ignore[attr-defined]
    assert cuda_status() == (True, "")
    assert choose_accelerator(True).accelerator == "cuda"
    assert choose_accelerator(False).accelerator is None  # never CUDA unless asked


def test_cuda_detection_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    usable, reason = cuda_status()
    assert not usable and "PyTorch is not importable" in reason


# -- the scenario, run in a process of its own --------------------------------------------------


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _scenario(workdir: Path) -> dict:
    import lance
    import numpy as np
    import pyarrow as pa
    import ray

    from lancedb_ray.indexers import (
        TableHandle,
        cluster_has_gpus,
        resolve_use_gpu,
        run_vector_build,
        train_vector_model,
    )

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(4000, 16)).astype(np.float32)
    uri = str(workdir / "gpu.lance")
    lance.write_dataset(pa.table({"id": np.arange(4000), "vector": pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.ravel()), 16)}), uri, max_rows_per_file=1000)
    handle = TableHandle("db", "gpu", uri, {})
    warnings = _Warnings()
    logging.getLogger("lancedb_ray").addHandler(warnings)

    from tests.support.multinode import add_node, new_cluster

    cluster = new_cluster(num_cpus=2)
    gpu_node = add_node(cluster, num_cpus=2, num_gpus=1, resources={"gpu_node": 1})
    ray.init(address=cluster.address, log_to_driver=False)
    result: dict = {"head_node_id": cluster.head_node.node_id, "gpu_node_id": gpu_node.node_id}
    try:
        model = train_vector_model(handle, "vector", "IVF_PQ", PARAMS, use_gpu=True)
        build = run_vector_build(handle, "vector", "IVF_PQ", PARAMS, num_segments=2, use_gpu=True)
        result["with_gpu_node"] = {
            "cluster_has_gpus": cluster_has_gpus(),
            "train": {"node_id": model.node_id, "accelerator": model.accelerator, "device": model.device,
                      "fallback_reason": model.fallback_reason},
            "build": {"train_node_id": build.model.node_id, "segments": len(build.segments),
                      "indexed_rows": handle.open().stats.index_stats("vector_idx")["num_indexed_rows"]},
            "warnings": list(warnings.messages),
        }
        warnings.messages.clear()

        cluster.remove_node(gpu_node)
        deadline = time.monotonic() + 60
        while cluster_has_gpus() and time.monotonic() < deadline:
            time.sleep(0.5)
        auto = train_vector_model(handle, "vector", "IVF_PQ", PARAMS, use_gpu=resolve_use_gpu(None))
        forced = train_vector_model(handle, "vector", "IVF_PQ", PARAMS, use_gpu=True, gpu_wait_seconds=1)
        result["without_gpu_node"] = {
            "cluster_has_gpus": cluster_has_gpus(),
            "resolved_use_gpu": resolve_use_gpu(None),
            "auto": {"node_id": auto.node_id, "fallback_reason": auto.fallback_reason},
            "forced": {"node_id": forced.node_id, "accelerator": forced.accelerator},
            "warnings": list(warnings.messages),
        }
    finally:
        ray.shutdown()
        cluster.shutdown()
    return result


if __name__ == "__main__":
    print(json.dumps(_scenario(Path(sys.argv[1]))), flush=True)
