"""The embedded bus: a SQLite database in WAL mode on local disk.

The local default needs no broker, yet must keep events across restarts and
accept several publisher processes on one machine (Serve replicas, jobs).
Layout under ``EmbeddedBusSettings.directory``::

    events.sqlite         events(position, appended_at, body) + groups(name, position)
    groups/<group>.lock   flock held by the group's active consumer

SQLite serialises writers across processes and assigns each event its position
(``AUTOINCREMENT``: increasing, never reused) inside the writing transaction, so
a reader sees a gapless prefix; ``synchronous=FULL`` makes a published event
durable before ``publish`` returns. A group's checkpoint is the position of the
last event it committed. One consumer per group reads at a time; another one of
the same group waits on the lock and takes over when the first closes or its
process dies, like a Kafka consumer left without partitions.

Events every group has committed are deleted once older than
``retention_seconds`` (a group counts from its first claim, so an event a known
group has not consumed is never deleted); freed pages go back to the file system.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from lancedb_ray.durable_files import try_lock
from lancedb_ray.events.bus import Delivery
from lancedb_ray.events.model import ChangeEvent
from lancedb_ray.settings import EmbeddedBusSettings

_LOG = logging.getLogger(__name__)

DATABASE_FILE = "events.sqlite"
GROUPS_DIR = "groups"
_POLL_INTERVAL_S = 0.05  # how often an idle poll looks for new events
_BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another process's transaction
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    appended_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS groups (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
"""


