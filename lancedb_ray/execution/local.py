"""Queries answered inside the query node's process, through embedded lancedb."""

from __future__ import annotations

import pyarrow as pa

from lancedb_ray.execution.base import QueryTarget
from lancedb_ray.execution.query_builder import build_query
from lancedb_ray.protocol import QueryRequest
from lancedb_ray.storage.connections import Connections
from lancedb_ray.storage.lance_errors import lance_errors


class LocalExecutor:
    def __init__(self, connections: Connections) -> None:
        self._connections = connections

    def search(self, target: QueryTarget, query: QueryRequest) -> pa.Table:
        table = self._connections.table(target.ref, target.version)
        with lance_errors(f"query on '{target.ref.qualified_name}'", target.ref.database):
            return build_query(table, query).to_arrow()

    def count(self, target: QueryTarget, predicate: str | None) -> int:
        table = self._connections.table(target.ref, target.version)
        with lance_errors(f"count_rows on '{target.ref.qualified_name}'", target.ref.database):
            return table.count_rows(predicate or None)

    def explain(self, target: QueryTarget, query: QueryRequest, verbose: bool) -> str:
        table = self._connections.table(target.ref, target.version)
        with lance_errors(f"explain_plan on '{target.ref.qualified_name}'", target.ref.database):
            return build_query(table, query).explain_plan(verbose)

    def analyze(self, target: QueryTarget, query: QueryRequest) -> str:
        table = self._connections.table(target.ref, target.version)
        with lance_errors(f"analyze_plan on '{target.ref.qualified_name}'", target.ref.database):
            return build_query(table, query).analyze_plan()

    def prewarm(self, tables: list[str]) -> None:
        """Nothing to load: without executors every query reads the table from storage."""

    def prewarm_index(self, target: QueryTarget, name: str) -> None:
        """Into this process's connection cache, where ``search`` reads the table."""
        table = self._connections.table(target.ref, target.version)
        with lance_errors(f"prewarm of index '{name}' on '{target.ref.qualified_name}'", target.ref.database):
            table.prewarm_index(name)
