"""Versions, restore and tags: a table's history."""

from __future__ import annotations

from datetime import timezone
from typing import Any

from lancedb_ray.errors import InvalidInput
from lancedb_ray.service.tables import TableService
from lancedb_ray.storage.connections import Connections
from lancedb_ray.storage.lance_errors import lance_errors
from lancedb_ray.storage.names import validate_name
from lancedb_ray.types import TableRef


class VersionService:
    def __init__(self, connections: Connections, tables: TableService) -> None:
        self._connections = connections
        self._tables = tables

    def list(self, ref: TableRef) -> dict[str, Any]:
        table = self._connections.table(ref)
        with lance_errors(f"versions of '{ref.qualified_name}'", ref.database):
            versions = table.list_versions()
        return {
            "versions": [
                {
                    "version": v["version"],
                    "timestamp": _rfc3339(v["timestamp"]),
                    "metadata": dict(v.get("metadata") or {}),
                }
                for v in versions
            ]
        }

    def restore(self, ref: TableRef, version: int | str, request_id: str | None) -> dict:
        if isinstance(version, str):
            validate_name("tag", version)
        self._tables.before_write(ref)
        table = self._connections.table(ref, version)
        with lance_errors(f"restore of '{ref.qualified_name}'", ref.database):
            table.restore()
        self._tables.after_write(ref, table.version)
        self._tables.notify(ref, lambda: table.version, "restore", request_id)
        return {"version": table.version}

    def list_tags(self, ref: TableRef) -> dict[str, Any]:
        table = self._connections.table(ref)
        with lance_errors(f"tags of '{ref.qualified_name}'", ref.database):
            tags = table.tags.list()
        # The client reads the manifest size in camelCase.
        return {
            name: {"version": tag["version"], "manifestSize": tag.get("manifest_size", 0)}
            for name, tag in tags.items()
        }

    def tag_version(self, ref: TableRef, tag: str) -> dict[str, Any]:
        validate_name("tag", tag)
        tags = self.list_tags(ref)
        if tag not in tags:
            # Not a 404: the client reads any 404 on a table path as "table not found".
            raise InvalidInput(f"tag '{tag}' does not exist on table '{ref.qualified_name}'")
        return {"version": tags[tag]["version"]}

    def create_tag(self, ref: TableRef, tag: str, version: int | None) -> None:
        if version is None:
            raise InvalidInput("creating a tag needs a 'version'")
        validate_name("tag", tag)
        self._tables.before_write(ref)
        table = self._connections.table(ref)
        _check_version(table, ref, version)
        with lance_errors(f"tag '{tag}' of '{ref.qualified_name}'", ref.database):
            table.tags.create(tag, version)
        self._tables.after_write(ref, None)

    def update_tag(self, ref: TableRef, tag: str, version: int | None) -> None:
        if version is None:
            raise InvalidInput("updating a tag needs a 'version'")
        self.tag_version(ref, tag)
        self._tables.before_write(ref)
        table = self._connections.table(ref)
        _check_version(table, ref, version)
        with lance_errors(f"tag '{tag}' of '{ref.qualified_name}'", ref.database):
            table.tags.update(tag, version)
        self._tables.after_write(ref, None)

    def delete_tag(self, ref: TableRef, tag: str) -> None:
        self.tag_version(ref, tag)
        self._tables.before_write(ref)
        table = self._connections.table(ref)
        with lance_errors(f"tag '{tag}' of '{ref.qualified_name}'", ref.database):
            table.tags.delete(tag)
        self._tables.after_write(ref, None)


def _check_version(table: Any, ref: TableRef, version: int) -> None:
    """A tag must name a version the table has (lance's own error reads as a missing table)."""
    with lance_errors(f"versions of '{ref.qualified_name}'", ref.database):
        known = {v["version"] for v in table.list_versions()}
    if version not in known:
        raise InvalidInput(
            f"version {version} of table '{ref.qualified_name}' does not exist; "
            f"it has versions {min(known)} to {max(known)}"
        )


def _rfc3339(moment: Any) -> str:
    if moment.tzinfo is None:
        moment = moment.astimezone(timezone.utc)
    return moment.isoformat()
