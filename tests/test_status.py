"""`lancedb-ray status`: one screen on the running service, from a driver that joins its cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa

from tests.support.service import LiveService


def _status(*args: str) -> subprocess.CompletedProcess[str]:
    import ray

    env = {**os.environ, "LANCEDB_RAY_RAY__NAMESPACE": "lancedb-ray"}  # the executors' (default) namespace
    return subprocess.run(
        [sys.executable, "-m", "lancedb_ray.cli", "status", "--address",
         ray.get_runtime_context().gcs_address, *args],
        env=env, capture_output=True, text=True, timeout=180,
    )


def test_status_shows_nodes_deployments_executors_and_agent(live_service: LiveService) -> None:
    table = live_service.connect().create_table("shown", pa.table({"id": list(range(50))}))
    for start in (50, 100):  # three fragments: sub-plans on the executors, not the query node alone
        table.add(pa.table({"id": list(range(start, start + 50))}))
    table.count_rows("id > 3")  # the executors' caches have something to show
    result = _status("--json")
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads(result.stdout)
    assert any(node["alive"] and node["cpus"] > 0 for node in status["nodes"])
    deployments = status["deployments"]
    assert deployments["QueryNode"]["replicas"].get("RUNNING") == 2  # the fixture's num_replicas
    assert deployments["LanceAgent"]["replicas"].get("RUNNING") == 1
    executors = {e["executor"]: e for e in status["executors"]}
    assert set(executors) == {"plan-executor-0", "plan-executor-1"}
    assert sum(e.get("misses", 0) + e.get("hits", 0) for e in executors.values()) > 0
    agent = status["agent"]
    assert set(agent["jobs"]) >= {"pending", "running", "succeeded", "failed"}
    assert agent["events_outstanding"] >= 0 and isinstance(agent["unindexed_rows"], dict)

    screen = _status()
    assert screen.returncode == 0, screen.stderr[-3000:]
    for heading in ("Nodes", "Deployments", "Executors", "Agent", "Tables with unindexed rows"):
        assert heading in screen.stdout.splitlines() or f"{heading}: none" in screen.stdout, heading
    assert "plan-executor-0" in screen.stdout and "hit ratio=" in screen.stdout
    assert "lag: " in screen.stdout
