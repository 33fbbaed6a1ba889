"""Table versions as the planner sees them, opened once per process.

A ``Snapshot`` (the dataset in the process's lance session, its fragments, its
content fingerprint, its index segments and bucket layouts) is built on the
first query of a (table, generation, version) and reused by every later one,
so a warm query on an unchanged table plans without touching storage and
without walking its fragments again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import lance

from lancedb_ray.execution.plan import Snapshot
from lancedb_ray.storage.connections import OpenTable

_MAX_SNAPSHOTS = 64


class Snapshots:
    def __init__(self, session: lance.Session, max_entries: int = _MAX_SNAPSHOTS) -> None:
        self._session = session
        self._max = max_entries
        self._entries: OrderedDict[tuple[str, int, int], Snapshot] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, opened: OpenTable, storage_options: dict[str, str]) -> Snapshot:
        """The snapshot of ``opened`` at its current version, opened from storage only once."""
        uri, version = opened.uri, opened.version
        key = (uri, opened.generation, version)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        dataset = lance.dataset(uri, version=version, storage_options=storage_options or None,
                                session=self._session)
        snapshot = Snapshot.of(dataset)
        with self._lock:
            self._entries[key] = snapshot
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return snapshot
