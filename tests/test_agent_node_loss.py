"""Node loss mid-job: the node running an indexer task dies; the job still completes, once.

Runs in a process of its own (``python -m tests.test_agent_node_loss``) on a
local multi-node cluster: a head for the agent (no ``indexer`` resource) and a
worker that alone declares ``indexer``, which every indexer task asks for
(``agent.task_resources``). While the segments of a ``create_index`` job build
there, the worker is killed: the job must then say why it waits (no node has
``indexer``); a replacement joins, and the job must end ``succeeded``, with
exactly one index commit after it started (no half-committed index, nothing
twice) covering every row.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.processes import run_scenario

pytestmark = pytest.mark.ray


def test_killing_the_indexer_node_mid_job_leaves_one_whole_index(tmp_path: Path) -> None:
    result = run_scenario("tests.test_agent_node_loss", tmp_path, timeout_s=500)
    assert result["killed_during"].startswith("building"), result
    assert result["waiting"].startswith("cannot be scheduled: needs {CPU: "), result
    assert "indexer: 1}" in result["waiting"], result
    assert result["state"] == "succeeded", result
    assert result["commits_after_start"] == ["CreateIndex"], result
    assert result["indexed_rows"] == result["rows"] and result["unindexed_rows"] == 0, result


def _scenario(workdir: Path) -> dict:
    import asyncio

    import lance
    import ray

    from lancedb_ray.agent.core import LanceAgent
    from lancedb_ray.agent.jobs import Job, JobKind, JobState
    from lancedb_ray.agent.store import LocalJobStore
    from lancedb_ray.settings import Settings
    from tests.support.multinode import add_node, new_cluster, vector_table

    rows, dim = 40_000, 64
    table = vector_table(workdir / "data" / "db", rows=rows, dim=dim, fragment_rows=10000)
    uri = table.to_lance().uri
    start_version = lance.dataset(uri).version

    cluster = new_cluster(num_cpus=2)
    worker = add_node(cluster, num_cpus=2, resources={"indexer": 4})
    ray.init(address=cluster.address, log_to_driver=False)
    settings = Settings(
        storage={"root": {"uri": str(workdir / "data")}},
        state_directory=str(workdir / "state"),
        agent={"segment_min_rows": 1000, "index_segments": 2, "task_resources": {"indexer": 1},
               "retry_seconds": 0.5, "reconcile_interval_seconds": 3600, "use_gpu": False},
    )
    store = LocalJobStore(settings.agent.jobs_directory)
    request = {"column": "vector", "index_type": "IVF_PQ", "metric_type": "l2", "num_partitions": 64,
               "num_sub_vectors": 16, "replace": True}
    job = Job.new("db", "t", JobKind.CREATE_INDEX, start_version, trigger="request", index="vector_idx",
                  request=request)
    store.put(job)  # recorded, as the query node's request leaves it: the agent resumes it
    killed: list[str] = []
    waiting: list[str] = []
    outcome: list[Job] = []
    stop = threading.Event()

    async def run_agent() -> None:
        stopped = asyncio.Event()
        task = asyncio.create_task(LanceAgent(settings).run(stopped))
        while not stop.is_set():
            await asyncio.sleep(0.1)
        stopped.set()
        await asyncio.wait_for(task, 60)

    # The agent runs on a thread; Ray nodes can only be added from the main thread.
    agent_thread = threading.Thread(target=lambda: asyncio.run(run_agent()), daemon=True)
    agent_thread.start()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not outcome:
        record = store.get(job.id)
        if record is not None and not record.state.active:
            outcome.append(record)
        elif (not killed and record is not None and record.state is JobState.RUNNING and record.step
              and record.step.startswith("building") and record.waiting is None):
            cluster.remove_node(worker)  # the node dies with the segment tasks on it
            killed.append(record.step)
        elif killed and not waiting and record is not None and record.waiting:
            waiting.append(record.waiting)  # said why it waits; now a replacement joins
            add_node(cluster, num_cpus=2, resources={"indexer": 4})
        time.sleep(0.02)
    if not outcome:  # the agent's thread cannot be stopped mid-task: say what was seen, leave at once
        print(json.dumps({"killed_during": killed[0] if killed else "", "state": "stuck",
                          "record": str(store.get(job.id)),
                          "nodes": [(n["NodeID"][:8], n["Alive"], n["Resources"]) for n in ray.nodes()]}),
              flush=True)
        os._exit(0)
    stop.set()
    agent_thread.join(60)
    ray.shutdown()
    cluster.shutdown()
    final = outcome[0]
    dataset = lance.dataset(uri)
    later = [t for t in dataset.get_transactions(dataset.version - start_version) if t]
    stats = dataset.stats.index_stats("vector_idx")
    return {"killed_during": killed[0] if killed else "", "waiting": waiting[0] if waiting else "",
            "state": final.state.value,
            "attempts": final.attempts, "error": final.error, "detail": final.detail,
            "commits_after_start": [type(t.operation).__name__ for t in later], "rows": rows,
            "indexed_rows": stats["num_indexed_rows"], "unindexed_rows": stats["num_unindexed_rows"]}


if __name__ == "__main__":
    print(json.dumps(_scenario(Path(sys.argv[1]))))
