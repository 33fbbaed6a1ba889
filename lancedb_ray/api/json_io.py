"""JSON request bodies, parsed with bounded depth and bounded numbers.

Python's parser recurses once per nesting level and turns any digit string into
an int, so a deep or a huge-number body costs the server a stack or a
quadratic conversion; lance then overflows on numbers past 64 bits. Both are
refused here as the client's fault.
"""

from __future__ import annotations

import json
from typing import Any

from lancedb_ray.errors import InvalidInput

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_MAX_DIGITS = 20  # 2**64 has 20 digits


def parse_object(raw: bytes, max_depth: int) -> dict[str, Any]:
    """The JSON object in ``raw`` (empty: ``{}``), refusing deep nesting and huge numbers."""
    if not raw.strip():
        return {}
    try:
        data: Any = json.loads(raw, parse_int=_bounded_int, parse_constant=_no_constant)
    except RecursionError as exc:
        raise InvalidInput(f"request body nests deeper than {max_depth} levels") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"request body is not valid JSON: {_short(str(exc))}") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"request body must be a JSON object, got {type(data).__name__}")
    if _depth_exceeds(data, max_depth):
        raise InvalidInput(f"request body nests deeper than {max_depth} levels")
    return data


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_DIGITS:
        raise InvalidInput(f"number {_short(text)} in the request body is out of range")
    value = int(text)
    if not _INT_MIN <= value <= _INT_MAX:
        raise InvalidInput(f"number {text} in the request body is out of range (64-bit integers)")
    return value


def _no_constant(text: str) -> Any:
    raise InvalidInput(f"'{text}' is not a JSON number: the request body must be strict JSON")


def _depth_exceeds(data: Any, max_depth: int) -> bool:
    """Whether containers nest more than ``max_depth`` deep (iteratively: no recursion here)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:80] + "..."
