"""Table lifecycle and data writes.

Each write commits synchronously on storage (the client's answer waits for
it), then hands a change event to the publisher, which never blocks or fails
the write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
from lance.schema import json_to_schema, schema_to_json

from lancedb_ray.errors import InvalidInput, Unsupported
from lancedb_ray.events.model import ChangeEvent
from lancedb_ray.protocol import (
    AddColumnsRequest,
    AlterColumnsRequest,
    CloneRequest,
    MergeInsertParams,
    UpdateFieldMetadataRequest,
    UpdateRequest,
)
from lancedb_ray.service import paging, writes
from lancedb_ray.service.metrics import METRICS, POST_COMMIT
from lancedb_ray.storage.catalog import DatabaseLocation
from lancedb_ray.storage.connections import Connections, MissingDatabase
from lancedb_ray.storage.lance_errors import clean_message, lance_errors
from lancedb_ray.storage.renames import Renamer
from lancedb_ray.types import TableRef

_LOG = logging.getLogger(__name__)

ChangeSink = Callable[[ChangeEvent], None]
# After these, version numbers of the name may start again: the registry opens a new generation.
_RESTARTS_VERSIONS = frozenset({"create", "drop", "rename"})


class TableService:
    def __init__(self, connections: Connections, on_change: ChangeSink, idempotency_window: int):
        self._connections = connections
        self._on_change = on_change
        self._window = idempotency_window
        self.renamer = Renamer()

    # -- lifecycle -------------------------------------------------------------------------

    def list_tables(
        self, database: str, namespace: list[str], page_token: str | None, limit: int | None
    ) -> dict[str, Any]:
        try:
            db = self._connections.database(database)
        except MissingDatabase:
            return {"tables": [], "page_token": None}
        with lance_errors(f"namespace '{'$'.join(namespace) or '$'}'", database):
            names = paging.all_names(
                lambda token: db.list_tables(namespace_path=namespace or None, page_token=token),
                "tables",
            )
        tables, next_token = paging.page(names, page_token, limit)
        return {"tables": tables, "page_token": next_token}

    def create(self, ref: TableRef, data: pa.Table, mode: str, request_id: str | None) -> None:
        if mode not in ("create", "overwrite", "exist_ok"):
            raise InvalidInput(f"unknown create mode '{mode}': use create, overwrite or exist_ok")
        db = self._connections.database(ref.database, create=True)
        self._reuse_name(ref)
        with lance_errors(f"table '{ref.qualified_name}'", ref.database):
            table = db.create_table(
                ref.name,
                data=data if data.num_rows else None,
                schema=data.schema,
                mode="overwrite" if mode == "overwrite" else "create",
                exist_ok=mode == "exist_ok",
                namespace_path=ref.namespace_path,
            )
        self.notify(ref, lambda: table.version, "create", request_id, data.num_rows)

    def describe(self, ref: TableRef, version: int | None) -> dict[str, Any]:
        table = self._connections.table(ref, version)
        with lance_errors(f"table '{ref.qualified_name}'", ref.database):
            return {
                "version": table.version,
                "schema": schema_to_json(table.schema),
                "location": _public_uri(table.uri),  # the client's ``table.uri``
            }

    def drop(self, ref: TableRef, request_id: str | None) -> None:
        """A missing table is a 404: the client then raises what embedded lancedb raises."""
        db = self._connections.database_of(ref)
        self.before_write(ref)
        with lance_errors(f"table '{ref.qualified_name}'", ref.database):
            db.drop_table(ref.name, namespace_path=ref.namespace_path)
        self.notify(ref, 0, "drop", request_id)

    def rename(self, ref: TableRef, new_name: str, request_id: str | None) -> None:
        """Move the table (lancedb OSS has no rename, LanceDB Cloud does), safely under concurrent
        writes: see storage/renames.py. Writes arriving meanwhile get 503, then 404."""
        new_ref = TableRef.parse(ref.database, new_name)
        if ref.namespace or new_ref.namespace:
            raise InvalidInput("renaming a table inside a namespace is not supported")
        self._connections.table(ref)  # 404 when the source is missing
        db = self._connections.database(ref.database)
        existing = paging.all_names(lambda token: db.list_tables(page_token=token), "tables")
        if new_ref.name in existing:
            raise InvalidInput(f"cannot rename to '{new_ref.name}': table already exists")
        location = self._connections.location(ref.database)
        with lance_errors(f"table '{ref.qualified_name}'", ref.database):
            version = self.renamer.rename(location, ref.name, new_ref.name)
        self.notify(ref, 0, "rename", request_id)
        self.notify(new_ref, version or 0, "create", request_id)

    def clone(self, ref: TableRef, body: CloneRequest, request_id: str | None) -> None:
        """A shallow clone of a table of the same database (lance shares its files)."""
        if not body.is_shallow:
            raise Unsupported("a deep clone is not supported: use a shallow clone")
        location = self._connections.location(ref.database)
        source = _source_table_name(location, body.source_location)
        self._connections.table(TableRef.parse(ref.database, source))  # 404 when missing
        db = self._connections.database(ref.database)
        self._reuse_name(ref)
        with lance_errors(f"clone to '{ref.qualified_name}'", ref.database):
            table = db.clone_table(ref.name, location.table_uri(source),
                                   target_namespace_path=ref.namespace_path,
                                   source_version=body.source_version,
                                   source_tag=body.source_tag, is_shallow=True)
        self.notify(ref, lambda: table.version, "create", request_id)

    def require_columns(self, ref: TableRef, columns: list[str]) -> None:
        """400 naming the columns ``ref`` lacks (404 when the table is missing)."""
        names = self._connections.table(ref).schema.names
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise InvalidInput(f"unknown columns {unknown}: the table's columns are {names}")

    def stats(self, ref: TableRef) -> dict[str, Any]:
        table = self._connections.table(ref)
        with lance_errors(f"stats of '{ref.qualified_name}'", ref.database):
            return _plain(table.stats())

    # -- data writes -----------------------------------------------------------------------

    def insert(
        self, ref: TableRef, data: pa.Table, overwrite: bool, request_id: str | None
    ) -> dict[str, Any]:
        self.before_write(ref)
        result = self._idempotent(
            ref,
            request_id,
            lambda ds, options: writes.append(ds, data, request_id, options, overwrite),
        )
        if not result.replayed:
            self.after_write(ref, result.version, result.committed)
            operation = "overwrite" if overwrite else "insert"
            self.notify(ref, result.version, operation, request_id, data.num_rows)
        return {"version": result.version}

    def merge_insert(
        self, ref: TableRef, data: pa.Table, params: MergeInsertParams, request_id: str | None
    ) -> dict[str, Any]:
        spec = writes.MergeSpec(
            on=params.on,
            update_all=params.when_matched_update_all,
            update_filter=params.when_matched_update_all_filt,
            insert_all=params.when_not_matched_insert_all,
            delete_by_source=params.when_not_matched_by_source_delete,
            delete_filter=params.when_not_matched_by_source_delete_filt,
        )
        self.before_write(ref)
        result = self._idempotent(
            ref,
            request_id,
            lambda ds, options: writes.merge_insert(ds, data, spec, request_id, options),
        )
        if not result.replayed:
            self.after_write(ref, result.version, result.committed)
            rows = result.num_inserted_rows + result.num_updated_rows + result.num_deleted_rows
            self.notify(ref, result.version, "merge_insert", request_id, rows)
        return {
            "version": result.version,
            "num_inserted_rows": result.num_inserted_rows,
            "num_updated_rows": result.num_updated_rows,
            "num_deleted_rows": result.num_deleted_rows,
        }

    def delete(self, ref: TableRef, predicate: str, request_id: str | None) -> dict[str, Any]:
        self.before_write(ref)
        table = self._connections.table(ref)
        with lance_errors(f"delete on '{ref.qualified_name}'", ref.database):
            result = table.delete(predicate)
        self.after_write(ref, result.version)
        self.notify(ref, result.version, "delete", request_id, result.num_deleted_rows)
        return {"num_deleted_rows": result.num_deleted_rows, "version": result.version}

    def update(self, ref: TableRef, body: UpdateRequest, request_id: str | None) -> dict[str, Any]:
        if not body.updates:
            raise InvalidInput("update needs at least one column in 'updates'")
        self.before_write(ref)
        table = self._connections.table(ref)
        with lance_errors(f"update on '{ref.qualified_name}'", ref.database):
            result = table.update(where=body.predicate, values_sql=dict(body.updates))
        self.after_write(ref, result.version)
        self.notify(ref, result.version, "update", request_id, result.rows_updated)
        return {"rows_updated": result.rows_updated, "version": result.version}

    # -- schema changes --------------------------------------------------------------------

    def add_columns(self, ref: TableRef, body: AddColumnsRequest, request_id: str | None) -> dict:
        self.before_write(ref)
        table = self._connections.table(ref)
        with lance_errors(f"add_columns on '{ref.qualified_name}'", ref.database):
            result = table.add_columns({c.name: c.expression for c in body.new_columns})
        return self._schema_changed(ref, result.version, "add_columns", request_id)

    def add_null_columns(self, ref: TableRef, schema: pa.Schema, request_id: str | None) -> dict:
        if not len(schema):
            raise InvalidInput("add_columns needs at least one column")
        self.before_write(ref)
        table = self._connections.table(ref)
        with lance_errors(f"add_columns on '{ref.qualified_name}'", ref.database):
            result = table.add_columns(schema)
        return self._schema_changed(ref, result.version, "add_columns", request_id)

    def alter_columns(
        self, ref: TableRef, body: AlterColumnsRequest, request_id: str | None
    ) -> dict[str, Any]:
        alterations = []
        for alteration in body.alterations:
            change: dict[str, Any] = {"path": alteration.path}
            if alteration.rename is not None:
                change["rename"] = alteration.rename
            if alteration.nullable is not None:
                change["nullable"] = alteration.nullable
            if alteration.data_type is not None:
                change["data_type"] = _arrow_type(alteration.data_type)
            alterations.append(change)
        self.before_write(ref)
        table = self._connections.table(ref)
        with lance_errors(f"alter_columns on '{ref.qualified_name}'", ref.database):
            result = table.alter_columns(*alterations)
        return self._schema_changed(ref, result.version, "alter_columns", request_id)

    def update_field_metadata(
        self, ref: TableRef, body: UpdateFieldMetadataRequest, request_id: str | None
    ) -> dict[str, Any]:
        if not body.updates:
            raise InvalidInput("update_field_metadata needs at least one entry in 'updates'")
        self.before_write(ref)
        table = self._connections.table(ref)
        with lance_errors(f"update_field_metadata on '{ref.qualified_name}'", ref.database):
            result = table.update_field_metadata(*(u.model_dump() for u in body.updates))
        return self._schema_changed(ref, result.version, "update_field_metadata", request_id)

    def drop_columns(self, ref: TableRef, columns: list[str], request_id: str | None) -> dict:
        self.before_write(ref)
        table = self._connections.table(ref)
        with lance_errors(f"drop_columns on '{ref.qualified_name}'", ref.database):
            result = table.drop_columns(columns)
        return self._schema_changed(ref, result.version, "drop_columns", request_id)

    # -- helpers ---------------------------------------------------------------------------

    def _idempotent(
        self,
        ref: TableRef,
        request_id: str | None,
        write: Callable[[Any, dict[str, str]], writes.WriteResult],
    ) -> writes.WriteResult:
        table = self._connections.table(ref)
        options = self._connections.location(ref.database).storage_options
        with lance_errors(f"write to '{ref.qualified_name}'", ref.database):
            dataset = table.to_lance()
            earlier = writes.find_committed(dataset, request_id, self._window)
            if earlier is not None:
                return earlier
            return write(dataset, options)

    def before_write(self, ref: TableRef) -> None:
        """503 while ``ref`` is being renamed, 404 once renamed away (see storage/renames.py)."""
        if ref.namespace:
            return  # tables in namespaces are never renamed
        with lance_errors(f"write to '{ref.qualified_name}'", ref.database):
            self.renamer.before_write(self._connections.location(ref.database), ref.name)

    def _reuse_name(self, ref: TableRef) -> None:
        """Before a table is created at ``ref``: a finished rename away from the name is forgotten."""
        if not ref.namespace:
            with lance_errors(f"table '{ref.qualified_name}'", ref.database):
                self.renamer.reuse_name(self._connections.location(ref.database), ref.name)

    def after_write(self, ref: TableRef, version: int | None, committed: Any = None) -> None:
        """Raise (503) instead of acknowledging a commit that a concurrent rename did not keep
        (``version`` None: a change outside the versions, a tag, which no rename vouches for;
        ``committed``: the commit's dataset when the write has it)."""
        if ref.namespace:
            return
        with lance_errors(f"write to '{ref.qualified_name}'", ref.database):
            self.renamer.after_write(self._connections.location(ref.database), ref.name, version,
                                     committed)

    def _schema_changed(
        self, ref: TableRef, version: int, operation: str, request_id: str | None
    ) -> dict[str, Any]:
        self.after_write(ref, version)
        self.notify(ref, version, operation, request_id)
        return {"version": version}

    def notify(
        self,
        ref: TableRef,
        version: int | Callable[[], int],
        operation: str,
        request_id: str | None,
        rows: int = 0,
    ) -> None:
        """Publish the version to every replica, then hand the change to the publisher. Never raises.

        The registry is updated before the write is acknowledged (read-your-writes on any
        replica). It runs after the commit: the change is durable, so the client must hear
        success. A failure here answered as a 5xx would make the client retry a write that
        already applied. So it is logged and counted; ``version`` may be a callable for the
        same reason (reading it after the commit can touch storage).
        """
        try:
            version = version() if callable(version) else version
            self._connections.committed(ref, version, recreated=operation in _RESTARTS_VERSIONS)
            _LOG.info("%s committed version %d (%d rows)", operation, version, rows)
            METRICS.inc("writes_total", operation=operation)
            METRICS.inc("rows_written_total", rows, operation=operation)
            self._on_change(
                ChangeEvent(
                    database=ref.database,
                    table=ref.qualified_name,
                    version=version,
                    operation=operation,
                    rows=rows,
                    time=time.time(),
                    request_id=request_id,
                )
            )
        except Exception:  # noqa: BLE001 - after a commit nothing may fail the request
            POST_COMMIT.inc("post_commit_failures_total")
            _LOG.exception("after committing %s on '%s' (request %s)", operation,
                       ref.qualified_name, request_id)


def _source_table_name(location: DatabaseLocation, source: str) -> str:
    """The table a clone's ``source_location`` names: only tables of the same database, so a
    client can never make the service read another database's or an arbitrary location."""
    prefix = location.uri.rstrip("/") + "/"
    name = source.rstrip("/").removeprefix(prefix).removesuffix(".lance")
    if not source.startswith(prefix) or "/" in name or location.table_uri(name) != source.rstrip("/"):
        raise InvalidInput(
            f"cannot clone from '{source}': the source must be a table of this database "
            "(its 'location' as describe gives it)"
        )
    return name


def _public_uri(uri: str) -> str:
    """``uri`` without user info or query string: credentials live in storage options, but
    a root configured with a SAS token in its URI must not reach clients either."""
    parts = urlsplit(uri)
    if not parts.scheme or len(parts.scheme) == 1:  # a local path (or a Windows drive)
        return uri
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _arrow_type(data_type: dict[str, Any]) -> pa.DataType:
    """A JsonSchema type (``{"type": "int32"}``) as an Arrow type, via lance's own parser."""
    field = {"name": "x", "type": data_type, "nullable": True}
    try:
        return json_to_schema({"fields": [field]}).field("x").type
    except Exception as exc:  # noqa: BLE001 - any parse failure is the client's input
        raise InvalidInput(f"unsupported data_type {data_type}: {clean_message(exc)}") from exc


def _plain(value: Any) -> Any:
    """Stats objects as JSON-ready dicts."""
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "__dict__"):
        return {k: _plain(v) for k, v in vars(value).items() if not k.startswith("_")}
    return value
