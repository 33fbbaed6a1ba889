"""The audit log: one line per write or admin action, after its answer.

Names the key (never the key itself), the database, the table, the operation
(the route's name), the request id and the status, on the
``lancedb_ray.audit`` logger, so operators can route it apart from the rest.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI

from lancedb_ray.api.asgi import HttpMiddleware, ResponseStatus, Send, on_response_start
from lancedb_ray.api.auth import READ_ROUTES
from lancedb_ray.logging_setup import REQUEST

logger = logging.getLogger("lancedb_ray.audit")


class AuditLog(HttpMiddleware):
    """Logs a write or admin action once it is answered (its status is in the line)."""

    async def handle(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        status = ResponseStatus()
        await self.app(scope, receive, on_response_start(send, status))
        operation = getattr(scope.get("route"), "name", None)
        if status.value is None or not operation or operation in READ_ROUTES:
            return
        key = (scope.get("state") or {}).get("api_key")  # set by authentication
        request = REQUEST.get()  # set by the request context, outside this middleware
        if key is not None and request is not None:
            params = scope.get("path_params") or {}
            logger.info(
                "audit key=%s database=%s table=%s operation=%s request_id=%s status=%d",
                key.name,
                request.database or "-",
                params.get("table_id") or params.get("namespace_id") or "-",
                operation,
                request.request_id,
                status.value,
            )


def install_audit(app: FastAPI) -> None:
    app.add_middleware(AuditLog)
