"""The audit log: one line per write or admin action, after its answer.

Names the key (never the key itself), the database, the table, the operation
(the route's name), the request id and the status, on the
``lancedb_ray.audit`` logger, so operators can route it apart from the rest.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request

from lancedb_ray.api.asgi import HttpMiddleware, Message, Send, on_response_start
from lancedb_ray.api.auth import READ_ROUTES

logger = logging.getLogger("lancedb_ray.audit")


class AuditLog(HttpMiddleware):
    """Logs a write or admin action once it is answered (its status is in the line)."""

    async def handle(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        status: int | None = None

        def note(message: Message) -> Message:
            nonlocal status
            status = message["status"]
            return message

        await self.app(scope, receive, on_response_start(send, note))
        request = Request(scope)
        key = getattr(request.state, "api_key", None)
        operation = getattr(scope.get("route"), "name", None)
        if status is not None and key is not None and operation and operation not in READ_ROUTES:
            params = scope.get("path_params") or {}
            logger.info(
                "audit key=%s database=%s table=%s operation=%s request_id=%s status=%d",
                key.name,
                request.headers.get("x-lancedb-database", "-"),
                params.get("table_id") or params.get("namespace_id") or "-",
                operation,
                request.headers.get("x-request-id", "-"),
                status,
            )


def install_audit(app: FastAPI) -> None:
    app.add_middleware(AuditLog)
