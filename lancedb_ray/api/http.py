"""The FastAPI application of a query node, given its services.

Kept free of Ray so that it can be built around any backend (tests build it
around a local one); ``api.app`` wraps it in a Serve deployment.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from lancedb_ray.api import admin_routes, health_routes, namespace_routes, table_routes, unsupported_routes
from lancedb_ray.api.asgi import HttpMiddleware, Message, Send, on_response_start
from lancedb_ray.api.audit import install_audit
from lancedb_ray.api.context import install_services
from lancedb_ray.api.errors import install_error_handlers
from lancedb_ray.api.observability import install_observability
from lancedb_ray.service.container import Services

# The protocol level this server implements: several query vectors per request
# (0.2.0), structured full-text queries (0.3.0) and multipart writes (0.4.0); not blobs (0.5.0).
PHALANX_VERSION = "0.4.0"
_VERSION_HEADER = (b"phalanx-version", PHALANX_VERSION.encode())


class _CollapseLeadingSlashes(HttpMiddleware):
    """``host_override="http://host/"`` makes the client send ``//v1/...``: route it as ``/v1/...``.

    Rewritten before routing, so no redirect (which would break a streamed upload).
    """

    async def handle(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["path"].startswith("//"):
            scope = {**scope, "path": "/" + scope["path"].lstrip("/")}
            if scope.get("raw_path"):
                scope["raw_path"] = b"/" + scope["raw_path"].lstrip(b"/")
        await self.app(scope, receive, send)


class _AdvertiseProtocol(HttpMiddleware):
    """Every answer names the protocol level it speaks (``phalanx-version``)."""

    async def handle(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        def with_version(message: Message) -> Message:
            headers = [*message.get("headers", ()), _VERSION_HEADER]
            return {**message, "headers": headers}

        await self.app(scope, receive, on_response_start(send, with_version))


def create_app(services: Services | None = None) -> FastAPI:
    # No /openapi.json or docs: they would answer without a key.
    app = FastAPI(title="lancedb-ray query node", docs_url=None, redoc_url=None, openapi_url=None)
    if services is not None:
        install_services(services)
    install_error_handlers(app)
    install_audit(app)
    install_observability(app)  # inside the slash rewrite: it sees the routed path
    app.add_middleware(_CollapseLeadingSlashes)
    app.add_middleware(_AdvertiseProtocol)

    app.include_router(health_routes.router)
    app.include_router(table_routes.router)
    app.include_router(namespace_routes.router)
    app.include_router(admin_routes.router)
    app.include_router(unsupported_routes.router)  # last: only what nothing else serves
    return app
