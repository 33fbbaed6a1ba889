"""The change event: what a committed write tells the rest of the system.

An event carries no data, only which table moved to which version and why, so
it stays small enough for any bus and can be replayed or duplicated safely: a
consumer compares ``version`` with what it has already handled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ChangeEvent:
    """One committed change to one table.

    ``operation`` names the write: create, insert, overwrite, merge_insert,
    delete, update, create_index, drop_index, add_columns, alter_columns,
    drop_columns, restore, drop, rename, index_segment, compaction, ... It is
    a free string so that new writers need no change here.
    """

    database: str
    table: str
    version: int
    operation: str
    rows: int
    time: float  # epoch seconds of the commit
    request_id: str | None = None

    @property
    def key(self) -> str:
        """The partition key: every backend keeps the events of one key in order."""
        return f"{self.database}/{self.table}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ChangeEvent:
        """Decode an event, ignoring fields a newer writer may have added.

        Raises ``ValueError`` for anything that is not a well-formed event, so a
        consumer can skip a corrupt record instead of stalling on it.
        """
        try:
            raw: Any = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a change event: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError("not a change event: expected a JSON object")
        known = {f.name for f in fields(cls)}
        try:
            event = cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError as exc:
            raise ValueError(f"not a change event: {exc}") from exc
        _check_types(event)
        return event


def _check_types(event: ChangeEvent) -> None:
    for name in ("database", "table", "operation"):
        if not isinstance(getattr(event, name), str):
            raise ValueError(f"not a change event: {name} must be a string")
    for name in ("version", "rows"):
        value = getattr(event, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"not a change event: {name} must be an integer")
    if not isinstance(event.time, (int, float)) or isinstance(event.time, bool):
        raise ValueError("not a change event: time must be a number")
    if event.request_id is not None and not isinstance(event.request_id, str):
        raise ValueError("not a change event: request_id must be a string")
