"""Readiness of a query node: can it answer queries and reach storage right now?

Liveness (``/health``) only says the process serves HTTP; readiness is what a
load balancer should route by. Checked on each probe, so it follows an outage
and its recovery without state of its own.
"""

from __future__ import annotations

from lancedb_ray.service.container import Services
from lancedb_ray.storage.probe import unreachable

PING_TIMEOUT_S = 2.0  # an executor that cannot answer a ping this fast cannot serve queries either


def readiness_problems(services: Services) -> dict[str, str]:
    """Check name -> problem; empty when ready."""
    problems: dict[str, str] = {}
    unanswered = getattr(services.executor, "unanswered", None)  # only plan executors can be away
    if unanswered is not None:
        silent = unanswered(PING_TIMEOUT_S)
        if silent:
            problems["executors"] = f"not answering: {', '.join(silent)}"
    storage = unreachable(services.connections.root())
    if storage:
        problems["storage"] = storage
    return problems
