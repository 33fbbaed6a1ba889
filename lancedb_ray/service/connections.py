"""Open databases and tables through the storage catalog.

One lancedb connection per database is kept for the life of the replica.
With ``read_consistency_seconds`` 0 (the default) tables are opened per
request, so every read sees the latest committed version: a write
acknowledged by any replica, or made by an outside writer, is visible to the
next request on every replica. A positive interval lets a replica reuse an
opened table for that long (fewer manifest reads on object storage): its own
writes stay visible at once (a write forgets the handle), while writes made
elsewhere show within the interval.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import lancedb
from lancedb.db import DBConnection
from lancedb.table import LanceTable

from lancedb_ray.service.lance_errors import lance_errors
from lancedb_ray.storage.catalog import DatabaseLocation, StorageCatalog
from lancedb_ray.types import TableRef


class Connections:
    def __init__(self, catalog: StorageCatalog, read_consistency_seconds: float) -> None:
        self._catalog = catalog
        self._interval = timedelta(seconds=read_consistency_seconds)
        self._connections: dict[str, DBConnection] = {}
        self._tables: dict[TableRef, tuple[LanceTable, float, float]] = {}  # monotonic, wall
        self._lock = threading.Lock()

    def location(self, database: str) -> DatabaseLocation:
        return self._catalog.resolve(database)

    def database(self, database: str) -> DBConnection:
        with self._lock:
            connection = self._connections.get(database)
        if connection is not None:
            return connection
        location = self.location(database)
        with lance_errors(f"database '{database}'", database):
            connection = lancedb.connect(
                location.uri,
                storage_options=location.storage_options or None,
                read_consistency_interval=self._interval,
            )
        with self._lock:
            return self._connections.setdefault(database, connection)

    def table(self, ref: TableRef, version: int | str | None = None) -> LanceTable:
        """Open ``ref`` at its latest version, or at ``version`` (a number or a tag)."""
        reusable = version is None and self._interval.total_seconds() > 0
        if reusable:
            with self._lock:
                cached = self._tables.get(ref)
            if cached is not None and time.monotonic() - cached[1] < self._interval.total_seconds():
                return cached[0]
        db = self.database(ref.database)
        with lance_errors(f"table '{ref.qualified_name}'", ref.database):
            table = db.open_table(ref.name, namespace_path=ref.namespace_path)
            if version is not None:
                table.checkout(version)
        if reusable:
            with self._lock:
                self._tables[ref] = (table, time.monotonic(), time.time())
        return table

    def require_fresh(self, ref: TableRef, min_version: int | None, min_time: float | None) -> None:
        """Drop a reused handle older than what the client has seen or asked for.

        The client's read-freshness headers carry the highest version it has read or
        written and the moment of its ``checkout_latest()``; a replica whose handle is
        behind must reopen, so reads stay monotonic across replicas.
        """
        with self._lock:
            cached = self._tables.get(ref)
        if cached is None:
            return
        table, _, opened_at = cached
        if (min_time is not None and opened_at < min_time) or (
            min_version is not None and table.version < min_version
        ):
            self.forget(ref)

    def forget(self, ref: TableRef) -> None:
        """Drop a reused handle after this replica changed the table."""
        with self._lock:
            self._tables.pop(ref, None)
