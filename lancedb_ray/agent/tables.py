"""What the agent knows about a table: read from the table itself, never from events.

An event only says "look at this table"; every decision is taken on a
:class:`TableState` read here from the latest version on storage, so that a
replayed, duplicated, reordered or lost event cannot lead to a wrong action.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lance.dataset import LanceDataset

from lancedb_ray.errors import Forbidden, InvalidInput, NotFound
from lancedb_ray.service.paging import all_names
from lancedb_ray.settings import StorageSettings
from lancedb_ray.storage.catalog import DatabaseLocation
from lancedb_ray.storage.connections import Connections
from lancedb_ray.storage.lance_errors import lance_errors
from lancedb_ray.storage.names import validate_name
from lancedb_ray.types import NAMESPACE_SEPARATOR, TableRef, is_vector_index

# Index statistics would otherwise carry every centroid of a vector index.
os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")


@dataclass(frozen=True)
class IndexState:
    name: str
    index_type: str
    columns: tuple[str, ...]
    num_indexed_rows: int
    num_unindexed_rows: int
    trained_rows: int | None = None  # vector indices: rows of the version the index was trained on

    @property
    def is_vector(self) -> bool:
        return is_vector_index(self.index_type)


@dataclass(frozen=True)
class TableState:
    database: str
    table: str
    uri: str
    version: int
    num_rows: int  # live rows
    fragment_rows: tuple[int, ...]  # physical rows of each fragment
    fragment_deleted: tuple[int, ...]  # deleted rows of each fragment
    indices: tuple[IndexState, ...]
    num_versions: int
    oldest_version_time: float | None  # epoch seconds
    latest_version_time: float | None = None  # epoch seconds of the latest commit

    @property
    def unindexed_rows(self) -> int:
        """The largest lag among the table's indices (0 without indices)."""
        return max((index.num_unindexed_rows for index in self.indices), default=0)


class TableReader:
    """Opens tables through the storage catalog, always at their latest version."""

    def __init__(self, connections: Connections) -> None:
        self._connections = connections

    def location(self, database: str) -> DatabaseLocation:
        return self._connections.location(database)

    def dataset(self, database: str, table: str) -> LanceDataset | None:
        """The table's latest version, or None if it does not exist (dropped, renamed)."""
        try:
            ref = TableRef.parse(database, table)
            opened = self._connections.table(ref)
            with lance_errors(f"table '{ref}'", database):
                return opened.to_lance()
        except (NotFound, InvalidInput, Forbidden):
            return None  # gone, or never a table this service may touch

    def inspect(self, database: str, table: str) -> TableState | None:
        dataset = self.dataset(database, table)
        if dataset is None:
            return None
        with lance_errors(f"table '{database}/{table}'", database):
            return read_state(database, table, dataset)


def read_state(database: str, table: str, dataset: LanceDataset) -> TableState:
    fragments = dataset.get_fragments()
    fragment_rows: list[int] = []
    fragment_deleted: list[int] = []
    physical: dict[int, int] = {}
    for fragment in fragments:
        rows = fragment.metadata.physical_rows or 0
        deletion = fragment.metadata.deletion_file
        fragment_rows.append(rows)
        fragment_deleted.append(deletion.num_deleted_rows if deletion is not None else 0)
        physical[fragment.fragment_id] = rows
    # Cost independent of history: the version numbers are one listing; only the latest
    # manifest (loaded already), the oldest one and an index's base version are read.
    numbers = sorted(ref["version"] for ref in dataset.version_refs())
    rows_at = _RowsAt(dataset, set(numbers))
    oldest = rows_at.summary(numbers[0]) if numbers else dataset.get_version()
    return TableState(
        database=database,
        table=table,
        uri=dataset.uri,
        version=dataset.version,
        num_rows=sum(fragment_rows) - sum(fragment_deleted),
        fragment_rows=tuple(fragment_rows),
        fragment_deleted=tuple(fragment_deleted),
        indices=tuple(_indices(dataset, rows_at, physical)),
        num_versions=len(numbers),
        oldest_version_time=_time(oldest),
        latest_version_time=_time(dataset.get_version()),
    )


