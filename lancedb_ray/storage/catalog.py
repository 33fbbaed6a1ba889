"""The storage catalog: which storage location holds each database.

Every part of the service asks the catalog, never the settings, where a
database lives, so that placement policy, name validation, isolation between
databases and credential handling are decided in one place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lancedb_ray.errors import Forbidden, NotFound
from lancedb_ray.settings import StorageLocation, StorageSettings, UnknownDatabasePolicy
from lancedb_ray.storage import clients
from lancedb_ray.storage.containers import ContainerGuard
from lancedb_ray.storage.credentials import place_and_options, redact
from lancedb_ray.storage.names import validate_name
from lancedb_ray.storage.places import Place, StorageConfigError

__all__ = ["DatabaseLocation", "StorageCatalog", "StorageConfigError", "validate_name"]


@dataclass(frozen=True)
class DatabaseLocation:
    """A database's root URI and the options lance needs to reach it.

    Self-sufficient and picklable, so it can be handed to Ray actors.
    """

    database: str
    uri: str  # a local directory, or az://container/prefix/<database>
    storage_options: dict[str, str] = field(default_factory=dict)  # holds secrets

    @property
    def is_azure(self) -> bool:
        return self.uri.startswith("az://")

    def table_uri(self, table: str) -> str:
        """The URI of ``table``: the same layout ``lancedb.connect(uri)`` uses."""
        return f"{self.uri}/{validate_name('table', table)}.lance"

    def filesystem(self) -> Any:
        """An fsspec filesystem for this location (adlfs for Azure); paths from fs_path()."""
        if self.is_azure:
            return clients.azure_filesystem(self.storage_options)
        import fsspec

        return fsspec.filesystem("file")

    def fs_path(self, *parts: str) -> str:
        """The path of the database root (or of ``parts`` below it) inside filesystem()."""
        root = self.uri.removeprefix("az://")
        return "/".join([root, *parts])

    def __repr__(self) -> str:
        # storage_options carry keys and tokens: only their names may be shown.
        return (
            f"DatabaseLocation(database={self.database!r}, uri={self.uri!r}, "
            f"storage_options={redact(self.storage_options)!r})"
        )

    __str__ = __repr__

    def __hash__(self) -> int:
        # The options dict is unhashable; equal locations still share database and uri.
        return hash((self.database, self.uri))


@dataclass(frozen=True)
class _Entry:
    place: Place
    options: dict[str, str]

    def location(self, database: str, place: Place | None = None) -> DatabaseLocation:
        return DatabaseLocation(database, (place or self.place).uri, dict(self.options))


class StorageCatalog:
    """Maps database names to locations according to the storage settings."""

    def __init__(self, settings: StorageSettings, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._policy = settings.unknown_databases
        self._root = _entry(settings.root, env)
        self._databases = {
            validate_name("database", name): _entry(loc, env) for name, loc in settings.databases.items()
        }
        self._containers = ContainerGuard()
        self._check_isolation()

    def locate(self, database: str) -> DatabaseLocation:
        """Where ``database`` lives, without touching storage."""
        validate_name("database", database)
        configured = self._databases.get(database)
        if configured is not None:
            return configured.location(database)
        if self._policy is UnknownDatabasePolicy.REFUSE:
            raise NotFound(f"database '{database}' not found")
        place = self._root.place.child(database)
        if any(place.overlaps(entry.place) for entry in self._databases.values()):
            # Never name the other database: it may belong to another tenant.
            raise Forbidden(f"database '{database}' cannot be created: its storage location is reserved")
        return self._root.location(database, place)

    def root(self) -> DatabaseLocation:
        """The default location (unknown databases go below it), for the readiness probe."""
        return self._root.location("")

    def resolve(self, database: str) -> DatabaseLocation:
        """Where ``database`` lives, its Azure container created on first use if missing."""
        location = self.locate(database)
        if location.is_azure:
            container = location.uri.removeprefix("az://").split("/", 1)[0]
            self._containers.ensure(location.storage_options, container, database)
        return location

    def _check_isolation(self) -> None:
        names = sorted(self._databases)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                if self._databases[first].place.overlaps(self._databases[second].place):
                    raise StorageConfigError(
                        f"storage locations of databases '{first}' and '{second}' overlap"
                    )
        if self._policy is UnknownDatabasePolicy.CREATE:
            root = self._root.place
            for name in names:
                place = self._databases[name].place
                if place.overlaps(root) and not place.inside(root):
                    raise StorageConfigError(
                        f"storage location of database '{name}' contains the root location"
                    )


def _entry(location: StorageLocation, env: Mapping[str, str]) -> _Entry:
    return _Entry(*place_and_options(location, env))
