"""Namespaces: nested groups of tables inside a database."""

from __future__ import annotations

from typing import Any

from lancedb_ray.service.connections import Connections
from lancedb_ray.service.lance_errors import lance_errors


class NamespaceService:
    def __init__(self, connections: Connections) -> None:
        self._connections = connections

    def create(self, database: str, path: list[str], mode: str | None, properties: dict | None):
        db = self._connections.database(database)
        with lance_errors(f"namespace '{'$'.join(path)}'", database):
            response = db.create_namespace(path, mode=mode, properties=properties)
        return {"properties": response.properties}

    def list(
        self, database: str, path: list[str], page_token: str | None, limit: int | None
    ) -> dict[str, Any]:
        db = self._connections.database(database)
        with lance_errors(f"namespace '{'$'.join(path) or '$'}'", database):
            response = db.list_namespaces(path or None, page_token=page_token, limit=limit)
        return {"namespaces": list(response.namespaces), "page_token": response.page_token}

    def describe(self, database: str, path: list[str]) -> dict[str, Any]:
        db = self._connections.database(database)
        with lance_errors(f"namespace '{'$'.join(path)}'", database):
            response = db.describe_namespace(path)
        return {"properties": response.properties}

    def drop(self, database: str, path: list[str]) -> dict[str, Any]:
        db = self._connections.database(database)
        with lance_errors(f"namespace '{'$'.join(path)}'", database):
            db.drop_namespace(path)
        return {}
