"""Open databases and tables through the storage catalog.

One lancedb connection per database is kept for the life of the process.
On a query node the table handles are long-lived too: a ``LatestVersions``
view (the shared version registry) says which version is the latest without a
storage round trip, so a request on an unchanged table touches no storage; a
handle is reloaded only when the registry is ahead of it, or when the
registry's entry is older than ``read_consistency_seconds`` (an outside writer
may have committed). Without a registry (the executors, the agent) a positive
``read_consistency_seconds`` lets a handle be reused that long, and 0 opens
the table on every request.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import lancedb
from lancedb.db import DBConnection
from lancedb.table import LanceTable

from lancedb_ray.errors import NotFound
from lancedb_ray.metrics import Metric, MetricSet
from lancedb_ray.storage.catalog import DatabaseLocation, StorageCatalog
from lancedb_ray.storage.lance_errors import lance_errors
from lancedb_ray.storage.versions import LatestVersions
from lancedb_ray.types import TableRef

# Exported with the query node's service metrics (the dashboard's version probes panel).
PROBES = MetricSet(
    "service",
    {"version_probes_total": Metric(
        "Counter", "Reads of a table's latest version from storage (a manifest read).")},
)


class MissingDatabase(NotFound):
    """A read named a database that has nothing stored yet."""


def registry_key(catalog: StorageCatalog, ref: TableRef) -> str:
    """The version registry's name for ``ref``: its database's location and its qualified name."""
    return f"{catalog.locate(ref.database).uri}#{ref.qualified_name}"


@dataclass(frozen=True)
class OpenTable:
    """A handle at the latest version, and the registry generation it belongs to."""

    table: LanceTable
    generation: int
    opened_at: float  # monotonic, for read_consistency_seconds
    opened_wall: float  # wall clock, for the client's read-freshness header
    # The handle's version and location, read once: each read of the handle's own properties
    # is a call into lancedb's event loop, and a warm query should make none.
    version: int
    uri: str

    @classmethod
    def of(cls, table: LanceTable, generation: int) -> OpenTable:
        return cls(table, generation, time.monotonic(), time.time(), table.version, table.uri)


class Connections:
    def __init__(
        self,
        catalog: StorageCatalog,
        read_consistency_seconds: float,
        versions: LatestVersions | None = None,
    ) -> None:
        self._catalog = catalog
        self._interval = timedelta(seconds=read_consistency_seconds)
        self._versions = versions
        self._connections: dict[str, DBConnection] = {}
        self._tables: dict[TableRef, OpenTable] = {}
        self._lock = threading.Lock()

    def location(self, database: str) -> DatabaseLocation:
        return self._catalog.resolve(database)

    def root(self) -> DatabaseLocation:
        """The default storage location, where new databases go."""
        return self._catalog.root()

    def database(self, database: str, create: bool = False) -> DBConnection:
        """The connection to ``database``; a local one must exist unless ``create`` (reads
        of a missing database must not leave its directory behind)."""
        with self._lock:
            connection = self._connections.get(database)
        if connection is not None:
            return connection
        location = self.location(database)
        if not create and not location.is_azure and not os.path.isdir(location.uri):
            raise MissingDatabase(f"database '{database}' not found")
        with lance_errors(f"database '{database}'", database):
            connection = lancedb.connect(
                location.uri,
                storage_options=location.storage_options or None,
                # With a registry the handles are refreshed here, never behind our back.
                read_consistency_interval=None if self._versions else self._interval,
            )
        with self._lock:
            return self._connections.setdefault(database, connection)

    def table(self, ref: TableRef, version: int | str | None = None) -> LanceTable:
        """Open ``ref`` at its latest version, or at ``version`` (a number or a tag)."""
        if version is not None:
            return self._open(ref, version)
        return self.latest(ref).table

    def latest(self, ref: TableRef) -> OpenTable:
        """The handle at the latest version; no storage request while the registry vouches for it."""
        if self._versions is None:
            return self._reused(ref)
        key = self._key(ref)
        known, seen = self._versions.trusted(key)
        with self._lock:
            cached = self._tables.get(ref)
        if known is not None and cached is not None and cached.generation == known.generation:
            if cached.version >= known.version:
                return cached
            PROBES.inc("version_probes_total")  # written through another replica
            with lance_errors(f"table '{ref.qualified_name}'", ref.database):
                cached.table.checkout_latest()
            opened = OpenTable.of(cached.table, cached.generation)
        else:
            # Opened again, not checkout_latest(): that never moves a handle back, and a table
            # dropped and re-created outside the service starts its versions again.
            table = self._open(ref, None)
            entry = self._versions.observed(key, table.version, seen)
            opened = OpenTable.of(table, entry.generation)
        with self._lock:
            self._tables[ref] = opened
        return opened

    def committed(self, ref: TableRef, version: int, recreated: bool = False) -> None:
        """This process committed ``version``: every replica reads at least it from now on.

        ``recreated``: the name's version numbers may start again (create, drop, rename).
        """
        self.forget(ref)
        if self._versions is not None:
            self._versions.committed(self._key(ref), version, recreated)

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
        if (min_time is not None and cached.opened_wall < min_time) or (
            min_version is not None and cached.version < min_version
        ):
            self.forget(ref)

    def forget(self, ref: TableRef) -> None:
        """Drop a reused handle after this process changed the table."""
        with self._lock:
            self._tables.pop(ref, None)

    def _key(self, ref: TableRef) -> str:
        return registry_key(self._catalog, ref)

    def _reused(self, ref: TableRef) -> OpenTable:
        """Without a registry: reuse a handle for ``read_consistency_seconds``."""
        seconds = self._interval.total_seconds()
        if seconds > 0:
            with self._lock:
                cached = self._tables.get(ref)
            if cached is not None and time.monotonic() - cached.opened_at < seconds:
                return cached
        opened = OpenTable.of(self._open(ref, None), 0)
        if seconds > 0:
            with self._lock:
                self._tables[ref] = opened
        return opened

    def database_of(self, ref: TableRef) -> DBConnection:
        """The connection holding ``ref``: a table of a database with nothing stored is not found."""
        try:
            return self.database(ref.database)
        except MissingDatabase as exc:
            raise NotFound(f"Table '{ref.qualified_name}' was not found") from exc  # lance's words

    def _open(self, ref: TableRef, version: int | str | None) -> LanceTable:
        db = self.database_of(ref)
        if version is None:
            PROBES.inc("version_probes_total")
        with lance_errors(f"table '{ref.qualified_name}'", ref.database):
            table = db.open_table(ref.name, namespace_path=ref.namespace_path)
            if version is not None:
                table.checkout(version)
        return table
