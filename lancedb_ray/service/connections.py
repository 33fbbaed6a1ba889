"""Open databases and tables through the storage catalog.

One lancedb connection per database is kept for the life of the replica.
Tables are opened per request: with ``read_consistency_interval`` 0 every
read sees the latest committed version, which is what gives read-your-writes
across query node replicas (a write acknowledged by one replica is visible to
the next request on any other).
"""

from __future__ import annotations

import threading
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
        db = self.database(ref.database)
        with lance_errors(f"table '{ref.qualified_name}'", ref.database):
            table = db.open_table(ref.name, namespace_path=ref.namespace_path)
            if version is not None:
                table.checkout(version)
        return table
