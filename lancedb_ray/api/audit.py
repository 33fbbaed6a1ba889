"""The audit log: one line per write or admin action, after its answer.

Names the key (never the key itself), the database, the table, the operation
(the route's name), the request id and the status, on the
``lancedb_ray.audit`` logger, so operators can route it apart from the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from lancedb_ray.api.auth import READ_ROUTES

logger = logging.getLogger("lancedb_ray.audit")


def install_audit(app: FastAPI) -> None:
    @app.middleware("http")
    async def audit(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        key = getattr(request.state, "api_key", None)
        route = request.scope.get("route")
        operation = getattr(route, "name", None)
        if key is not None and operation and operation not in READ_ROUTES:
            params = request.scope.get("path_params") or {}
            logger.info(
                "audit key=%s database=%s table=%s operation=%s request_id=%s status=%d",
                key.name,
                request.headers.get("x-lancedb-database", "-"),
                params.get("table_id") or params.get("namespace_id") or "-",
                operation,
                request.headers.get("x-request-id", "-"),
                response.status_code,
            )
        return response
