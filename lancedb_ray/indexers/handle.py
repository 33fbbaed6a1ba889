"""The table an indexer works on, as plain data that crosses to Ray tasks."""

from __future__ import annotations

from dataclasses import dataclass, field

import lance
from lance.dataset import LanceDataset

from lancedb_ray.errors import NotFound
from lancedb_ray.storage.catalog import DatabaseLocation
from lancedb_ray.storage.credentials import redact
from lancedb_ray.types import NAMESPACE_SEPARATOR, TableRef


@dataclass(frozen=True)
class TableHandle:
    """A Lance dataset and the options to reach it; picklable, so Ray tasks get it as is."""

    database: str
    table: str  # qualified table name (namespace parts joined by "$")
    uri: str  # the Lance dataset URI
    storage_options: dict[str, str] = field(default_factory=dict)  # holds secrets

    def open(self, version: int | None = None) -> LanceDataset:
        """The dataset at ``version``, or at its latest version."""
        return lance.dataset(self.uri, version=version, storage_options=self.storage_options or None)

    def __repr__(self) -> str:
        # storage_options carry keys and tokens: only their names may be shown.
        return (
            f"TableHandle(database={self.database!r}, table={self.table!r}, uri={self.uri!r}, "
            f"storage_options={redact(self.storage_options)!r})"
        )

    __str__ = __repr__

    def __hash__(self) -> int:
        return hash((self.database, self.table, self.uri))


def table_handle(location: DatabaseLocation, table: str) -> TableHandle:
    """The handle of an existing ``table`` (``ns1$ns2$name`` for a namespaced one) of a database.

    A table at the root of the database lives where ``lancedb.connect(location.uri)``
    puts it (``<uri>/<name>.lance``); a namespaced table's directory is chosen by
    lancedb's namespace layout, so it is looked up through lancedb.
    """
    ref = TableRef.parse(location.database, table)
    if not ref.namespace:
        uri = location.table_uri(ref.name)
        try:
            lance.dataset(uri, storage_options=location.storage_options or None)
        except ValueError as exc:  # lance: "Dataset at path ... was not found"
            raise NotFound(f"table '{table}' was not found in database '{location.database}'") from exc
        return TableHandle(location.database, table, uri, dict(location.storage_options))
    return TableHandle(location.database, table, namespaced_table_uri(location, ref),
                       dict(location.storage_options))


def namespaced_table_uri(location: DatabaseLocation, ref: TableRef) -> str:
    import lancedb

    db = lancedb.connect(location.uri, storage_options=location.storage_options or None)
    try:
        return db.open_table(ref.name, namespace_path=list(ref.namespace)).to_lance().uri
    except Exception as exc:  # lancedb raises ValueError or its own errors for a missing table
        name = NAMESPACE_SEPARATOR.join((*ref.namespace, ref.name))
        raise NotFound(f"table '{name}' was not found in database '{location.database}'") from exc
