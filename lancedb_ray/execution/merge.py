"""Merging sub-plan results into the answer the client asked for."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from lancedb_ray.execution.plan import MATCH_COLUMN, ORDER_COLUMN
from lancedb_ray.protocol import QueryRequest


def merge_nearest(results: list[pa.Table], query: QueryRequest) -> pa.Table:
    """Global top-k of the local top-ks; a post-filter applies to that top-k.

    ``order_by`` re-orders that top-k (offset included) before the offset, as lance does.
    """
    merged = pa.concat_tables(results, promote_options="default")
    offset = query.offset or 0
    limit = query.limit if query.limit is not None else 10
    if merged.num_rows:
        merged = merged.sort_by([("_distance", "ascending")])
    merged = merged.slice(0, limit + offset)
    if MATCH_COLUMN in merged.schema.names:
        merged = merged.filter(merged.column(MATCH_COLUMN)).drop_columns([MATCH_COLUMN])
    return order(merged, query).slice(offset, limit)


def merge_scan(results: list[pa.Table], query: QueryRequest) -> pa.Table:
    """Buckets in fragment order (or merged by ``order_by``), then the client's offset and limit."""
    merged = order(pa.concat_tables(results, promote_options="default"), query)
    offset = query.offset or 0
    return merged.slice(offset, query.limit) if query.limit is not None else merged.slice(offset)


def order(table: pa.Table, query: QueryRequest) -> pa.Table:
    """Sort by the query's ``order_by`` keys (carried as ``ORDER_COLUMN<i>``), then drop them.

    Each key's nulls go first or last on their own: an is-null key ahead of each value key
    places them, so the sort never has to place a null. The sort is stable, so ties keep
    bucket order (lance leaves the order of ties undefined).
    """
    if not query.order_by:
        return table
    keys, helpers = [], {}
    for i, ordering in enumerate(query.order_by):
        name = f"{ORDER_COLUMN}{i}"
        nulls = f"{name}_isnull"
        helpers[nulls] = pc.is_null(table.column(name))
        keys.append((nulls, "descending" if ordering.nulls_first else "ascending"))
        keys.append((name, "ascending" if ordering.ascending else "descending"))
    carried = [c for c in table.schema.names if c.startswith(ORDER_COLUMN)]
    keyed = table
    for name, column in helpers.items():
        keyed = keyed.append_column(name, column)
    indices = pc.sort_indices(keyed, sort_keys=keys)
    return table.take(indices).drop_columns(carried)
