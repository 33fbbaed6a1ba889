"""The query node as a Ray Serve application, with the Lance agent beside it.

``build_app`` is the one builder: ``lancedb-ray serve`` calls it, ``serve run
deployments/local.yaml`` imports it, and KubeRay's serveConfigV2 names it.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from lancedb_ray import logging_setup
from lancedb_ray.agent.deployment import LanceAgent, agent_options
from lancedb_ray.api.context import install_services
from lancedb_ray.api.http import create_app
from lancedb_ray.errors import Unavailable
from lancedb_ray.events.outbox import ChangePublisher
from lancedb_ray.execution.base import QueryExecutor
from lancedb_ray.execution.distributed import DistributedExecutor, ExecutorPool
from lancedb_ray.execution.local import LocalExecutor
from lancedb_ray.keys import check_serving
from lancedb_ray.service.container import Services
from lancedb_ray.settings import Settings
from lancedb_ray.storage.connections import Connections
from lancedb_ray.storage.versions import RegistryView, start_registry

_AGENT_CALL_S = 60.0
_AGENT_PENDING_S = 5.0  # index stats answer without pending builds rather than wait longer
# One FastAPI app per replica process; each replica gives it its services on start.
fastapi_app = create_app()


@serve.deployment(name="QueryNode")
@serve.ingress(fastapi_app)
class QueryNode:
    """Authenticates, resolves tables, runs writes on storage and queries on executors."""

    def __init__(self, settings: dict[str, Any], agent: Any = None) -> None:
        self._settings = Settings.from_plain(settings)
        logging_setup.configure(self._settings.logging)
        self._agent = agent  # the LanceAgent's handle: bound here so Serve deploys it in this app
        self._publisher = ChangePublisher(self._settings.events)
        # This replica's copy of the version registry: a warm query makes no round trip for it.
        self._registry = RegistryView(start_registry(self._settings.ray.namespace))
        index_jobs = AgentIndexJobs(agent) if agent is not None else None
        install_services(
            Services.build(self._settings, self._publisher.emit, self._executor_factory, self._registry,
                           index_jobs)
        )

    def _executor_factory(self, connections: Connections) -> QueryExecutor:
        """Plan executors when enabled (started and prewarmed before traffic), else local."""
        if not self._settings.executors.enabled:
            return LocalExecutor(connections)
        pool = ExecutorPool(self._settings)
        pool.start()
        executor = DistributedExecutor(self._settings, connections, pool)
        executor.prewarm(self._settings.executors.prewarm)
        return executor

    def check_health(self) -> None:
        """Serve's replica health check: a replica whose change publisher died is replaced."""
        if not self._publisher.alive:
            raise RuntimeError("the change publisher thread stopped: changes would not be announced")

    def __del__(self) -> None:
        self._publisher.close()
        self._registry.close()


class AgentIndexJobs:
    """Index builds as jobs of the agent deployment, through its handle (``service.indexes.IndexJobs``)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def create_index(self, database: str, table: str, request: dict[str, Any]) -> str:
        return self._call("create_index", database, table, request)

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self._call("job", job_id)

    def pending(self, database: str, table: str) -> list[str]:
        return self._call("pending_indexes", database, table, timeout_s=_AGENT_PENDING_S)

    def _call(self, method: str, *args: Any, timeout_s: float = _AGENT_CALL_S) -> Any:
        try:
            return getattr(self._handle, method).remote(*args).result(timeout_s=timeout_s)
        except Exception as exc:  # the agent replica is restarting or overloaded: the client retries
            raise Unavailable(f"the agent (it builds indexes) did not answer: {type(exc).__name__}") from exc


def deployment_options(settings: Settings) -> dict[str, Any]:
    """Serve options from settings, in one place (replicas, back-pressure, resources)."""
    server = settings.server
    options: dict[str, Any] = {
        "max_ongoing_requests": server.max_ongoing_requests,
        "max_queued_requests": server.max_queued_requests,
        "ray_actor_options": {"num_cpus": server.num_cpus},
    }
    if server.num_replicas == "auto":
        options["autoscaling_config"] = {
            "min_replicas": 1,
            "max_replicas": server.max_replicas,
            "target_ongoing_requests": max(1, server.max_ongoing_requests // 4),
        }
    else:
        options["num_replicas"] = int(server.num_replicas)
    return options


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Build the application from ``{"config_file": path, "settings": {overrides}}``."""
    args = args or {}
    settings = Settings.load(args.get("config_file"), **(args.get("settings") or {}))
    check_serving(settings)
    plain = settings.to_plain()
    agent = LanceAgent.options(**agent_options(settings)).bind(plain) if settings.agent.enabled else None
    return QueryNode.options(**deployment_options(settings)).bind(plain, agent)