def connect(directory: Path) -> sqlite3.Connection:
    """The bus database under ``directory``, created on first use; one connection per caller."""
    directory.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(directory / DATABASE_FILE, timeout=_BUSY_TIMEOUT_MS / 1000,
                           isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA auto_vacuum = FULL")  # deleted events' pages go back to the file system
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(_SCHEMA)
    return conn


class EmbeddedPublisher:
    def __init__(self, settings: EmbeddedBusSettings) -> None:
        self._directory = Path(settings.directory)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection, used from worker threads one at a time

    async def publish(self, events: Sequence[ChangeEvent]) -> None:
        rows = [(time.time(), event.to_json()) for event in events]
        await asyncio.to_thread(self._append, rows)

    def _append(self, rows: list[tuple[float, bytes]]) -> None:
        with self._lock:
            if self._conn is None:
                self._conn = connect(self._directory)
            with _transaction(self._conn):
                self._conn.executemany("INSERT INTO events (appended_at, body) VALUES (?, ?)", rows)

    async def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class EmbeddedConsumer:
    def __init__(self, settings: EmbeddedBusSettings, group: str) -> None:
        self._directory = Path(settings.directory)
        self._group = group
        self._retention_s = settings.retention_seconds
        self._lock_path = self._directory / GROUPS_DIR / f"{quote(group, safe='')}.lock"
        self._lock_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        # One connection, used from worker threads: closing it while a read runs crashed the process.
        # The lock also orders a claim running in a worker thread against close().
        self._conn_lock = threading.Lock()
        self._closed = False
        self._position = 0  # of the last event delivered
        self._committed = 0
        self._trimmed_at = 0.0

    async def poll(self, max_events: int, timeout_s: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout_s
        while True:
            if self._lock_fd is not None or await asyncio.to_thread(self._claim_group):
                deliveries = await asyncio.to_thread(self._read, max_events)
                if deliveries:
                    return deliveries
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            await asyncio.sleep(min(_POLL_INTERVAL_S, remaining))

    async def commit(self, deliveries: Sequence[Delivery]) -> None:
        position = max(delivery.position for delivery in deliveries)
        if position > self._committed and self._conn is not None:
            await asyncio.to_thread(self._checkpoint, position)
            self._committed = position

    async def close(self) -> None:
        with self._conn_lock:
            self._closed = True  # a claim still running in a worker thread gives up
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the lock file releases the group to a standby
                self._lock_fd = None

    def _claim_group(self) -> bool:
        with self._conn_lock:
            if self._closed:
                return False
            if self._lock_fd is not None:
                return True
            self._lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = try_lock(self._lock_path)
            if fd is None:
                return False
            self._lock_fd = fd
            self._conn = connect(self._directory)
            with _transaction(self._conn):  # from now on the group holds back trimming
                self._conn.execute("INSERT OR IGNORE INTO groups (name, position) VALUES (?, 0)",
                                   (self._group,))
                (self._committed,) = self._conn.execute(
                    "SELECT position FROM groups WHERE name = ?", (self._group,)).fetchone()
            self._position = self._committed
            return True

    def _read(self, max_events: int) -> list[Delivery]:
        with self._conn_lock:
            if self._conn is None:  # closed meanwhile
                return []
            rows = self._conn.execute(
                "SELECT position, body FROM events WHERE position > ? ORDER BY position LIMIT ?",
                (self._position, max_events)).fetchall()
        deliveries = []
        for position, body in rows:
            self._position = position
            event = _decode(body, position)
            if event is not None:
                deliveries.append(Delivery(event, position))
        return deliveries

    def _checkpoint(self, position: int) -> None:
        with self._conn_lock:
            if self._conn is None:  # closed meanwhile: the next owner of the group reads again
                return
            with _transaction(self._conn):
                self._conn.execute("UPDATE groups SET position = ? WHERE name = ?",
                                   (position, self._group))
            if time.monotonic() - self._trimmed_at >= min(self._retention_s, 60.0):
                self._trimmed_at = time.monotonic()
                try:
                    trim(self._conn, self._retention_s)
                except sqlite3.Error as exc:  # the checkpoint is written; trimming waits
                    _LOG.warning("trimming the embedded event log failed: %s", exc)


def trim(conn: sqlite3.Connection, retention_s: float) -> int:
    """Delete the events every group has committed that are older than ``retention_s``; how many.

    With no group known yet nothing is deleted. Freed pages are returned to the file system.
    """
    with _transaction(conn):
        deleted = conn.execute(
            "DELETE FROM events WHERE position <= (SELECT MIN(position) FROM groups) AND appended_at < ?",
            (time.time() - retention_s,)).rowcount
    if deleted:  # the freed pages leave the database at the commit; the write-ahead log is emptied
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        _LOG.info("trimmed %d consumed events from the embedded event log", deleted)
    return deleted


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` .. ``COMMIT``, rolled back on error: the write lock is taken up front,
    so two writers never deadlock upgrading a read lock."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _decode(body: bytes, position: int) -> ChangeEvent | None:
    try:
        return ChangeEvent.from_json(body)
    except ValueError as exc:
        _LOG.warning("skipping a corrupt event at position %d of the event log: %s", position, exc)
        return None


def log_end(directory: Path) -> int:
    """Position of the last event ever published (0 for none); for operators and tests."""
    if not (directory / DATABASE_FILE).exists():
        return 0
    conn = connect(directory)
    try:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return 0 if row is None else int(row[0])
    finally:
        conn.close()


def committed(directory: Path, group: str) -> int:
    """Position of the last event ``group`` committed (0 for none); for operators and tests."""
    if not (directory / DATABASE_FILE).exists():
        return 0
    conn = connect(directory)
    try:
        row = conn.execute("SELECT position FROM groups WHERE name = ?", (group,)).fetchone()
        return 0 if row is None else int(row[0])
    finally:
        conn.close()


def read_all(directory: Path) -> list[ChangeEvent]:
    """Every event still in the log, in order; for operators and tests."""
    if not (directory / DATABASE_FILE).exists():
        return []
    conn = connect(directory)
    try:
        rows = conn.execute("SELECT position, body FROM events ORDER BY position").fetchall()
    finally:
        conn.close()
    return [event for position, body in rows if (event := _decode(body, position)) is not None]
