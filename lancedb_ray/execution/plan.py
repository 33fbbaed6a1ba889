"""Distributed query plans: one query becomes sub-plans over cache partitions.

A vector query becomes one sub-plan per index segment plus flat-search
sub-plans over the fragments no segment covers, grouped into fragment buckets;
a filtered scan or a count becomes one sub-plan per bucket; a full-text query
(whose BM25 scores need whole-table statistics) is one sub-plan on the owner
of the table's text index. Buckets are ``fragment_id // fragments_per_group``,
so appending fragments never moves existing ones to another partition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from lance.dataset import LanceDataset

from lancedb_ray.execution.cache import content_key
from lancedb_ray.execution.vectors import resolve_vector_column
from lancedb_ray.service.protocol import QueryRequest
from lancedb_ray.types import TableRef

MATCH_COLUMN = "__lancedb_ray_match"  # post-filter verdict carried to the merge
SOURCE_ROWID = "__lancedb_ray_rowid"  # a cached copy's record of the source row id
ORDER_COLUMN = "__lancedb_ray_order_"  # + key position: an order_by key carried to the merge


class SubPlanKind(str, Enum):
    INDEX_SEGMENT = "index_segment"  # ANN search on one vector index segment
    FLAT = "flat"  # exact vector search over a bucket of unindexed fragments
    SCAN = "scan"  # filtered scan over a bucket
    COUNT = "count"  # count over a bucket
    WHOLE_QUERY = "whole_query"  # the query as embedded lancedb runs it (full text)


@dataclass(frozen=True)
class DatasetRef:
    """A table at one version, as an executor opens it."""

    ref: TableRef
    uri: str
    version: int
    storage_options: dict[str, str] = field(default_factory=dict, repr=False)
    # The content of this version (schema and fragments): a table dropped and created
    # again reuses version numbers, so (uri, version) alone could name old data.
    fingerprint: str = ""


@dataclass(frozen=True)
class Snapshot:
    """A table version as the planner sees it, read once per query."""

    dataset: LanceDataset
    fragments: dict[int, str]  # fragment id -> its metadata (files, deletions), in id order
    schema: str

    @classmethod
    def of(cls, dataset: LanceDataset) -> Snapshot:
        described = {f.fragment_id: repr(f.metadata) for f in dataset.get_fragments()}
        return cls(dataset, dict(sorted(described.items())), str(dataset.schema))

    @property
    def fingerprint(self) -> str:
        return content_key(self.dataset.uri, self.schema, list(self.fragments.values()))


@dataclass(frozen=True)
class SubPlan:
    kind: SubPlanKind
    dataset: DatasetRef
    partition: str  # the cache partition: decides which executors run it
    query: QueryRequest
    vector: list[float] | None = None
    fragment_ids: tuple[int, ...] = ()
    index_segment: str | None = None
    local_limit: int | None = None  # rows this sub-plan returns (offset included)
    cache_key: str | None = None  # content key of the bucket's cached copy


def bucket_partition(uri: str, bucket: int) -> str:
    return f"{uri}#fragments/{bucket}"


def plan_query(
    snapshot: Snapshot, target: DatasetRef, query: QueryRequest, group_size: int
) -> list[SubPlan]:
    """Split ``query`` (at most one query vector) into sub-plans."""
    if query.full_text_query is not None or _needs_row_ids_in_filter(query):
        return [SubPlan(SubPlanKind.WHOLE_QUERY, target, f"{target.uri}#whole", query)]
    if query.vector:
        return _plan_vector(snapshot, target, query, group_size)
    wanted = None if query.limit is None else query.limit + (query.offset or 0)
    return _bucket_plans(SubPlanKind.SCAN, snapshot, target, query, None, wanted,
                         list(snapshot.fragments), group_size)


def plan_count(snapshot: Snapshot, target: DatasetRef, predicate: str | None,
               group_size: int) -> list[SubPlan]:
    query = QueryRequest(filter=predicate)
    return _bucket_plans(SubPlanKind.COUNT, snapshot, target, query, None, None,
                         list(snapshot.fragments), group_size)


def _plan_vector(
    snapshot: Snapshot, target: DatasetRef, query: QueryRequest, group_size: int
) -> list[SubPlan]:
    vector = query.query_vectors[0]
    column = resolve_vector_column(snapshot.dataset.schema, query.vector_column, [vector])
    query = replace_query(query, vector_column=column)
    wanted = (query.limit or 10) + (query.offset or 0)
    plans: list[SubPlan] = []
    segments = [] if query.bypass_vector_index else vector_index_segments(snapshot.dataset, column)
    covered: set[int] = set()
    for segment in segments:
        covered.update(segment["fragment_ids"])
        plans.append(
            SubPlan(SubPlanKind.INDEX_SEGMENT, target, f"{target.uri}#segment/{segment['uuid']}",
                    query, vector=vector, index_segment=segment["uuid"], local_limit=wanted)
        )
    if segments and query.fast_search:
        return plans  # fast_search: indexed data only, as in lance
    unindexed = [fid for fid in snapshot.fragments if fid not in covered]
    plans += _bucket_plans(SubPlanKind.FLAT, snapshot, target, query, vector, wanted, unindexed,
                           group_size)
    return plans


def _bucket_plans(
    kind: SubPlanKind,
    snapshot: Snapshot,
    target: DatasetRef,
    query: QueryRequest,
    vector: list[float] | None,
    local_limit: int | None,
    fragment_ids: list[int],
    group_size: int,
) -> list[SubPlan]:
    described = snapshot.fragments
    return [
        SubPlan(kind, target, bucket_partition(target.uri, bucket), query, vector=vector,
                fragment_ids=fragments, local_limit=local_limit,
                cache_key=content_key(target.uri, snapshot.schema,
                                      [described[f] for f in fragments]))
        for bucket, fragments in _buckets(fragment_ids, group_size)
    ]


def vector_index_segments(dataset: LanceDataset, column: str) -> list[dict]:
    """The segments of the vector index on ``column``, each with the fragments it covers."""
    segments = []
    for index in dataset.list_indices():
        kind = str(index.get("type", "")).upper()
        # A segment covering no fragments has no files (lance writes such an empty index when
        # there were too few rows to train): nothing to search, its fragments stay flat.
        if index.get("fields") == [column] and ("IVF" in kind or "HNSW" in kind) and (
            index.get("fragment_ids")
        ):
            segments.append({"uuid": str(index["uuid"]),
                             "fragment_ids": sorted(index.get("fragment_ids") or [])})
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


