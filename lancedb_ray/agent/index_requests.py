"""A client's ``create_index``, built as a job of the agent on a Ray task instead of in the request.

The build is lancedb's own (``service.indexes.apply_create_index``, the same
calls the request path made), so the index and its recorded parameters are
what they were; what changes is where it runs: a watched Ray task with the
cluster-derived request (``lancedb_ray.resources``), reporting why it waits,
on whatever node has room, while the query node answers the client.
"""

from __future__ import annotations

from typing import Any

from lancedb_ray.indexers.runtime import JobContext, run_one, watched
from lancedb_ray.settings import StorageSettings


def build_requested_index(storage: StorageSettings, database: str, table: str, request: dict[str, Any],
                          ctx: JobContext) -> int:
    """Build the index ``request`` (a ``CreateIndexRequest`` as a dict) asks for; the new version."""
    options = ctx.resources.options()
    return run_one(lambda: _build.options(**options).remote(storage, database, table, request),
                   "create_index", ctx, step="building the index")


@watched
def _build(storage: StorageSettings, database: str, table: str, request: dict[str, Any]) -> int:
    from lancedb_ray.service.connections import Connections
    from lancedb_ray.service.indexes import apply_create_index, check_create_index
    from lancedb_ray.service.lance_errors import lance_errors
    from lancedb_ray.service.protocol import CreateIndexRequest
    from lancedb_ray.storage.catalog import StorageCatalog
    from lancedb_ray.types import TableRef

    ref = TableRef.parse(database, table)
    body = CreateIndexRequest.model_validate(request)
    opened = Connections(StorageCatalog(storage), 0.0).table(ref)
    index_type = check_create_index(opened.schema, body)
    with lance_errors(f"create_index on '{ref.qualified_name}'", database):
        apply_create_index(opened, index_type, body)
    return opened.version
