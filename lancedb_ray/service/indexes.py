"""Index creation, listing, statistics and removal."""

from __future__ import annotations

import json
from typing import Any

from lancedb_ray.errors import InvalidInput, NotFound
from lancedb_ray.protocol import CreateIndexRequest
from lancedb_ray.service.tables import TableService
from lancedb_ray.storage.connections import Connections
from lancedb_ray.storage.lance_errors import lance_errors
from lancedb_ray.storage.names import validate_name
from lancedb_ray.types import TableRef

VECTOR_INDEX_TYPES = {
    "IVF_FLAT", "IVF_SQ", "IVF_PQ", "IVF_RQ", "IVF_HNSW_SQ", "IVF_HNSW_PQ", "IVF_HNSW_FLAT"
}
SCALAR_INDEX_TYPES = {"BTREE", "BITMAP", "LABEL_LIST"}
FTS_INDEX_TYPES = {"FTS", "INVERTED"}
_VECTOR_OPTIONS = (
    "num_partitions", "num_sub_vectors", "num_bits", "sample_rate", "max_iterations",
    "m", "ef_construction", "target_partition_size",
)


class IndexService:
    def __init__(self, connections: Connections, tables: TableService) -> None:
        self._connections = connections
        self._tables = tables

    def create(self, ref: TableRef, body: CreateIndexRequest, request_id: str | None) -> None:
        if body.name is not None:
            validate_name("index", body.name)
        index_type = (body.index_type or ("IVF_PQ" if body.metric_type else "")).upper()
        table = self._connections.table(ref)
        if body.column not in table.schema.names:
            raise InvalidInput(
                f"cannot index column '{body.column}': the table's columns are {table.schema.names}"
            )
        with lance_errors(f"create_index on '{ref.qualified_name}'", ref.database):
            if index_type in VECTOR_INDEX_TYPES:
                options = {k: getattr(body, k) for k in _VECTOR_OPTIONS if getattr(body, k) is not None}
                table.create_index(
                    metric=body.metric_type or "l2",
                    vector_column_name=body.column,
                    index_type=index_type,
                    replace=body.replace,
                    name=body.name,
                    **options,
                )
            elif index_type in SCALAR_INDEX_TYPES:
                table.create_scalar_index(
                    body.column, index_type=index_type, replace=body.replace, name=body.name
                )
            elif index_type in FTS_INDEX_TYPES:
                table.create_fts_index(
                    body.column,
                    replace=body.replace,
                    with_position=body.with_position,
                    base_tokenizer=body.base_tokenizer,
                    language=body.language,
                    max_token_length=body.max_token_length,
                    lower_case=body.lower_case,
                    stem=body.stem,
                    remove_stop_words=body.remove_stop_words,
                    custom_stop_words=body.custom_stop_words,
                    ascii_folding=body.ascii_folding,
                    ngram_min_length=body.min_ngram_length,
                    ngram_max_length=body.max_ngram_length,
                    prefix_only=body.prefix_only,
                    block_size=body.block_size,
                    name=body.name,
                )
            else:
                known = sorted(VECTOR_INDEX_TYPES | SCALAR_INDEX_TYPES | FTS_INDEX_TYPES)
                raise InvalidInput(f"unknown index type '{body.index_type}': use one of {known}")
        self._tables.notify(ref, table.version, "create_index", request_id)

    def list(self, ref: TableRef, version: int | None) -> dict[str, Any]:
        table = self._connections.table(ref, version)
        with lance_errors(f"indices of '{ref.qualified_name}'", ref.database):
            indexes = table.list_indices()
        return {"indexes": [_described(i) for i in indexes]}

    def stats(self, ref: TableRef, name: str) -> dict[str, Any]:
        validate_name("index", name)
        table = self._connections.table(ref)
        with lance_errors(f"index '{name}' of '{ref.qualified_name}'", ref.database):
            stats = table.index_stats(name)
        if stats is None:
            raise NotFound(f"index '{name}' was not found on table '{ref.qualified_name}'")
        return {
            "num_indexed_rows": stats.num_indexed_rows,
            "num_unindexed_rows": stats.num_unindexed_rows,
            "index_type": stats.index_type,
            "distance_type": stats.distance_type,
            "num_indices": stats.num_indices,
        }

    def prewarm(self, ref: TableRef, name: str) -> None:
        """Load the index into this query node's lance cache, as embedded ``prewarm_index``."""
        table = self._connections.table(ref)
        if name not in {i.name for i in table.list_indices()}:
            raise NotFound(f"index '{name}' was not found on table '{ref.qualified_name}'")
        with lance_errors(f"prewarm of index '{name}' on '{ref.qualified_name}'", ref.database):
            table.prewarm_index(name)

    def drop(self, ref: TableRef, name: str, request_id: str | None) -> None:
        validate_name("index", name)
        table = self._connections.table(ref)
        if name not in {i.name for i in table.list_indices()}:
            raise NotFound(f"index '{name}' was not found on table '{ref.qualified_name}'")
        with lance_errors(f"drop_index '{name}' on '{ref.qualified_name}'", ref.database):
            table.drop_index(name)
        self._tables.notify(ref, lambda: table.version, "drop_index", request_id)


def _described(index: Any) -> dict[str, Any]:
    """One entry of ``index/list``: ``index_details`` is a JSON string, as the client parses it
    (its FTS tokenizer settings are what ``tokenize()`` rebuilds the tokenizer from)."""
    described = {"index_name": index.name, "columns": list(index.columns),
                 "index_type": index.index_type, "index_uuid": index.index_uuid}
    if index.index_details is not None:
        described["index_details"] = json.dumps(index.index_details)
    return described