class _RowsAt:
    """Rows of a version, read from that version's manifest on demand (None if it is gone)."""

    def __init__(self, dataset: LanceDataset, versions: set[int]) -> None:
        self._dataset = dataset
        self._versions = versions
        self._summaries: dict[int, dict[str, Any]] = {dataset.version: dataset.get_version()}

    def summary(self, version: int) -> dict[str, Any]:
        if version not in self._summaries:
            self._summaries[version] = self._dataset.checkout_version(version).get_version()
        return self._summaries[version]

    def get(self, version: int) -> int | None:
        if version not in self._versions:
            return None
        return _int(self.summary(version).get("metadata", {}).get("total_rows"))


def _time(summary: dict[str, Any]) -> float | None:
    timestamp = summary.get("timestamp")
    return timestamp.timestamp() if timestamp is not None else None


def _indices(
    dataset: LanceDataset, rows_at: _RowsAt, physical: dict[int, int]
) -> Iterator[IndexState]:
    for description in dataset.describe_indices():
        if not description.field_names:
            continue  # system indices (e.g. the fragment reuse index) cover no column
        stats = dataset.stats.index_stats(description.name)
        yield IndexState(
            name=description.name,
            index_type=str(stats.get("index_type") or description.index_type or ""),
            columns=tuple(description.field_names),
            num_indexed_rows=int(stats.get("num_indexed_rows") or 0),
            num_unindexed_rows=int(stats.get("num_unindexed_rows") or 0),
            trained_rows=_trained_rows(description.segments, rows_at, physical),
        )


def _trained_rows(
    segments: list[Any], rows_at: _RowsAt, physical: dict[int, int]
) -> int | None:
    """Rows the index was trained on: those of the version its oldest segments were built on.

    Segments built together share that version, and keep it when optimisation
    merges new rows into them; later deltas carry the version they were added
    at. Where that version has been cleaned up, the base segments' fragments count.
    """
    if not segments:
        return None
    base_version = min(int(s.dataset_version_at_last_update) for s in segments)
    rows = rows_at.get(base_version)
    if rows is not None:
        return rows
    covered: set[int] = set()
    for segment in segments:
        if int(segment.dataset_version_at_last_update) == base_version:
            covered.update(segment.fragment_ids)
    return sum(physical.get(fragment_id, 0) for fragment_id in covered) or None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# -- what exists -------------------------------------------------------------------------------


def list_databases(storage: StorageSettings, root: DatabaseLocation) -> list[str]:
    """Every database under the storage root, plus the configured ones."""
    names = set(storage.databases)
    fs = root.filesystem()
    base = root.fs_path()
    if root.is_azure:
        fs.invalidate_cache(base)
    try:
        entries = fs.ls(base, detail=True)
    except FileNotFoundError:
        entries = []
    for entry in entries:
        if entry.get("type") != "directory":
            continue
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        try:
            names.add(validate_name("database", name))
        except InvalidInput:
            continue  # .system and anything else that cannot be a database
    return sorted(names)


def list_tables(connections: Connections, database: str) -> list[str]:
    """Every table of ``database``, in every namespace (``ns1$ns2$name``); [] when it cannot be opened."""
    db = connections.database(database)
    with lance_errors(f"database '{database}'", database):
        return list(_walk(db, []))


def _walk(db: Any, path: list[str]) -> Iterator[str]:
    tables = all_names(lambda token: db.list_tables(namespace_path=path or None, page_token=token), "tables")
    yield from (NAMESPACE_SEPARATOR.join((*path, name)) for name in tables)
    children = all_names(lambda token: db.list_namespaces(path or None, page_token=token), "namespaces")
    for child in children:
        yield from _walk(db, [*path, child])
