"""Per-request bounds on query work, checked before a query reaches lance or an executor."""

from __future__ import annotations

from lancedb_ray.errors import InvalidInput
from lancedb_ray.protocol import UNLIMITED, QueryRequest


def check_query(query: QueryRequest, max_k: int, max_vectors: int) -> None:
    """Refuse a ``k`` or a number of query vectors past the limits (the client's "no
    limit", ``k`` = 2**63-1, stays allowed: it returns what a filter or scan yields)."""
    if max_k < query.k < UNLIMITED:
        raise InvalidInput(f"k = {query.k} exceeds the limit of {max_k} results per query vector")
    vectors = len(query.query_vectors)
    if vectors > max_vectors:
        raise InvalidInput(f"{vectors} query vectors exceed the limit of {max_vectors} per request")
