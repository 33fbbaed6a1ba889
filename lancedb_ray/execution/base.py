"""The interface the query node plans against.

The query node resolves the table and decodes the request; an executor
answers it. ``LocalExecutor`` answers in the query node's own process; the
plan executors (``execution.distributed``) split the same request into
sub-plans over cached partitions on Ray actors. Both take the same plain,
picklable inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from lancedb_ray.protocol import QueryRequest
from lancedb_ray.types import TableRef


@dataclass(frozen=True)
class QueryTarget:
    """What a query runs against: the table and the version it must see."""

    ref: TableRef
    version: int | None  # None: the latest committed version


class QueryExecutor(Protocol):
    def search(self, target: QueryTarget, query: QueryRequest) -> pa.Table: ...

    def count(self, target: QueryTarget, predicate: str | None) -> int: ...

    def explain(self, target: QueryTarget, query: QueryRequest, verbose: bool) -> str: ...

    def analyze(self, target: QueryTarget, query: QueryRequest) -> str: ...

    def prewarm(self, tables: list[str]) -> None:
        """Load ``tables`` ("database/table") where queries will read them."""

    def prewarm_index(self, target: QueryTarget, name: str) -> None:
        """Load index ``name`` of ``target`` into the lance caches the queries use."""
