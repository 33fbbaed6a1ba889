"""Bulk ingest: parallel fragment writes on Ray, one atomic commit.

    ray job submit -- python -m lancedb_ray.jobs.ingest --database DB --table T \\
        --source PATH_OR_URI [--format parquet|lance|csv] [--mode append|create|overwrite] \\
        [--rows-per-fragment N] [--config settings.yaml]

Ray Data reads the source in parallel; each batch of ``--rows-per-fragment``
rows becomes one Lance fragment, written by a Ray task with lance-ray's
``LanceFragmentWriter`` (its distributed fragment writer, which retries
transient storage errors) under the table's directory but not yet part of any
version. When every fragment is written, the driver commits them all with one
``LanceDataset.commit`` (an ``Append`` or an ``Overwrite``): readers see all the
new rows or none, and a failed job leaves the table as it was (the
unreferenced files go with the next version cleanup).

The commit is this module's rather than ``lance_ray.write_lance``'s: that one
returns nothing (the job needs the version it committed, for its change event),
its ``create`` mode commits an ``Overwrite`` that would silently replace a table
created by someone else while the job ran, and it reports no progress.

A new table at the root of a database is created by that one commit. A new
namespaced table is first created empty by lancedb (which owns the namespace
layout), so it starts with that empty version and then the ingest's commit.
"""

from __future__ import annotations

import argparse
import functools
import logging
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lance
import pyarrow as pa
import ray
from lance.fragment import FragmentMetadata
from lance_ray import LanceFragmentWriter
from lance_ray.datasink import LanceDatasink

from lancedb_ray.errors import AlreadyExists, InvalidInput, NotFound
from lancedb_ray.indexers.handle import TableHandle, table_handle
from lancedb_ray.jobs.common import (
    add_target_arguments,
    connect_ray,
    locate,
    publish_change,
    setup_logging,
)
from lancedb_ray.resources import TaskResources, task_resources
from lancedb_ray.service.writes import conform
from lancedb_ray.settings import Settings
from lancedb_ray.storage.catalog import DatabaseLocation
from lancedb_ray.types import TableRef

_LOG = logging.getLogger(__name__)
FORMATS = ("parquet", "lance", "csv")
MODES = ("append", "create", "overwrite")
DEFAULT_ROWS_PER_FRAGMENT = 1024 * 1024  # lance's own default file size
_AZURE_SCHEMES = ("az://", "abfs://", "abfss://")
# lance-ray's own policy for retrying a fragment write (what its write_lance datasink uses).
_RETRY_WRITES = {
    "description": "write lance fragments",
    "match": list(LanceDatasink.WRITE_FRAGMENTS_ERRORS_TO_RETRY),
    "max_attempts": LanceDatasink.WRITE_FRAGMENTS_MAX_ATTEMPTS,
    "max_backoff_s": LanceDatasink.WRITE_FRAGMENTS_RETRY_MAX_BACKOFF_SECONDS,
}


@dataclass(frozen=True)
class IngestResult:
    uri: str
    version: int
    rows: int
    fragments: int
    seconds: float


