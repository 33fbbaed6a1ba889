"""A protocol query as a lancedb query builder, so it runs exactly as embedded lancedb runs it."""

from __future__ import annotations

from typing import Any

from lancedb.query import (
    BooleanQuery,
    ColumnOrdering,
    FullTextOperator,
    FullTextQuery,
    LanceQueryBuilder,
    MatchQuery,
    MultiMatchQuery,
    Occur,
    PhraseQuery,
)
from lancedb.table import LanceTable

from lancedb_ray.errors import InvalidInput
from lancedb_ray.execution.vectors import resolve_vector_column
from lancedb_ray.protocol import FullTextRequest, QueryRequest


def build_query(table: LanceTable, query: QueryRequest) -> LanceQueryBuilder:
    if query.vector and query.full_text_query is not None:
        raise InvalidInput("a query has either 'vector' or 'full_text_query', not both")
    if query.vector:
        builder = _vector_query(table, query)
    elif query.full_text_query is not None:
        builder = _full_text_query(table, query.full_text_query)
    else:
        builder = table.search()
    if query.filter:
        builder = builder.where(query.filter, prefilter=query.prefilter)
    if query.columns is not None:
        builder = builder.select(query.columns)
    if query.order_by:
        builder = builder.order_by([ColumnOrdering(**o.model_dump()) for o in query.order_by])
    builder = builder.limit(query.limit)
    if query.offset:
        builder = builder.offset(query.offset)
    if query.with_row_id:
        builder = builder.with_row_id(True)
    if query.fast_search and hasattr(builder, "fast_search"):
        builder = builder.fast_search()
    return builder


def _vector_query(table: LanceTable, query: QueryRequest) -> LanceQueryBuilder:
    column = resolve_vector_column(table.schema, query.vector_column, query.query_vectors)
    vectors: Any = query.vector
    builder = table.search(vectors, vector_column_name=column, query_type="vector")
    if query.distance_type:
        builder = builder.distance_type(query.distance_type)
    if query.minimum_nprobes is not None:
        builder = builder.minimum_nprobes(query.minimum_nprobes)
    if query.maximum_nprobes is not None:
        builder = builder.maximum_nprobes(query.maximum_nprobes)
    if query.nprobes is not None and query.minimum_nprobes is None:
        builder = builder.nprobes(query.nprobes)
    if query.refine_factor is not None:
        builder = builder.refine_factor(query.refine_factor)
    if query.ef is not None:
        builder = builder.ef(query.ef)
    if query.lower_bound is not None or query.upper_bound is not None:
        builder = builder.distance_range(query.lower_bound, query.upper_bound)
    if query.bypass_vector_index:
        builder = builder.bypass_vector_index()
    return builder


def _full_text_query(table: LanceTable, fts: FullTextRequest) -> LanceQueryBuilder:
    if isinstance(fts.query, str):
        return table.search(fts.query, query_type="fts", fts_columns=fts.columns or None)
    simple = _simple_match(fts.query)
    if simple is not None:
        return table.search(simple, query_type="fts", fts_columns=fts.columns or None)
    return table.search(parse_full_text(fts.query), query_type="fts")


def _simple_match(query: dict[str, Any]) -> str | None:
    """A match query with no column and default options is the simple form, over every column."""
    match = query.get("match")
    if not isinstance(match, dict) or match.get("column"):
        return None
    defaults = {"boost": 1.0, "fuzziness": 0, "max_expansions": 50, "operator": "Or",
                "prefix_length": 0}
    if any(match.get(k, v) != v for k, v in defaults.items()):
        raise InvalidInput("a match query with options needs a 'column'")
    return str(match.get("terms", ""))


def parse_full_text(query: dict[str, Any]) -> FullTextQuery:
    """Rebuild lancedb's FullTextQuery from its JSON form (``match``/``phrase``/...)."""
    if not isinstance(query, dict) or len(query) != 1:
        raise InvalidInput(f"a structured full-text query has exactly one kind: {query}")
    ((kind, spec),) = query.items()
    if not isinstance(spec, dict):
        raise InvalidInput(f"full-text query '{kind}' must be an object")
    try:
        if kind == "match":
            return MatchQuery(
                spec["terms"],
                spec["column"],
                boost=spec.get("boost", 1.0),
                fuzziness=spec.get("fuzziness", 0),
                max_expansions=spec.get("max_expansions", 50),
                operator=_operator(spec.get("operator", "Or")),
                prefix_length=spec.get("prefix_length", 0),
                document_granularity=spec.get("document_granularity"),
            )
        if kind == "phrase":
            return PhraseQuery(
                spec["terms"],
                spec["column"],
                slop=spec.get("slop", 0),
                document_granularity=spec.get("document_granularity"),
            )
        if kind == "multi_match":
            return MultiMatchQuery(
                spec["query"],
                spec["columns"],
                boosts=spec.get("boost"),
                operator=_operator(spec.get("operator", "Or")),
            )
        if kind == "boolean":
            clauses = [
                (occur, parse_full_text(sub))
                for key, occur in (("must", Occur.MUST), ("should", Occur.SHOULD),
                                   ("must_not", Occur.MUST_NOT))
                for sub in spec.get(key, [])
            ]
            return BooleanQuery(clauses)
    except KeyError as exc:
        raise InvalidInput(f"full-text query '{kind}' lacks field {exc}") from exc
    raise InvalidInput(f"unknown full-text query kind '{kind}': use match, phrase, "
                       "multi_match or boolean")


def _operator(value: str) -> FullTextOperator:
    try:
        return FullTextOperator(str(value).upper())
    except ValueError as exc:
        raise InvalidInput(f"unknown full-text operator '{value}': use And or Or") from exc
