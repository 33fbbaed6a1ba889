"""Validation of database, table, namespace, tag and index names.

Names become path segments under a storage location, so a name that could
climb out of it (``..``), nest into another location (``/``) or break an
object-store key must be refused before it reaches a path.
"""

from __future__ import annotations

import re

from lancedb_ray.errors import InvalidInput

MAX_NAME_LENGTH = 128
_KINDS = ("database", "table", "namespace", "tag", "index")
_ALLOWED = re.compile(r"[A-Za-z0-9_.\-]+")


def validate_name(kind: str, name: str) -> str:
    """Return ``name`` if it is safe as a ``kind`` name, else raise InvalidInput."""
    if kind not in _KINDS:
        raise ValueError(f"unknown name kind {kind!r}")
    problem = _problem(name)
    if problem:
        raise InvalidInput(f"invalid {kind} name '{_shown(name)}': {problem}")
    return name


def _problem(name: object) -> str | None:
    if not isinstance(name, str):
        return "must be a string"
    if not name:
        return "must not be empty"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    if len(name) > MAX_NAME_LENGTH:
        return f"must be at most {MAX_NAME_LENGTH} characters"
    if "/" in name or "\\" in name:
        return "must not contain '/' or '\\'"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "must not contain control characters"
    if name.startswith("."):
        return "must not start with '.'"
    if not _ALLOWED.fullmatch(name):
        return "may only contain letters, digits, '_', '-' and '.'"
    return None


def _shown(name: object) -> str:
    """The name as it may appear in a message: escaped, and cut short."""
    text = str(name).encode("unicode_escape").decode("ascii")
    return text if len(text) <= 64 else text[:64] + "..."
