"""A client's large vector index, built as an agent job, trains on a GPU worker, else on a CPU.

Runs in a process of its own (``python -m tests.test_agent_gpu_builds``) on a
local multi-node cluster (``ray.cluster_utils.Cluster``): a CPU-only head and a
node that *declares* one GPU. The job goes through the agent's runner as a
``create_index`` job does. Then the GPU node is removed and the settings say
the cluster has a GPU group (``agent.gpu_group``): the build asks the
autoscaler (there is none here), waits ``gpu_wait_seconds`` and trains on a CPU.
This machine has no CUDA device, so the GPU node's task trains on its CPU (see
``test_indexers_gpu_scheduling``); what is checked here is where it was placed.
Last, with the GPU group still at zero, a stand-in for the autoscaler adds a GPU
node when the build asks for one (``request_resources``, seen through a spy), and
the training is placed on that node.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import run_scenario

pytestmark = pytest.mark.ray


def test_large_index_requests_train_on_the_gpu_node_then_fall_back_to_cpu(tmp_path: Path) -> None:
    result = run_scenario("tests.test_agent_gpu_builds", tmp_path, timeout_s=400)

    with_gpu = result["with_gpu_node"]
    assert with_gpu["state"] == "succeeded" and with_gpu["segments"] == 2, with_gpu
    assert f"trained on cpu (node {result['gpu_node_id']})" in with_gpu["detail"]  # no CUDA here

    without = result["gpu_group_scaled_to_zero"]
    assert without["state"] == "succeeded" and without["segments"] == 2, without
    assert f"trained on cpu (node {result['head_node_id']})" in without["detail"]
    assert any("cluster has no GPU" in w for w in without["warnings"])

    scaled_up = result["gpu_group_scaled_up"]
    assert scaled_up["requests"] == [[{"GPU": 1}], []], scaled_up  # asked, then withdrawn
    assert scaled_up["state"] == "succeeded" and scaled_up["segments"] == 2, scaled_up
    assert f"trained on cpu (node {scaled_up['joined_node_id']})" in scaled_up["detail"]


def _scenario(workdir: Path) -> dict:
    import ray

    from lancedb_ray.agent.execute import JobRunner
    from lancedb_ray.agent.jobs import Job, JobKind
    from lancedb_ray.agent.tables import TableReader
    from lancedb_ray.settings import Settings
    from lancedb_ray.storage.catalog import StorageCatalog
    from lancedb_ray.storage.connections import Connections
    from tests.support.multinode import add_node, new_cluster, vector_table

    class Warnings(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    vector_table(workdir / "data" / "db", rows=4000, dim=16, fragment_rows=1000)  # 4 fragments: 2 segments

    cluster = new_cluster(num_cpus=2)
    gpu_node = add_node(cluster, num_cpus=2, num_gpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    warnings = Warnings()
    logging.getLogger("lancedb_ray").addHandler(warnings)
    request = {"column": "vector", "index_type": "IVF_PQ", "metric_type": "l2", "num_partitions": 8,
               "num_sub_vectors": 4, "replace": True}

    def build(**agent: object) -> dict:
        settings = Settings(storage={"root": {"uri": str(workdir / "data")}},
                            agent={"segment_min_rows": 1000, "index_segments": 2, **agent})
        reader = TableReader(Connections(StorageCatalog(settings.storage), 0.0))
        job = Job.new("db", "t", JobKind.CREATE_INDEX, 4, trigger="request", index="vector_idx",
                      request=request).started()
        warnings.messages.clear()
        try:
            outcome = JobRunner(settings, reader).run(job)
        except Exception as exc:  # reported, for the assertion message
            return {"state": "failed", "error": repr(exc)}
        described = next(d for d in reader.dataset("db", "t").describe_indices() if d.name == "vector_idx")
        return {"state": "succeeded", "detail": outcome.detail, "segments": len(described.segments),
                "warnings": list(warnings.messages)}

    result: dict = {"head_node_id": cluster.head_node.node_id, "gpu_node_id": gpu_node.node_id}
    try:
        result["with_gpu_node"] = build()
        cluster.remove_node(gpu_node)
        deadline = time.monotonic() + 60
        while ray.cluster_resources().get("GPU") and time.monotonic() < deadline:
            time.sleep(0.2)  # until the cluster knows the node is gone
        result["gpu_group_scaled_to_zero"] = build(gpu_group=True, gpu_wait_seconds=2)
        result["gpu_group_scaled_up"] = _scale_up_on_request(cluster, build)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return result


def _scale_up_on_request(cluster, build) -> dict:
    """``build`` on a thread with the GPU group at zero; this thread plays the autoscaler."""
    import threading

    import ray.autoscaler.sdk

    from tests.support.multinode import add_node

    requests: list[list[dict]] = []
    asked = threading.Event()
    real = ray.autoscaler.sdk.request_resources

    def spy(*args, bundles=None, **kwargs):
        requests.append(list(bundles or []))
        if bundles:
            asked.set()
        return real(*args, bundles=bundles, **kwargs)

    ray.autoscaler.sdk.request_resources = spy
    done: list[dict] = []
    worker = threading.Thread(target=lambda: done.append(build(gpu_group=True, gpu_wait_seconds=120)))
    worker.start()
    try:
        if not asked.wait(120):
            worker.join(300)
            return {"requests": requests, "state": "no request", "build": done}
        joined = add_node(cluster, num_cpus=2, num_gpus=1)  # nodes join from the main thread
        worker.join(300)
    finally:
        ray.autoscaler.sdk.request_resources = real
    return {**(done[0] if done else {"state": "stuck"}), "requests": requests,
            "joined_node_id": joined.node_id}


if __name__ == "__main__":
    print(json.dumps(_scenario(Path(sys.argv[1]))))
