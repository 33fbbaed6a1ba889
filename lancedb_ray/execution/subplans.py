"""Running one sub-plan on an executor, against its cache or the source table.

Plain functions of (sub-plan, dataset opener, cache), so they run and are
tested without Ray; the actor in ``executor_actor`` only holds the state.
"""

from __future__ import annotations

import hashlib
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import lance
import numpy as np
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
from lancedb_ray.execution.sql import filter_columns
from lancedb_ray.protocol import QueryRequest
from lancedb_ray.settings import on_object_store

OpenDataset = Callable[[SubPlan], LanceDataset]


def run(plan: SubPlan, open_dataset: OpenDataset, cache: FragmentCache) -> pa.Table | int:
    if plan.kind is SubPlanKind.INDEX_SEGMENT:
        source = open_dataset(plan)
        if _refines_from_cache(plan, source, cache):
            found = _index_segment_refined_from_cache(plan, source, cache)
            if found is not None:
                return found
        return _index_segment(plan, source)
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
    """The bucket's copy, read from storage only on a miss.

    A copy of every column (prewarmed, or loaded by a query that projects them all) serves any
    sub-plan; otherwise the copy holds only the columns this sub-plan projects or filters on.
    """
    assert plan.cache_key is not None
    whole = cache.peek(plan.cache_key)
    if whole is not None:
        return whole
    source = open_dataset(plan)
    columns = _read_columns(plan, source.schema.names)
    key = plan.cache_key if columns is None else _copy_key(plan, columns)

    def load() -> pa.Table:
        fragments = [source.get_fragment(fid) for fid in plan.fragment_ids]
        table = source.scanner(fragments=fragments, columns=columns, with_row_id=True).to_table()
        return table.rename_columns([SOURCE_ROWID if c == "_rowid" else c for c in table.schema.names])

    return cache.get(key, load)


def _read_columns(plan: SubPlan, names: list[str]) -> list[str] | None:
    """The columns a bucket sub-plan reads, in table order; None: all of them (or unsure)."""
    query = plan.query
    texts = [query.filter] if query.filter else []
    if isinstance(query.columns, dict):
        projected: list[str] = []
        texts += list(query.columns.values())
    elif query.columns is not None:
        projected = list(query.columns)
    elif plan.kind is SubPlanKind.COUNT and query.filter:
        projected = []
    else:
        return None
    ordered = [o.column_name for o in query.order_by or []]  # the merge sorts on these
    if not set(projected + ordered) <= set(names):
        return None  # unknown names: let lance read (and name) them on the whole copy
    needed = set(projected + ordered).union(*(filter_columns(text, names) for text in texts))
    if plan.kind is SubPlanKind.FLAT and query.vector_column:
        needed.add(query.vector_column)
    return [c for c in names if c in needed]


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


def _refines_from_cache(plan: SubPlan, source: LanceDataset, cache: FragmentCache) -> bool:
    """Whether the segment's re-ranking can read its vectors from the cache instead of storage.

    Filters, distance ranges and computed projections keep lance's own path; so does a segment
    whose copy (vectors and projected columns) would not fit in half the memory budget.
    """
    query = plan.query
    if not on_object_store(plan.dataset.uri):
        return False  # lance's refine reads a local disk through the page cache, faster than a copy
    if query.refine_factor is None:  # no re-ranking: lance reads no vectors either
        return False
    if plan.cache_key is None or query.filter or isinstance(query.columns, dict):
        return False
    if query.lower_bound is not None or query.upper_bound is not None:
        return False
    rows = sum(source.get_fragment(fid).metadata.physical_rows for fid in plan.fragment_ids)
    width = len(plan.vector or ()) * 4 + 16 * (len(query.columns or source.schema.names) + 1)
    return rows * width <= cache.memory_budget // 2


def _index_segment_refined_from_cache(plan: SubPlan, source: LanceDataset, cache: FragmentCache
                                      ) -> pa.Table | None:
    """ANN candidates from the index alone (no data read), re-ranked on cached vectors.

    Lance's refine takes ``k * refine_factor`` candidates from the index and ranks them by
    exact distance, reading each candidate's vector from storage. Here the candidates come
    from the same index search without refine, and lance's own flat search ranks them on
    the segment's cached copy: the same rows and distances, without a storage request.
    None when the copy does not hold every candidate (the caller takes lance's path).
    """
    query = plan.query
    column = query.vector_column
    assert column is not None and plan.local_limit is not None
    # All columns in the table's order (as lance returns them), or the vector and the projection.
    loaded = source.schema.names if query.columns is None else \
        [column, *[c for c in query.columns if c != column]]
    copy = cache.get(_copy_key(plan, loaded), lambda: _segment_rows(plan, source, loaded))
    nearest = _nearest(plan, use_index=True)
    nearest.pop("refine_factor", None)
    nearest["k"] = plan.local_limit * query.refine_factor
    candidates = source.scanner(nearest=nearest, index_segments=[plan.index_segment], fast_search=True,
                                columns=[], with_row_id=True).to_table()
    rowids = _rowids(copy)
    wanted_ids = candidates.column("_rowid").to_numpy()
    positions = np.searchsorted(rowids, wanted_ids)
    if not len(positions) or positions.max() >= len(rowids) or (rowids[positions] != wanted_ids).any():
        return None
    rows = copy.take(positions.tolist())
    ranked = lance.write_dataset(rows, f"memory://rerank-{uuid.uuid4().hex}")
    exact: dict[str, Any] = {"column": column, "q": plan.vector, "k": plan.local_limit,
                             "use_index": False}
    if query.distance_type:  # decided once for the whole query by the planner
        exact["metric"] = query.distance_type
    rowid = SOURCE_ROWID if query.with_row_id else None
    result = ranked.scanner(
        nearest=exact, columns=_projection(query, copy.schema.names, rowid, None),
    ).to_table()
    return _restore_rowid(result)


def _copy_key(plan: SubPlan, columns: list[str]) -> str:
    assert plan.cache_key is not None
    return hashlib.blake2b("\n".join([plan.cache_key, *columns]).encode(), digest_size=16).hexdigest()


def _segment_rows(plan: SubPlan, source: LanceDataset, columns: list[str]) -> pa.Table:
    """The segment's rows (vector and projected columns), in row id order."""
    fragments = [source.get_fragment(fid) for fid in plan.fragment_ids]
    table = source.scanner(fragments=fragments, columns=columns, with_row_id=True).to_table()
    table = table.rename_columns([SOURCE_ROWID if c == "_rowid" else c for c in table.schema.names])
    return table.sort_by(SOURCE_ROWID)


_ROWIDS: weakref.WeakKeyDictionary[LanceDataset, np.ndarray] = weakref.WeakKeyDictionary()


def _rowids(copy: LanceDataset) -> np.ndarray:
    """A cached copy's source row ids, sorted (read once per copy)."""
    found = _ROWIDS.get(copy)
    if found is None:
        found = copy.to_table(columns=[SOURCE_ROWID]).column(SOURCE_ROWID).to_numpy()
        _ROWIDS[copy] = found
    return found


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