def ingest(location: DatabaseLocation, table: str, source: str, *, fmt: str | None = None,
           mode: str = "append", rows_per_fragment: int = DEFAULT_ROWS_PER_FRAGMENT,
           resources: TaskResources | None = None) -> IngestResult:
    """Write ``source`` into ``table`` as one new version (Ray must be initialised).

    ``resources``: each write task's request (default: one CPU).
    """
    resources = resources or TaskResources()
    start = time.monotonic()
    if mode not in MODES:
        raise InvalidInput(f"unknown mode '{mode}': use one of {list(MODES)}")
    fmt = fmt or infer_format(source)
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format '{fmt}': use one of {list(FORMATS)}")
    existing = _existing(location, table)
    if mode == "create" and existing is not None:
        raise AlreadyExists(f"table '{table}' already exists in database '{location.database}'")
    if mode == "append" and existing is None:
        raise NotFound(f"table '{table}' was not found in database '{location.database}': "
                       "use --mode create")
    data = read_source(source, fmt, location)
    if existing is None and TableRef.parse(location.database, table).namespace:
        existing = _create_namespaced(location, table, data.schema().base_schema)
        mode = "append"  # into the empty table lancedb just created
    if existing is not None:
        base = existing.open()
        uri, base_version, schema = existing.uri, base.version, base.schema
    else:
        uri, base_version = location.table_uri(table), None
        schema = data.schema().base_schema
    writer = LanceFragmentWriter(
        uri, transform=functools.partial(conform, schema=schema), schema=schema,
        max_rows_per_file=rows_per_fragment, storage_options=dict(location.storage_options) or None,
        retry_params=_RETRY_WRITES, use_legacy_format=None)
    written = data.map_batches(writer, batch_size=rows_per_fragment, batch_format="pyarrow",
                               **resources.options())
    fragments: list[FragmentMetadata] = []
    for batch in written.iter_batches(batch_size=None, batch_format="pyarrow"):
        fragments.extend(pickle.loads(blob) for blob in batch.column("fragment").to_pylist())
        print(f"ingest: {len(fragments)} fragments, {sum(f.num_rows for f in fragments):,} rows "
              f"written ({time.monotonic() - start:.1f} s)", flush=True)
    rows = sum(f.num_rows for f in fragments)
    if mode == "append":
        operation: Any = lance.LanceOperation.Append(fragments)
    else:
        operation = lance.LanceOperation.Overwrite(schema, fragments)
        if existing is None and _existing(location, table) is not None:
            raise AlreadyExists(f"table '{table}' was created by someone else while this job ran")
    committed = lance.LanceDataset.commit(uri, operation, read_version=base_version,
                                          storage_options=location.storage_options or None)
    seconds = time.monotonic() - start
    print(f"ingest: committed {rows:,} rows in {len(fragments)} fragments as version "
          f"{committed.version} of {location.database}/{table} ({seconds:.1f} s)", flush=True)
    return IngestResult(uri, committed.version, rows, len(fragments), seconds)


def infer_format(source: str) -> str:
    path = source.rstrip("/")
    if path.endswith(".lance"):
        return "lance"
    if path.endswith((".csv", ".csv.gz")):
        return "csv"
    if "://" not in path and (Path(path) / "_versions").is_dir():
        return "lance"
    return "parquet"


def read_source(source: str, fmt: str, location: DatabaseLocation) -> ray.data.Dataset:
    """The source as a Ray Data dataset; Azure sources use the database's credentials."""
    if fmt == "lance":
        options = dict(location.storage_options) if source.startswith(_AZURE_SCHEMES) else None
        return ray.data.read_lance(source, storage_options=options)
    kwargs: dict[str, Any] = {}
    if source.startswith(_AZURE_SCHEMES):
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        kwargs["filesystem"] = PyFileSystem(FSSpecHandler(location.filesystem()))
        source = source.split("://", 1)[1]
    if fmt == "csv":
        return ray.data.read_csv(source, **kwargs)
    return ray.data.read_parquet(source, **kwargs)


def _existing(location: DatabaseLocation, table: str) -> TableHandle | None:
    try:
        return table_handle(location, table)
    except NotFound:
        return None


def _create_namespaced(location: DatabaseLocation, table: str, schema: pa.Schema) -> TableHandle:
    """An empty namespaced table, created by lancedb, which chooses its directory."""
    import lancedb

    ref = TableRef.parse(location.database, table)
    db = lancedb.connect(location.uri, storage_options=location.storage_options or None)
    created = db.create_table(ref.name, schema=schema, namespace_path=list(ref.namespace))
    return TableHandle(location.database, table, created.to_lance().uri, dict(location.storage_options))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lancedb_ray.jobs.ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(parser)
    parser.add_argument("--source", required=True, help="a file, a directory, or a URI (az://...)")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="default: from the source's name (.lance, .csv), else parquet")
    parser.add_argument("--mode", choices=MODES, default="append")
    parser.add_argument("--rows-per-fragment", type=int, default=DEFAULT_ROWS_PER_FRAGMENT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    settings = Settings.load(args.config)
    connect_ray(settings)
    location = locate(settings, args.database)
    result = ingest(location, args.table, args.source, fmt=args.format, mode=args.mode,
                    rows_per_fragment=args.rows_per_fragment, resources=task_resources(settings))
    if args.event:
        operation = {"append": "insert", "create": "create", "overwrite": "overwrite"}[args.mode]
        publish_change(settings, args.database, args.table, result.version, operation, result.rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
