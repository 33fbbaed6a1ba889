"""Distributed query plans: one query becomes sub-plans over cache partitions.

A vector query becomes one sub-plan per index segment plus flat-search
sub-plans over the fragments no segment covers, grouped into fragment buckets;
a filtered scan or a count becomes one sub-plan per bucket; a full-text query
(whose BM25 scores need whole-table statistics) is one sub-plan on the owner
of the table's text index. Buckets are ``fragment_id // fragments_per_group``,
so appending fragments never moves existing ones to another partition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import TypeVar

from lance.dataset import LanceDataset

from lancedb_ray.execution.cache import content_key
from lancedb_ray.execution.sql import filter_columns, lance_query, lance_sql
from lancedb_ray.execution.vectors import resolve_vector_column
from lancedb_ray.protocol import QueryRequest
from lancedb_ray.types import TableRef, is_vector_index

MATCH_COLUMN = "__lancedb_ray_match"  # post-filter verdict carried to the merge
SOURCE_ROWID = "__lancedb_ray_rowid"  # a cached copy's record of the source row id
ORDER_COLUMN = "__lancedb_ray_order_"  # + key position: an order_by key carried to the merge
T = TypeVar("T")
# Scalar indices lance uses to answer SQL filters (full-text and vector indices do not).
SCALAR_FILTER_INDEXES = frozenset({"BTREE", "BITMAP", "LABELLIST", "LABEL_LIST"})


class SubPlanKind(str, Enum):
    INDEX_SEGMENT = "index_segment"  # ANN search on one vector index segment
    FLAT = "flat"  # exact vector search over a bucket of unindexed fragments
    SCAN = "scan"  # filtered scan over a bucket
    COUNT = "count"  # count over a bucket
    WHOLE_QUERY = "whole_query"  # the query as embedded lancedb runs it (full text)


@dataclass(frozen=True)
class DatasetRef:
    """A table at one version, as an executor opens it.

    No storage options: the executor finds the credentials for ``ref.database`` in its own
    storage catalog, so secrets never travel in sub-plans through Ray's control plane.
    """

    ref: TableRef
    uri: str
    version: int
    # The content of this version (schema and fragments): a table dropped and created
    # again reuses version numbers, so (uri, version) alone could name old data.
    fingerprint: str = ""


@dataclass(frozen=True)
class Snapshot:
    """A table version as the planner sees it: built once per version, then reused.

    What planning derives from it (index segments, bucket layouts) is memoised here too,
    so a warm query's planning does not walk the fragments again.
    """

    dataset: LanceDataset
    fragments: dict[int, str]  # fragment id -> its metadata (files, deletions), in id order
    schema: str
    _memo: dict[tuple, object] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, dataset: LanceDataset) -> Snapshot:
        described = {f.fragment_id: repr(f.metadata) for f in dataset.get_fragments()}
        return cls(dataset, dict(sorted(described.items())), str(dataset.schema))

    @cached_property
    def fingerprint(self) -> str:
        return content_key(self.dataset.uri, self.schema, list(self.fragments.values()))

    def index_segments(self, column: str) -> list[dict]:
        """The vector index segments on ``column``, each with the content key of its fragments."""
        def described() -> list[dict]:
            segments = vector_index_segments(self.dataset, column)
            for segment in segments:
                known = [self.fragments[f] for f in segment["fragment_ids"] if f in self.fragments]
                segment["key"] = content_key(self.dataset.uri, self.schema, [segment["uuid"], *known])
            return segments
        return self._memoised(("segments", column), described)

    def buckets(self, name: tuple, fragment_ids: Callable[[], list[int]], group_size: int
                ) -> list[tuple[int, tuple[int, ...], str]]:
        """(bucket, its fragment ids, its cache key) for the fragments ``name`` stands for."""
        def layout() -> list[tuple[int, tuple[int, ...], str]]:
            return [(bucket, ids, content_key(self.dataset.uri, self.schema,
                                              [self.fragments[f] for f in ids]))
                    for bucket, ids in _buckets(fragment_ids(), group_size)]
        return self._memoised(("buckets", name, group_size), layout)

    @cached_property
    def row_count(self) -> int:
        """Rows of this version, from the manifest (fragment row and deletion counts)."""
        return self.dataset.count_rows()

    @cached_property
    def scalar_indexed_columns(self) -> frozenset[str]:
        return frozenset(
            index.field_names[0] for index in self.dataset.describe_indices()
            if len(index.field_names) == 1 and str(index.index_type).upper() in SCALAR_FILTER_INDEXES
        )

    def answers_from_scalar_index(self, predicate: str | None) -> bool:
        """Whether every column ``predicate`` names has a scalar index: lance's index then finds
        the rows on the source faster than a scan of every cached bucket."""
        if not predicate or not self.scalar_indexed_columns:
            return False
        named = filter_columns(predicate, self.dataset.schema.names)
        return bool(named) and named <= self.scalar_indexed_columns

    def _memoised(self, key: tuple, build: Callable[[], T]) -> T:
        if key not in self._memo:
            self._memo[key] = build()  # a race builds twice, with the same result
        return self._memo[key]  # type: ignore[return-value]


@dataclass(frozen=True)
class SubPlan:
    """One unit of work for an executor.

    The sub-plans of one query share one ``query`` object (and its vector): pickled in
    one batch, that object travels once per executor call, not once per sub-plan.
    """

    kind: SubPlanKind
    dataset: DatasetRef
    partition: str  # the cache partition: decides which executors run it
    query: QueryRequest
    vector: list[float] | None = None
    fragment_ids: tuple[int, ...] = ()
    index_segment: str | None = None
    local_limit: int | None = None  # rows this sub-plan returns (offset included)
    cache_key: str | None = None  # content key of the bucket's (or index segment's) cached copy


def bucket_partition(uri: str, bucket: int) -> str:
    return f"{uri}#fragments/{bucket}"


def plan_query(
    snapshot: Snapshot, target: DatasetRef, query: QueryRequest, group_size: int
) -> list[SubPlan]:
    """Split ``query`` (at most one query vector) into sub-plans."""
    query = lance_query(query)
    if query.full_text_query is not None or _needs_row_ids_in_filter(query):
        return [SubPlan(SubPlanKind.WHOLE_QUERY, target, f"{target.uri}#whole", query)]
    if query.vector:
        return _plan_vector(snapshot, target, query, group_size)
    wanted = None if query.limit is None else query.limit + (query.offset or 0)
    if snapshot.answers_from_scalar_index(query.filter):
        return [_on_source(SubPlanKind.SCAN, target, query, wanted)]
    return _bucket_plans(SubPlanKind.SCAN, snapshot, target, query, None, wanted,
                         ("all",), lambda: list(snapshot.fragments), group_size)


def plan_count(snapshot: Snapshot, target: DatasetRef, predicate: str | None,
               group_size: int) -> list[SubPlan]:
    predicate = lance_sql(predicate) if predicate else predicate
    query = QueryRequest(filter=predicate)
    if snapshot.answers_from_scalar_index(predicate):
        return [_on_source(SubPlanKind.COUNT, target, query, None)]
    return _bucket_plans(SubPlanKind.COUNT, snapshot, target, query, None, None,
                         ("all",), lambda: list(snapshot.fragments), group_size)


def _on_source(kind: SubPlanKind, target: DatasetRef, query: QueryRequest, limit: int | None
               ) -> SubPlan:
    """A scan or count on the source table itself (no cached copy), where its scalar index answers."""
    return SubPlan(kind, target, f"{target.uri}#source", query, local_limit=limit)


def _plan_vector(
    snapshot: Snapshot, target: DatasetRef, query: QueryRequest, group_size: int
) -> list[SubPlan]:
    vector = query.query_vectors[0]
    column = resolve_vector_column(snapshot.dataset.schema, query.vector_column, [vector])
    indexed = snapshot.index_segments(column)
    query = replace_query(query, vector_column=column, distance_type=query_metric(query, indexed))
    wanted = (query.limit or 10) + (query.offset or 0)
    # Lance searches by brute force when the index was built for another metric.
    usable = not query.bypass_vector_index and all(
        segment["metric"] in (None, query.distance_type) for segment in indexed)
    segments = indexed if usable else []

    def unindexed() -> list[int]:
        covered = {fid for segment in segments for fid in segment["fragment_ids"]}
        return [fid for fid in snapshot.fragments if fid not in covered]

    flat: list[SubPlan] = []
    if not (segments and query.fast_search):  # fast_search: indexed data only, as in lance
        name = ("unindexed", column, bool(segments))
        flat = _bucket_plans(SubPlanKind.FLAT, snapshot, target, query, vector, wanted, name,
                             unindexed, group_size)
    # As lance: an index's answer merged with others (unindexed rows, other segments) is re-ranked
    # by exact distance, or approximate and exact distances would mix; a lone index answers with
    # its approximate distances unless the query asks for a refine.
    if flat or len(segments) > 1:
        query = replace_query(query, refine_factor=query.refine_factor or 1)
    plans = [
        SubPlan(SubPlanKind.INDEX_SEGMENT, target, f"{target.uri}#segment/{segment['uuid']}",
                query, vector=vector, index_segment=segment["uuid"], local_limit=wanted,
                fragment_ids=tuple(segment["fragment_ids"]), cache_key=segment["key"])
        for segment in segments
    ]
    return plans + flat


def query_metric(query: QueryRequest, segments: list[dict]) -> str | None:
    """The one distance metric of a vector query, for all of its sub-plans.

    As in lance: the request's ``distance_type``; else the vector index's metric when the
    query may use the index (lance then ranks the unindexed rows by it too); else None,
    lance's default (l2). Sub-plans decide nothing, or flat and index results would mix metrics.
    """
    if query.distance_type:
        return query.distance_type
    if query.bypass_vector_index:
        return None
    return next((segment["metric"] for segment in segments if segment["metric"]), None)


def _bucket_plans(
    kind: SubPlanKind,
    snapshot: Snapshot,
    target: DatasetRef,
    query: QueryRequest,
    vector: list[float] | None,
    local_limit: int | None,
    name: tuple,
    fragment_ids: Callable[[], list[int]],
    group_size: int,
) -> list[SubPlan]:
    return [
        SubPlan(kind, target, bucket_partition(target.uri, bucket), query, vector=vector,
                fragment_ids=fragments, local_limit=local_limit, cache_key=cache_key)
        for bucket, fragments, cache_key in snapshot.buckets(name, fragment_ids, group_size)
    ]


def vector_index_segments(dataset: LanceDataset, column: str) -> list[dict]:
    """The segments of the vector index on ``column``, each with the fragments it covers."""
    segments = []
    for index in dataset.describe_indices():
        if list(index.field_names) == [column] and is_vector_index(str(index.index_type)):
            metric = str((index.details or {}).get("metric_type") or "").lower() or None
            # A segment covering no fragments has no files (lance writes such an empty index
            # when there were too few rows to train): nothing to search, its fragments stay flat.
            segments += [{"uuid": str(segment.uuid), "fragment_ids": sorted(segment.fragment_ids or []),
                          "metric": metric}
                         for segment in index.segments if segment.fragment_ids]
    return segments


def replace_query(query: QueryRequest, **changes: object) -> QueryRequest:
    return query.model_copy(update=changes)


def _buckets(fragment_ids: list[int], group_size: int) -> list[tuple[int, tuple[int, ...]]]:
    grouped: dict[int, list[int]] = {}
    for fid in fragment_ids:
        grouped.setdefault(fid // group_size, []).append(fid)
    return [(bucket, tuple(ids)) for bucket, ids in sorted(grouped.items())]


def _needs_row_ids_in_filter(query: QueryRequest) -> bool:
    # Cached copies renumber rows; a filter on _rowid must see the source table.
    return bool(query.filter) and "_rowid" in query.filter


