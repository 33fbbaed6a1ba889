"""Listing pages as the protocol defines them: sorted names, ``page_token`` = the last name seen.

Embedded lancedb's own tokens depend on its storage layout (``b.lance/`` for a
directory listing, a name in a namespace manifest): they would leak that
layout and break clients that send the last name they saw, as the
``GET /v1/table/?page_token=`` form does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def all_names(list_page: Callable[[str | None], Any], attribute: str) -> list[str]:
    """Every name from a lancedb listing, following its own tokens to the end."""
    names: list[str] = []
    token = None
    while True:
        response = list_page(token)
        names.extend(getattr(response, attribute))
        token = response.page_token
        if not token:
            return sorted(set(names))


def page(names: list[str], page_token: str | None, limit: int | None) -> tuple[list[str], str | None]:
    """The names after ``page_token`` (at most ``limit``), and the token of the next page."""
    after = [name for name in names if not page_token or name > page_token]
    if limit is None or limit <= 0 or len(after) <= limit:
        return after, None
    chosen = after[:limit]
    return chosen, chosen[-1]
