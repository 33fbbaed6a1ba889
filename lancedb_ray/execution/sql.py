"""SQL text of a request, as pylance must read it to mean what embedded lancedb means.

The official clients write a column name that needs quoting in double quotes
(``"Tag Name" = 'x'``), and embedded lancedb's bundled lance reads it as a column.
The pylance the executors run reads a double-quoted token as a string literal:
the filter then compares two constants and matches nothing, silently. Backticks
name a column in both, so the planner rewrites every filter once, before any
sub-plan runs it.
"""

from __future__ import annotations

import re

from lancedb_ray.protocol import QueryRequest

# A string literal (kept), a backticked name (kept) or a double-quoted name (rewritten).
_TOKEN = re.compile(r"'(?:[^']|'')*'|`[^`]*`|\"((?:[^\"]|\"\")*)\"")
_BACKTICKED = re.compile(r"`([^`]*)`")
_LITERAL = re.compile(r"'(?:[^']|'')*'")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def lance_sql(text: str) -> str:
    """``text`` with its double-quoted names in backticks; string literals untouched."""
    def rewrite(token: re.Match[str]) -> str:
        name = token.group(1)
        if name is None or "`" in name:
            return token.group(0)  # a literal, a backticked name, or a name backticks cannot hold
        return "`" + name.replace('""', '"') + "`"
    return _TOKEN.sub(rewrite, text)


def lance_query(query: QueryRequest) -> QueryRequest:
    """``query`` with its filter in pylance's quoting.

    Projection expressions stay as sent: embedded lancedb reads a double-quoted token
    there as a string literal, as pylance does.
    """
    if not query.filter:
        return query
    return query.model_copy(update={"filter": lance_sql(query.filter)})


def filter_columns(predicate: str, columns: list[str]) -> set[str]:
    """The table's columns that ``predicate`` (in pylance's quoting) names, string literals aside."""
    unquoted = _LITERAL.sub(" ", predicate)
    named = set(_BACKTICKED.findall(unquoted))
    return (named | set(_IDENTIFIER.findall(_BACKTICKED.sub(" ", unquoted)))) & set(columns)
