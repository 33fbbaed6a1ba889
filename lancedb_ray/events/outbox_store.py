"""The durable outbox: change events whose publish failed, kept on disk until published.

Several processes on one machine (Serve replicas) may share one outbox
directory, and any of them may die with events still in it. So each store
owns its own pair of files, ``<id>.jsonl`` (one JSON event per line) and
``<id>.lock`` (flock held for the owner's lifetime). A ``.jsonl`` whose lock
nobody holds belongs to a dead process: another store adopts it, appending
its events to its own file before deleting the orphan. A crash between those
steps publishes the events twice, never zero times.
"""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from collections import deque
from pathlib import Path

from lancedb_ray.durable_files import fsync_directory, write_atomically
from lancedb_ray.events.model import ChangeEvent

_LOG = logging.getLogger(__name__)


class OutboxStore:
    """One process's outbox. Not thread-safe: one thread drives it."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._directory = Path(directory)
        self._id = f"{os.getpid()}-{uuid.uuid4().hex}"
        self._data_path = self._directory / f"{self._id}.jsonl"
        self._lock_fd: int | None = None
        self._events: deque[ChangeEvent] = deque()

    def __len__(self) -> int:
        return len(self._events)

    def open(self) -> None:
        """Take ownership of a fresh file pair, then adopt what dead processes left."""
        self._directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._directory / f"{self._id}.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)  # before the data file exists, so it is never orphaned
        self._lock_fd = fd
        self.adopt_orphans()

    def adopt_orphans(self) -> int:
        """Take over the events of outboxes whose owner is gone; returns how many."""
        adopted = 0
        for data_path in sorted(self._directory.glob("*.jsonl")):
            if data_path != self._data_path:
                adopted += self._adopt(data_path)
        return adopted

    def append(self, events: list[ChangeEvent]) -> None:
        """Durably add ``events`` after those already waiting."""
        _append_lines(self._data_path, b"".join(event.to_json() + b"\n" for event in events))
        self._events.extend(events)

    def peek(self, limit: int) -> list[ChangeEvent]:
        return [self._events[i] for i in range(min(limit, len(self._events)))]

    def remove(self, count: int) -> None:
        """Forget the oldest ``count`` events, once they are published."""
        for _ in range(count):
            self._events.popleft()
        if not self._events:
            self._data_path.unlink(missing_ok=True)
            return
        write_atomically(self._data_path, (event.to_json() + b"\n" for event in self._events))

    def close(self) -> None:
        """Release the files; events still waiting stay on disk for the next owner."""
        if self._lock_fd is None:
            return
        if not self._events:
            self._data_path.unlink(missing_ok=True)
            (self._directory / f"{self._id}.lock").unlink(missing_ok=True)
        os.close(self._lock_fd)  # releases the lock: a waiting file becomes adoptable
        self._lock_fd = None

    def _adopt(self, data_path: Path) -> int:
        lock_path = data_path.with_suffix(".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # its owner is alive
            try:
                data = data_path.read_bytes()
            except FileNotFoundError:
                data = b""  # its owner finished and cleaned up meanwhile
            events = _decode_lines(data, data_path)
            if events:
                self.append(events)
            data_path.unlink(missing_ok=True)
            data_path.with_suffix(".tmp").unlink(missing_ok=True)
            lock_path.unlink(missing_ok=True)
            if events:
                _LOG.info("adopted %d unpublished change events from %s", len(events), data_path)
            return len(events)
        finally:
            os.close(fd)


def _decode_lines(data: bytes, source: Path) -> list[ChangeEvent]:
    events = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            events.append(ChangeEvent.from_json(line))
        except ValueError as exc:
            _LOG.warning("dropping a corrupt outbox record in %s: %s", source, exc)
    return events


def _append_lines(path: Path, data: bytes) -> None:
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    size = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.ftruncate(fd, size)  # no torn line for the next append to run into
        raise
    finally:
        os.close(fd)
    if created:
        fsync_directory(path.parent)

