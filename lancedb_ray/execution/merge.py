"""Merging sub-plan results into the answer the client asked for."""

from __future__ import annotations

import pyarrow as pa

from lancedb_ray.execution.plan import MATCH_COLUMN
from lancedb_ray.protocol import QueryRequest


def merge_nearest(results: list[pa.Table], query: QueryRequest) -> pa.Table:
    """Global top-k of the local top-ks; a post-filter applies to that top-k."""
    merged = pa.concat_tables(results, promote_options="default")
    offset = query.offset or 0
    limit = query.limit if query.limit is not None else 10
    if merged.num_rows:
        merged = merged.sort_by([("_distance", "ascending")])
    merged = merged.slice(0, limit + offset)
    if MATCH_COLUMN in merged.schema.names:
        merged = merged.filter(merged.column(MATCH_COLUMN)).drop_columns([MATCH_COLUMN])
    return merged.slice(offset, limit)


def merge_scan(results: list[pa.Table], query: QueryRequest) -> pa.Table:
    """Buckets in fragment order, then the client's offset and limit."""
    merged = pa.concat_tables(results, promote_options="default")
    offset = query.offset or 0
    return merged.slice(offset, query.limit) if query.limit is not None else merged.slice(offset)
