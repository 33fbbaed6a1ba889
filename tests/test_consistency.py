"""Read consistency of the query node's table handles (no Ray needed)."""

import time
from pathlib import Path

import lancedb
import pyarrow as pa

from lancedb_ray.settings import StorageSettings
from lancedb_ray.storage.catalog import StorageCatalog
from lancedb_ray.storage.connections import Connections
from lancedb_ray.types import TableRef


def _setup(tmp_path: Path, seconds: float) -> tuple[Connections, lancedb.DBConnection, TableRef]:
    catalog = StorageCatalog(StorageSettings(root={"uri": str(tmp_path)}))
    outside = lancedb.connect(tmp_path / "db")
    outside.create_table("t", pa.table({"id": [1, 2, 3]}))
    return Connections(catalog, seconds), outside, TableRef("db", (), "t")


def test_zero_interval_sees_outside_writes_at_once(tmp_path: Path) -> None:
    connections, outside, ref = _setup(tmp_path, 0.0)
    assert connections.table(ref).count_rows() == 3
    outside.open_table("t").add(pa.table({"id": [4]}))
    assert connections.table(ref).count_rows() == 4


def test_positive_interval_bounds_staleness_and_keeps_own_writes(tmp_path: Path) -> None:
    connections, outside, ref = _setup(tmp_path, 1.5)
    first = connections.table(ref)
    assert first.count_rows() == 3
    outside.open_table("t").add(pa.table({"id": [4]}))
    assert connections.table(ref) is first, "reused within the interval"
    deadline = time.monotonic() + 1.5 + 2.0
    while connections.table(ref).count_rows() != 4:
        assert time.monotonic() < deadline, "an outside write stayed invisible past the interval"
        time.sleep(0.1)
    # This replica's own write: the handle is forgotten, so the next read sees it.
    connections.table(ref).add(pa.table({"id": [5]}))
    connections.forget(ref)
    assert connections.table(ref).count_rows() == 5


def test_versioned_reads_never_reuse_the_latest_handle(tmp_path: Path) -> None:
    connections, outside, ref = _setup(tmp_path, 60.0)
    latest = connections.table(ref)
    outside.open_table("t").add(pa.table({"id": [4]}))
    assert connections.table(ref, version=1).count_rows() == 3
    assert connections.table(ref, version=2).count_rows() == 4
    assert connections.table(ref) is latest


def test_freshness_headers_reopen_a_handle_that_is_behind(tmp_path: Path) -> None:
    connections, outside, ref = _setup(tmp_path, 60.0)
    stale = connections.table(ref)
    outside.open_table("t").add(pa.table({"id": [4]}))
    connections.require_fresh(ref, min_version=1, min_time=None)  # satisfied: kept
    assert connections.table(ref) is stale
    connections.require_fresh(ref, min_version=2, min_time=None)  # the client has seen v2
    assert connections.table(ref).count_rows() == 4
    fresh = connections.table(ref)
    outside.open_table("t").add(pa.table({"id": [5]}))
    connections.require_fresh(ref, min_version=None, min_time=time.time())  # checkout_latest()
    assert connections.table(ref) is not fresh
    assert connections.table(ref).count_rows() == 5
