"""Namespaces: nested groups of tables inside a database.

The client sends modes in its own spelling (``ExistOk``, ``Skip``,
``Cascade``); embedded lancedb honours none of them, so they are applied here.
"""

from __future__ import annotations

from typing import Any

from lancedb_ray.errors import AlreadyExists, InvalidInput, NotFound
from lancedb_ray.service import paging
from lancedb_ray.service.tables import TableService
from lancedb_ray.storage.connections import Connections, MissingDatabase
from lancedb_ray.storage.lance_errors import lance_errors
from lancedb_ray.types import TableRef

_CREATE_MODES = {"create": "create", "existok": "exist_ok", "overwrite": "overwrite"}
_DROP_MODES = {"fail": "fail", "skip": "skip"}
_DROP_BEHAVIORS = {"restrict": "restrict", "cascade": "cascade"}


class NamespaceService:
    def __init__(self, connections: Connections, tables: TableService) -> None:
        self._connections = connections
        self._tables = tables

    def create(
        self, database: str, path: list[str], mode: str | None, properties: dict | None
    ) -> dict[str, Any]:
        if not path:
            raise InvalidInput("the root namespace '$' always exists and cannot be created")
        mode = _choice("create namespace mode", mode, _CREATE_MODES, "create")
        db = self._connections.database(database, create=True)
        try:
            with lance_errors(f"namespace '{_name(path)}'", database):
                response = db.create_namespace(path, properties=properties)
        except AlreadyExists:
            if mode == "create":
                raise
            if mode == "exist_ok":
                return self.describe(database, path)
            self.drop(database, path, None, None)  # overwrite: refused while not empty
            with lance_errors(f"namespace '{_name(path)}'", database):
                response = db.create_namespace(path, properties=properties)
        return {"properties": response.properties}

    def list(
        self, database: str, path: list[str], page_token: str | None, limit: int | None
    ) -> dict[str, Any]:
        try:
            db = self._connections.database(database)
        except MissingDatabase:
            return {"namespaces": [], "page_token": None}
        with lance_errors(f"namespace '{_name(path)}'", database):
            names = paging.all_names(
                lambda token: db.list_namespaces(path or None, page_token=token), "namespaces"
            )
        namespaces, next_token = paging.page(names, page_token, limit)
        return {"namespaces": namespaces, "page_token": next_token}

    def describe(self, database: str, path: list[str]) -> dict[str, Any]:
        if not path:
            return {"properties": None}
        db = self._existing(database, path)
        with lance_errors(f"namespace '{_name(path)}'", database):
            response = db.describe_namespace(path)
        return {"properties": response.properties}

    def drop(
        self, database: str, path: list[str], mode: str | None, behavior: str | None
    ) -> dict[str, Any]:
        if not path:
            raise InvalidInput("the root namespace '$' cannot be dropped")
        mode = _choice("drop namespace mode", mode, _DROP_MODES, "fail")
        behavior = _choice("drop namespace behavior", behavior, _DROP_BEHAVIORS, "restrict")
        try:
            db = self._existing(database, path)
            with lance_errors(f"namespace '{_name(path)}'", database):
                db.drop_namespace(path)
        except NotFound:
            if mode == "fail":
                raise
        except InvalidInput:
            if behavior != "cascade":
                raise
            self._drop_contents(database, path)
            with lance_errors(f"namespace '{_name(path)}'", database):
                db.drop_namespace(path)
        return {}

    def _existing(self, database: str, path: list[str]) -> Any:
        """The database's connection; if it has nothing stored, the namespace is not found."""
        try:
            return self._connections.database(database)
        except MissingDatabase as exc:
            raise NotFound(f"namespace '{_name(path)}' was not found") from exc

    def _drop_contents(self, database: str, path: list[str]) -> None:
        """Cascade: child namespaces first, then the tables, each through the table service
        (so the agent hears of every dropped table)."""
        db = self._connections.database(database)
        with lance_errors(f"namespace '{_name(path)}'", database):
            children = paging.all_names(
                lambda token: db.list_namespaces(path, page_token=token), "namespaces"
            )
            tables = paging.all_names(
                lambda token: db.list_tables(namespace_path=path, page_token=token), "tables"
            )
        for child in children:
            self.drop(database, [*path, child], "skip", "cascade")
        for table in tables:
            self._tables.drop(TableRef(database, tuple(path), table), None)


def _name(path: list[str]) -> str:
    return "$".join(path) or "$"


def _choice(what: str, value: str | None, choices: dict[str, str], default: str) -> str:
    """The client's spelling (``ExistOk``, ``exist_ok``, ``SKIP``) as one canonical name."""
    if value is None:
        return default
    key = value.replace("_", "").lower()
    if key not in choices:
        raise InvalidInput(f"unknown {what} '{value}': use one of {sorted(set(choices.values()))}")
    return choices[key]
