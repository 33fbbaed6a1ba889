"""The embedded bus: an fsync'd append-only log on local disk.

The local default needs no broker, yet must keep events across restarts and
accept several publisher processes on one machine (Serve replicas, jobs).
Layout under ``EmbeddedBusSettings.directory``::

    events.log            one JSON line per event, appended under flock, fsync'd
    groups/<group>.json   {"offset": N}: the group resumes at byte N (temp + rename)
    groups/<group>.lock   flock held by the group's active consumer

A position is the byte offset just past an event's line. One consumer per
group reads at a time; another one of the same group waits on the lock and
takes over when the first closes or its process dies, like a Kafka consumer
left without partitions.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from lancedb_ray.durable_files import fsync_directory, try_lock, write_atomically
from lancedb_ray.events.bus import Delivery
from lancedb_ray.events.model import ChangeEvent
from lancedb_ray.settings import EmbeddedBusSettings

_LOG = logging.getLogger(__name__)

LOG_FILE = "events.log"
GROUPS_DIR = "groups"
_POLL_INTERVAL_S = 0.05  # how often an idle poll looks for new lines
_READ_CHUNK = 1 << 20


class EmbeddedPublisher:
    def __init__(self, settings: EmbeddedBusSettings) -> None:
        self._directory = Path(settings.directory)
        self._fd: int | None = None
        self._lock = threading.Lock()  # flock does not exclude threads sharing one descriptor

    async def publish(self, events: Sequence[ChangeEvent]) -> None:
        data = b"".join(event.to_json() + b"\n" for event in events)
        await asyncio.to_thread(self._append, data)

    def _append(self, data: bytes) -> None:
        with self._lock:
            fd = self._open()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # seal a line torn by a writer that crashed mid-write
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _open(self) -> int:
        if self._fd is None:
            self._directory.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self._directory / LOG_FILE, os.O_RDWR | os.O_APPEND | os.O_CREAT)
            fsync_directory(self._directory)  # the new file's name must survive a crash too
        return self._fd

    async def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class EmbeddedConsumer:
    def __init__(self, settings: EmbeddedBusSettings, group: str) -> None:
        self._directory = Path(settings.directory)
        name = quote(group, safe="")
        self._checkpoint_path = self._directory / GROUPS_DIR / f"{name}.json"
        self._lock_path = self._directory / GROUPS_DIR / f"{name}.lock"
        self._lock_fd: int | None = None
        self._log_fd: int | None = None
        self._position = 0  # next byte to read
        self._committed = 0

    async def poll(self, max_events: int, timeout_s: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout_s
        while True:
            if self._claim_group():
                deliveries = self._read(max_events)
                if deliveries:
                    return deliveries
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            await asyncio.sleep(min(_POLL_INTERVAL_S, remaining))

    async def commit(self, deliveries: Sequence[Delivery]) -> None:
        offset = max(delivery.position for delivery in deliveries)
        if offset > self._committed:
            await asyncio.to_thread(_write_checkpoint, self._checkpoint_path, offset)
            self._committed = offset

    async def close(self) -> None:
        for fd in (self._log_fd, self._lock_fd):
            if fd is not None:
                os.close(fd)  # closing the lock file releases the group to a standby
        self._log_fd = self._lock_fd = None

    def _claim_group(self) -> bool:
        if self._lock_fd is not None:
            return True
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = try_lock(self._lock_path)
        if fd is None:
            return False
        self._lock_fd = fd
        self._committed = self._position = _read_checkpoint(self._checkpoint_path)
        return True

    def _read(self, max_events: int) -> list[Delivery]:
        if self._log_fd is None:
            try:
                self._log_fd = os.open(self._directory / LOG_FILE, os.O_RDONLY)
            except FileNotFoundError:
                return []
        if os.fstat(self._log_fd).st_size < self._position:
            _LOG.warning("the event log is shorter than group checkpoint %d: re-reading it", self._position)
            self._position = self._committed = 0  # the log was recreated; at-least-once beats silence
        deliveries: list[Delivery] = []
        chunk = _READ_CHUNK
        while len(deliveries) < max_events:
            data = os.pread(self._log_fd, chunk, self._position)
            end = data.rfind(b"\n")
            if end < 0:
                if len(data) < chunk:
                    break  # nothing complete yet: a writer may be mid-line
                chunk *= 2  # one line longer than the chunk
                continue
            for line in data[: end + 1].splitlines(keepends=True):
                self._position += len(line)
                event = _decode(line, self._position)
                if event is not None:
                    deliveries.append(Delivery(event, self._position))
                    if len(deliveries) == max_events:
                        break
        return deliveries


def _decode(line: bytes, end: int) -> ChangeEvent | None:
    if not line.strip():
        return None  # the seal after a torn line
    try:
        return ChangeEvent.from_json(line)
    except ValueError as exc:
        _LOG.warning("skipping a corrupt record ending at byte %d of the event log: %s", end, exc)
        return None


def _read_checkpoint(path: Path) -> int:
    try:
        return int(json.loads(path.read_bytes())["offset"])
    except FileNotFoundError:
        return 0


def _write_checkpoint(path: Path, offset: int) -> None:
    write_atomically(path, [json.dumps({"offset": offset}).encode()])

