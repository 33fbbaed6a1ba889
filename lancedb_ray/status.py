"""``lancedb-ray status``: the running service on one screen, from a driver joined to its cluster.

Nodes and resources (Ray), deployments and replicas (Serve), the plan
executors' caches (each executor's own counters), and the agent's backlog,
jobs and tables with unindexed rows (the agent's ``status``). A part that does
not answer is shown as such; the others are still shown.
"""

from __future__ import annotations

from typing import Any

from lancedb_ray.settings import Settings

APP_NAME = "lancedb"
EXECUTOR_PREFIX = "plan-executor-"
TIMEOUT_S = 10.0


def collect(settings: Settings) -> dict[str, Any]:
    """Everything the screen shows, as plain data (``--json`` prints it as is)."""
    return {"nodes": _nodes(), "deployments": _deployments(), "executors": _executors(settings),
            "agent": _agent()}


def _nodes() -> list[dict[str, Any]]:
    import ray

    return [{"address": node["NodeManagerAddress"], "alive": node["Alive"],
             "cpus": node["Resources"].get("CPU", 0), "gpus": node["Resources"].get("GPU", 0),
             "memory_gib": round(node["Resources"].get("memory", 0) / 2**30, 1)}
            for node in ray.nodes()]


def _deployments() -> dict[str, Any]:
    from ray import serve

    application = serve.status().applications.get(APP_NAME)
    if application is None:
        return {}
    return {name: {"status": str(d.status), "replicas": {str(k): v for k, v in d.replica_states.items()},
                   "message": d.message}
            for name, d in application.deployments.items()}


def _executors(settings: Settings) -> list[dict[str, Any]]:
    import ray

    names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                   if a["namespace"] == settings.ray.namespace and a["name"].startswith(EXECUTOR_PREFIX))
    calls = {name: ray.get_actor(name, namespace=settings.ray.namespace).cache_stats.remote()
             for name in names}
    rows = []
    for name, call in calls.items():
        try:
            stats = ray.get(call, timeout=TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a dead or busy executor is what the screen must show
            rows.append({"executor": name, "error": type(exc).__name__})
            continue
        lookups = stats["hits"] + stats["misses"]
        rows.append({**stats, "hit_ratio": stats["hits"] / lookups if lookups else None})
    return rows


def _agent() -> dict[str, Any]:
    from ray import serve

    try:
        handle = serve.get_deployment_handle("LanceAgent", app_name=APP_NAME)
        return handle.status.remote().result(timeout_s=TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - no agent (disabled) or not answering
        return {"error": type(exc).__name__}


def format_status(status: dict[str, Any]) -> str:
    lines = ["Nodes"]
    for node in status["nodes"]:
        state = "alive" if node["alive"] else "DEAD"
        lines.append(f"  {node['address']:<16} {state:<5} cpus={node['cpus']:g} gpus={node['gpus']:g} "
                     f"memory={node['memory_gib']}GiB")
    lines.append("Deployments")
    if not status["deployments"]:
        lines.append(f"  (application '{APP_NAME}' not running)")
    for name, deployment in status["deployments"].items():
        replicas = ", ".join(f"{state}={n}" for state, n in deployment["replicas"].items()) or "none"
        lines.append(f"  {name:<16} {deployment['status']:<10} replicas: {replicas}")
        if deployment["message"] and deployment["status"] != "HEALTHY":
            lines.append(f"    {deployment['message'].splitlines()[0]}")
    lines.append("Executors")
    for executor in status["executors"]:
        if "error" in executor:
            lines.append(f"  {executor['executor']:<16} not answering ({executor['error']})")
            continue
        ratio = "-" if executor["hit_ratio"] is None else f"{executor['hit_ratio']:.0%}"
        memory, spill = executor["memory_bytes"] / 2**20, executor["spill_bytes"] / 2**20
        lines.append(f"  {executor['executor']:<16} entries={executor['entries']} memory={memory:.1f}MiB "
                     f"spill={spill:.1f}MiB hit ratio={ratio} evictions={executor['evictions']}")
    agent = status["agent"]
    lines.append("Agent")
    if "error" in agent:
        lines.append(f"  not answering ({agent['error']})")
    else:
        jobs = ", ".join(f"{state}={n}" for state, n in agent["jobs"].items())
        lines.append(f"  lag: {agent['events_outstanding']} events not yet handled, "
                     f"{agent['tables_waiting']} tables waiting; jobs: {jobs}")
        unindexed = agent.get("unindexed_rows", {})
        lines.append("Tables with unindexed rows" + ("" if unindexed else ": none"))
        lines.extend(f"  {table:<32} {rows}" for table, rows in unindexed.items())
    return "\n".join(lines)
