"""Per-request facts from headers and bodies: the database, the request id, the key."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TypeVar

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from lancedb_ray.api.arrow_io import read_arrow_stream
from lancedb_ray.api.auth import authorize, identify, required_role
from lancedb_ray.api.ipc_guard import IpcLimits
from lancedb_ray.api.json_io import parse_object
from lancedb_ray.api.quotas import GUARD, quotas_of
from lancedb_ray.errors import InvalidInput, PayloadTooLarge, Unavailable
from lancedb_ray.service.container import Services
from lancedb_ray.settings import ApiKey, Quotas, Role

Body = TypeVar("Body", bound=BaseModel)


_services: Services | None = None


def install_services(services: Services) -> None:
    """Give this process's app its services (one query node app per process).

    Module state rather than ``app.state``: Serve's ingress serves a wrapped
    app, so the app object a replica configures is not ``request.app``.
    """
    global _services
    _services = services


def services(request: Request) -> Services:
    if _services is None:
        raise Unavailable("the query node is starting")
    return _services


def authenticate(request: Request) -> Iterator[ApiKey]:
    """The dependency of every API route: who calls, may they call this route here, and
    is their key within its quotas (a write holds one of its table's write slots).

    The key is kept on ``request.state`` for the audit log, listings and body limits.
    """
    settings = services(request).settings
    key = identify(settings, request.headers.get("x-api-key"))
    request.state.api_key = key
    database = None if request.url.path.startswith("/v1/admin/") else request.headers.get(
        "x-lancedb-database")
    role = required_role(request)
    authorize(key, role, database or None)
    quotas = quotas_of(key, settings)
    GUARD.admit(key, quotas)
    table = request.path_params.get("table_id")
    if role is Role.WRITE and database and table and not _stages_a_part(request):
        with GUARD.write_slot(key, quotas, database, table):
            yield key
    else:
        yield key


def _stages_a_part(request: Request) -> bool:
    """A part of a multipart write commits nothing (its ``complete`` does), so it takes no write
    slot: the client sends its parts in parallel and restarts the whole upload if one is refused."""
    return "upload_id" in request.query_params and request.url.path.endswith("/insert/")


def key_quotas(request: Request) -> Quotas:
    """The quotas of the request's key (authenticated before any body is read)."""
    return quotas_of(request.state.api_key, services(request).settings)


def database(request: Request) -> str:
    name = request.headers.get("x-lancedb-database")
    if not name:
        raise InvalidInput("missing x-lancedb-database header (connect with db://<database>)")
    return name


def freshness(request: Request) -> tuple[int | None, float | None]:
    """The read-freshness headers: (lowest version to serve, earliest moment to have opened at).

    ``x-lancedb-min-version`` (the handle's own writes) and ``x-lancedb-min-read-version``
    (the highest version it has read) are both lower bounds; ``x-lancedb-min-timestamp``
    (RFC 3339) is the moment of the client's ``checkout_latest()``.
    """
    versions = []
    for header in ("x-lancedb-min-version", "x-lancedb-min-read-version"):
        value = request.headers.get(header)
        if value is not None:
            try:
                versions.append(int(value))
            except ValueError as exc:
                raise InvalidInput(f"header '{header}' must be an integer, got '{value}'") from exc
    moment = None
    stamp = request.headers.get("x-lancedb-min-timestamp")
    if stamp is not None:
        try:
            moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError as exc:
            raise InvalidInput(f"header 'x-lancedb-min-timestamp' is not RFC 3339: '{stamp}'") from exc
    return (max(versions) if versions else None), moment


def request_id(request: Request) -> str | None:
    return request.headers.get("x-request-id")


async def read_body(request: Request) -> bytes:
    """The whole body, refusing more than the configured limit (uploads are chunked)."""
    limit = min(services(request).settings.server.max_body_bytes, key_quotas(request).max_body_bytes)
    declared = request.headers.get("content-length")
    if declared and not declared.isdigit():
        raise InvalidInput(f"content-length '{declared[:40]}' is not a number of bytes")
    if declared and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request, model: type[Body]) -> Body:
    """Parse a JSON body into ``model``; an empty body means all defaults."""
    raw = await read_body(request)
    data = parse_object(raw, services(request).settings.server.max_json_depth)
    return model.model_validate(data)


def is_arrow(request: Request) -> bool:
    return "arrow" in request.headers.get("content-type", "")


async def arrow_body(request: Request):
    content_type = request.headers.get("content-type", "")
    if "arrow" not in content_type:
        raise InvalidInput(
            f"expected an Arrow IPC stream (application/vnd.apache.arrow.stream), got "
            f"'{content_type or 'no content type'}'"
        )
    server = services(request).settings.server
    limits = IpcLimits(server.max_body_rows, server.max_decoded_bytes, server.max_compression_ratio)
    return await run_in_threadpool(read_arrow_stream, await read_body(request), limits)
