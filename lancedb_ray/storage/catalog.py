"""The storage catalog: which storage location holds each database.

Every part of the service asks the catalog, never the settings, where a
database lives, so that placement policy, name validation and credential
handling are decided in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lancedb_ray.errors import NotFound
from lancedb_ray.settings import StorageLocation, StorageSettings, UnknownDatabasePolicy
from lancedb_ray.storage.names import validate_name

__all__ = ["DatabaseLocation", "StorageCatalog", "validate_name"]


@dataclass(frozen=True)
class DatabaseLocation:
    """A database's root URI and the options lance needs to reach it."""

    database: str
    uri: str
    storage_options: dict[str, str] = field(default_factory=dict)

    def table_uri(self, table: str) -> str:
        """The URI of ``table``: the same layout ``lancedb.connect(uri)`` uses."""
        return f"{self.uri}/{validate_name('table', table)}.lance"

    def __repr__(self) -> str:
        # storage_options carry keys and tokens; only their names may be shown.
        return (
            f"DatabaseLocation(database={self.database!r}, uri={self.uri!r}, "
            f"storage_options=<{len(self.storage_options)} redacted>)"
        )

    __str__ = __repr__


def _local_root(location: StorageLocation) -> str:
    uri = location.uri or "./data"
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    # Absolute now, so that a later chdir (Ray workers) cannot move the data.
    return str(Path(uri).expanduser().resolve())


class StorageCatalog:
    """Maps database names to locations according to the storage settings."""

    def __init__(self, settings: StorageSettings) -> None:
        self._settings = settings
        self._root = _local_root(settings.root)
        self._databases = {
            validate_name("database", name): DatabaseLocation(name, _local_root(loc))
            for name, loc in settings.databases.items()
        }

    def resolve(self, database: str) -> DatabaseLocation:
        """The location of ``database``; NotFound when unknown and the policy refuses."""
        validate_name("database", database)
        configured = self._databases.get(database)
        if configured is not None:
            return configured
        if self._settings.unknown_databases is UnknownDatabasePolicy.REFUSE:
            raise NotFound(f"database '{database}' not found")
        return DatabaseLocation(database, f"{self._root}/{database}")
