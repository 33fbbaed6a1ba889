"""Every path no other router serves: the protocol's operations this server lacks answer 501
naming them, any other path 400.

Without these, FastAPI's 404 would reach the client, which reports any 404 on a
table path as "Table not found". Included last, so every implemented route wins.
``docs/routes.md`` lists the operations and their state.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from lancedb_ray.api.context import authenticate
from lancedb_ray.errors import InvalidInput, Unsupported

router = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)])
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
# First path segment of the table operations lancedb 0.40 / @lancedb/lancedb 0.31-0.39 send
# that this server does not implement (rust/lancedb/src/remote/table.rs).
UNSUPPORTED_TABLE_OPERATIONS = frozenset({
    "branches", "backfill_column", "fetch_blobs", "blob", "get_lsm_stats",
    "get_lsm_write_spec", "set_lsm_write_spec", "unset_lsm_write_spec", "flush_lsm", "compact_lsm",
})
UNSUPPORTED_AREAS = frozenset({"jobs", "functions"})


def _answer(operation: str, supported_elsewhere: bool) -> None:
    if supported_elsewhere:
        raise Unsupported(f"'{operation}' is not supported by this server (lancedb-ray)")
    raise InvalidInput(f"unknown operation '{operation}'")


@router.api_route("/table/{table_id}/{operation:path}", methods=_METHODS)
async def table_operation(table_id: str, operation: str) -> None:
    operation = operation.strip("/")
    _answer(operation, operation.split("/", 1)[0] in UNSUPPORTED_TABLE_OPERATIONS)


@router.api_route("/{area}/{operation:path}", methods=_METHODS)
async def other_operation(area: str, operation: str) -> None:
    _answer(f"{area}/{operation.strip('/')}", area in UNSUPPORTED_AREAS)
