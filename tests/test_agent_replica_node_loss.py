"""Node loss mid-job: the node running the agent itself dies; the job still completes, once.

Runs in a process of its own (``python -m tests.test_agent_replica_node_loss``) on
a local multi-node cluster: a head for the Serve controller and the indexer
tasks (the only node with ``indexer``, which every indexer task asks for), and a
worker that alone declares ``agent_node``, where the agent's Serve replica (the
``LanceAgent`` deployment, as ``build_app`` binds it) is placed. While a
``create_index`` job builds its segments, that worker is killed and a
replacement joins: Serve starts a new replica there, which resumes the job from
its record. No index is committed in between (the dead attempt's segments were
never committed), and the job ends ``succeeded`` on its second attempt with
exactly one index commit after it started, covering every row.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import run_scenario

pytestmark = pytest.mark.ray


def test_killing_the_agents_node_mid_job_leaves_one_whole_index(tmp_path: Path) -> None:
    result = run_scenario("tests.test_agent_replica_node_loss", tmp_path, timeout_s=550)
    assert result["killed_during"].startswith("building"), result
    assert result["indexes_after_kill"] == [], result  # nothing half-committed
    assert result["state"] == "succeeded", result
    assert result["attempts"] == 2, result  # the interrupted attempt, then the resumed one
    assert result["commits_after_start"] == ["CreateIndex"], result
    assert result["indexed_rows"] == result["rows"] and result["unindexed_rows"] == 0, result


def _scenario(workdir: Path) -> dict:
    import lance
    import ray
    from ray import serve

    from lancedb_ray.agent.deployment import LanceAgent, agent_options
    from lancedb_ray.agent.jobs import Job, JobKind, JobState
    from lancedb_ray.agent.store import LocalJobStore
    from lancedb_ray.settings import Settings
    from tests.support.multinode import add_node, new_cluster, vector_table

    rows, dim = 40_000, 64
    table = vector_table(workdir / "data" / "db", rows=rows, dim=dim, fragment_rows=10000)
    uri = table.to_lance().uri
    start_version = lance.dataset(uri).version

    cluster = new_cluster(num_cpus=2, resources={"indexer": 4})
    agent_node = add_node(cluster, num_cpus=1, resources={"agent_node": 1})
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
    store.put(job)  # recorded, as the query node's request leaves it: the agent picks it up

    options = agent_options(settings)
    options["ray_actor_options"] = {**options["ray_actor_options"], "resources": {"agent_node": 1}}
    serve.start(proxy_location="Disabled")
    serve.run(LanceAgent.options(**options).bind(settings.to_plain()), name="lancedb", route_prefix=None,
              blocking=False)
    killed: list[str] = []
    indexes_after_kill: list[list[str]] = []
    outcome: list[Job] = []
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and not outcome:
        record = store.get(job.id)
        if record is not None and not record.state.active:
            outcome.append(record)
        elif (not killed and record is not None and record.state is JobState.RUNNING and record.step
              and record.step.startswith("building")):
            cluster.remove_node(agent_node)  # the agent's replica dies with its node, mid-build
            killed.append(record.step)
            indexes_after_kill.append([index["name"] for index in lance.dataset(uri).list_indices()])
            add_node(cluster, num_cpus=1, resources={"agent_node": 1})  # Serve's replacement
        time.sleep(0.02)
    final = outcome[0] if outcome else store.get(job.id)
    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()
    dataset = lance.dataset(uri)
    later = [t for t in dataset.get_transactions(dataset.version - start_version) if t]
    stats = dataset.stats.index_stats("vector_idx") if outcome else {}
    return {"killed_during": killed[0] if killed else "",
            "indexes_after_kill": indexes_after_kill[0] if indexes_after_kill else None,
            "state": final.state.value if final else None, "attempts": final.attempts if final else None,
            "error": final.error if final else None, "detail": final.detail if final else None,
            "commits_after_start": [type(t.operation).__name__ for t in later], "rows": rows,
            "indexed_rows": stats.get("num_indexed_rows"), "unindexed_rows": stats.get("num_unindexed_rows")}


if __name__ == "__main__":
    print(json.dumps(_scenario(Path(sys.argv[1]))))
