"""Running one sub-plan on an executor, against its cache or the source table.

Plain functions of (sub-plan, dataset opener, cache), so they run and are
tested without Ray; the actor in ``executor_actor`` only holds the state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
from lance.dataset import ColumnOrdering, LanceDataset

from lancedb_ray.execution.cache import FragmentCache
from lancedb_ray.execution.plan import (
    MATCH_COLUMN,
    ORDER_COLUMN,
    SOURCE_ROWID,
    SubPlan,
    SubPlanKind,
)
from lancedb_ray.protocol import QueryRequest

OpenDataset = Callable[[SubPlan], LanceDataset]


def run(plan: SubPlan, open_dataset: OpenDataset, cache: FragmentCache) -> pa.Table | int:
    if plan.kind is SubPlanKind.INDEX_SEGMENT:
        return _index_segment(plan, open_dataset(plan))
    if plan.cache_key is None:  # on the source, through its scalar index
        return _on_source(plan, open_dataset(plan))
    copy = cached_copy(plan, open_dataset, cache)
    if plan.kind is SubPlanKind.COUNT:
        return copy.count_rows(plan.query.filter or None)
    if plan.kind is SubPlanKind.FLAT:
        return _flat(plan, copy)
    if plan.kind is SubPlanKind.SCAN:
        return _scan(plan, copy)
    raise ValueError(f"sub-plan kind {plan.kind} does not run on a cached copy")


def cached_copy(plan: SubPlan, open_dataset: OpenDataset, cache: FragmentCache) -> LanceDataset:
    """The bucket's copy, read from storage only on a miss."""
    assert plan.cache_key is not None

    def load() -> pa.Table:
        source = open_dataset(plan)
        fragments = [source.get_fragment(fid) for fid in plan.fragment_ids]
        table = source.scanner(fragments=fragments, with_row_id=True).to_table()
        return table.rename_columns([SOURCE_ROWID if c == "_rowid" else c for c in table.schema.names])

    return cache.get(plan.cache_key, load)


def _nearest(plan: SubPlan, use_index: bool) -> dict[str, Any]:
    query = plan.query
    nearest: dict[str, Any] = {
        "column": query.vector_column,
        "q": plan.vector,
        "k": plan.local_limit,
        "use_index": use_index,
    }
    if query.distance_type:
        nearest["metric"] = query.distance_type
    if query.lower_bound is not None or query.upper_bound is not None:
        nearest["distance_range"] = (query.lower_bound, query.upper_bound)
    if use_index:
        for name in ("minimum_nprobes", "maximum_nprobes", "refine_factor", "ef"):
            if getattr(query, name) is not None:
                nearest[name] = getattr(query, name)
        if query.nprobes is not None and query.minimum_nprobes is None:
            nearest["nprobes"] = query.nprobes
        # Lance re-ranks a whole-table ANN result with exact distances; a segment
        # search must do the same, or its approximate distances would not merge
        # with the flat sub-plans' exact ones.
        nearest["refine_factor"] = query.refine_factor or 1
    return nearest


def _filters(query: QueryRequest) -> tuple[dict[str, Any], str | None]:
    """Scanner filter arguments, and the post-filter to evaluate as a column instead.

    A post-filter must apply to the global top-k, not to each sub-plan's, so the
    sub-plan returns its unfiltered top-k with the filter's verdict beside it.
    """
    if not query.filter:
        return {}, None
    if query.prefilter:
        return {"filter": query.filter, "prefilter": True}, None
    return {}, query.filter


def _projection(
    query: QueryRequest, all_columns: list[str], rowid: str | None, match: str | None
) -> list[str] | dict[str, str]:
    columns = query.columns
    if columns is None:
        columns = [c for c in all_columns if c != SOURCE_ROWID]
    extra = {rowid: rowid} if rowid else {}
    if match:
        extra[MATCH_COLUMN] = f"coalesce(({match}), false)"
    # The merge sorts by the order_by keys, projected or not.
    for i, ordering in enumerate(query.order_by or []):
        extra[f"{ORDER_COLUMN}{i}"] = ordering.column_name
    if isinstance(columns, dict):
        return {**columns, **extra}
    if match or query.order_by:
        return {**{c: c for c in columns}, **extra}
    return [*columns, *extra]


def _index_segment(plan: SubPlan, source: LanceDataset) -> pa.Table:
    filters, match = _filters(plan.query)
    return source.scanner(
        nearest=_nearest(plan, use_index=True),
        index_segments=[plan.index_segment],
        fast_search=True,
        columns=_projection(plan.query, source.schema.names, None, match),
        with_row_id=plan.query.with_row_id,
        **filters,
    ).to_table()


def _flat(plan: SubPlan, copy: LanceDataset) -> pa.Table:
    filters, match = _filters(plan.query)
    rowid = SOURCE_ROWID if plan.query.with_row_id else None
    result = copy.scanner(
        nearest=_nearest(plan, use_index=False),
        columns=_projection(plan.query, copy.schema.names, rowid, match),
        **filters,
    ).to_table()
    return _restore_rowid(result)


def _scan(plan: SubPlan, copy: LanceDataset) -> pa.Table:
    rowid = SOURCE_ROWID if plan.query.with_row_id else None
    result = copy.scanner(
        filter=plan.query.filter or None,
        columns=_projection(plan.query, copy.schema.names, rowid, None),
        limit=plan.local_limit,
        order_by=_orderings(plan.query),
    ).to_table()
    return _restore_rowid(result)


def _orderings(query: QueryRequest) -> list[ColumnOrdering] | None:
    """The bucket's rows in ``order_by`` order, so its local limit keeps the right ones."""
    if not query.order_by:
        return None
    return [ColumnOrdering(o.column_name, o.ascending, o.nulls_first) for o in query.order_by]


def _on_source(plan: SubPlan, source: LanceDataset) -> pa.Table | int:
    if plan.kind is SubPlanKind.COUNT:
        return source.count_rows(plan.query.filter or None)
    if plan.kind is not SubPlanKind.SCAN:
        raise ValueError(f"sub-plan kind {plan.kind} does not run on the source")
    return source.scanner(
        filter=plan.query.filter or None,
        columns=_projection(plan.query, source.schema.names, None, None),
        with_row_id=plan.query.with_row_id,
        limit=plan.local_limit,
        order_by=_orderings(plan.query),
    ).to_table()


def _restore_rowid(table: pa.Table) -> pa.Table:
    """Present the source row id as ``_rowid``, last, as lance does."""
    if SOURCE_ROWID not in table.schema.names:
        return table
    rowids = table.column(SOURCE_ROWID)
    return table.drop_columns([SOURCE_ROWID]).append_column("_rowid", rowids)
