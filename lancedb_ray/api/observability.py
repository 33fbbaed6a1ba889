"""What the query node tells operators about each HTTP request: request ids and metrics.

ASGI middlewares, so they see every request, also those that fail before a
route (404, 401) or with an unhandled error (recorded as 5xx). Routes are
labelled by their template (``/v1/table/{name}/query/``), never by the raw
path, so label cardinality stays bounded by the API itself. Each request gets
an id (the client's ``x-request-id``, else a new one), returned in the
response's ``x-request-id`` header and carried by every log line of the request.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import FastAPI

from lancedb_ray.api.asgi import HttpMiddleware, Message, ResponseStatus, Send, on_response_start
from lancedb_ray.logging_setup import REQUEST, RequestInfo
from lancedb_ray.metrics import Metric, MetricSet

REQUEST_ID_HEADER = "x-request-id"

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a path no route serves

METRICS = MetricSet(
    "api",
    {
        "requests_total": Metric("Counter", "HTTP requests by route template, method and status class.",
                                 ("route", "method", "status_class")),
        "request_seconds": Metric("Histogram", "HTTP request latency by route template and method.",
                                  ("route", "method"), _SECONDS),
    },
)


def install_observability(app: FastAPI) -> None:
    """Wrap ``app`` so that every request is counted and timed, and has an id in its logs."""
    app.add_middleware(RequestMetrics)
    app.add_middleware(RequestContext)  # outermost of the two: the id is set before anything logs


class RequestContext(HttpMiddleware):
    """Binds the request's id and database for logging, and returns the id in a header."""

    async def handle(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        request_id = headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        token = REQUEST.set(RequestInfo(request_id, headers.get("x-lancedb-database"), scope))

        def with_id(message: Message) -> Message:
            kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
            return {**message, "headers": [*kept, (b"x-request-id", request_id.encode("latin-1"))]}

        try:
            await self.app(scope, receive, on_response_start(send, with_id))
        finally:
            REQUEST.reset(token)


class RequestMetrics(HttpMiddleware):
    """Counts and times each request by the template of the route that served it."""

    async def handle(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        started = time.monotonic()
        status = ResponseStatus(500)  # if the app raises before answering, the server answers 500
        try:
            await self.app(scope, receive, on_response_start(send, status))
        finally:
            route = route_template(scope)
            method = scope["method"] if scope["method"] in _METHODS else "other"
            METRICS.inc("requests_total", route=route, method=method,
                        status_class=f"{status.value // 100}xx")
            METRICS.observe("request_seconds", time.monotonic() - started, route=route, method=method)


def route_template(scope: dict[str, Any]) -> str:
    """The path template of the route that matched (routing stores it in the scope)."""
    route = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED
