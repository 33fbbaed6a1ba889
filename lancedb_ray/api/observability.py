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


class RequestContext:
    """Binds the request's id and database for logging, and returns the id in a header."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        request_id = headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        token = REQUEST.set(RequestInfo(request_id, headers.get("x-lancedb-database"), scope))

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*kept, (b"x-request-id", request_id.encode("latin-1"))]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST.reset(token)


class RequestMetrics:
    """Counts and times each request by the template of the route that served it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500  # if the app raises before answering, the server answers 500

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = route_template(scope)
            method = scope["method"] if scope["method"] in _METHODS else "other"
            METRICS.inc("requests_total", route=route, method=method, status_class=f"{status // 100}xx")
            METRICS.observe("request_seconds", time.monotonic() - started, route=route, method=method)


def route_template(scope: dict[str, Any]) -> str:
    """The path template of the route that matched (routing stores it in the scope)."""
    route = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED
