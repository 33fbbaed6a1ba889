"""A client's ``create_index``, built as a job of the agent on a Ray task instead of in the request.

A vector index on a table of at least ``agent.segment_min_rows`` rows is built
by the indexers (trained once, on a GPU worker when there is one, then in
segments; ``agent.execute``). Anything else is lancedb's own build
(``service.indexes.apply_create_index``, the same calls the request path made),
so the index and its recorded parameters are what they were; what changes is
where it runs: a watched Ray task with the cluster-derived request
(``lancedb_ray.resources``), reporting why it waits, on whatever node has room,
while the query node answers the client.
"""

from __future__ import annotations

from typing import Any

from lancedb_ray.indexers.runtime import JobContext, run_one, watched
from lancedb_ray.indexers.vector import VECTOR_INDEX_TYPES
from lancedb_ray.settings import StorageSettings

_SEGMENTED_PARAMS = ("num_partitions", "num_sub_vectors", "num_bits", "sample_rate", "max_iterations",
                     "m", "ef_construction", "target_partition_size")


def segmented_build_params(request: dict[str, Any]) -> dict[str, Any] | None:
    """``run_vector_build``'s index type and params for a vector index request; None for other kinds."""
    index_type = (request.get("index_type") or ("IVF_PQ" if request.get("metric_type") else "")).upper()
    if index_type not in VECTOR_INDEX_TYPES:
        return None
    params = {key: request[key] for key in _SEGMENTED_PARAMS if request.get(key) is not None}
    return {"index_type": index_type, "metric": request.get("metric_type") or "l2", **params}


def build_requested_index(storage: StorageSettings, database: str, table: str, request: dict[str, Any],
                          ctx: JobContext) -> int:
    """Build the index ``request`` (a ``CreateIndexRequest`` as a dict) asks for; the new version."""
    options = ctx.resources.options()
    return run_one(lambda: _build.options(**options).remote(storage, database, table, request),
                   "create_index", ctx, step="building the index")


@watched
def _build(storage: StorageSettings, database: str, table: str, request: dict[str, Any]) -> int:
    from lancedb_ray.protocol import CreateIndexRequest
    from lancedb_ray.service.indexes import apply_create_index, check_create_index
    from lancedb_ray.storage.catalog import StorageCatalog
    from lancedb_ray.storage.connections import Connections
    from lancedb_ray.storage.lance_errors import lance_errors
    from lancedb_ray.types import TableRef

    ref = TableRef.parse(database, table)
    body = CreateIndexRequest.model_validate(request)
    opened = Connections(StorageCatalog(storage), 0.0).table(ref)
    index_type = check_create_index(opened.schema, body)
    with lance_errors(f"create_index on '{ref.qualified_name}'", database):
        apply_create_index(opened, index_type, body)
    return opened.version
