"""Durable job records on the storage: one JSON document per job.

Two backends behind one interface, picked by where the storage root is:

* a local root keeps records in ``AgentSettings.jobs_directory`` (by default
  ``<root>/.system/jobs``, see ``Settings.state_directory``), each written to a temporary file, fsync'd and
  renamed over the record, so a crash leaves the old record or the new one;
* an Azure root keeps them under ``<root>/.system/jobs/`` in the root's own
  container: one Put Blob replaces a blob atomically, so a reader never sees
  half a record. (``.system`` can never be a database: names may not start
  with a dot.) The acting agent holds a renewed lease on ``.agent.lock`` there,
  as the local store holds an flock, so one agent acts at a time.

Records are named ``<job id>.json``; ids sort by creation time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from lancedb_ray.agent.jobs import Job, JobState
from lancedb_ray.durable_files import try_lock, write_atomically
from lancedb_ray.settings import SYSTEM_DIR, Settings, StorageSettings
from lancedb_ray.storage.catalog import DatabaseLocation
from lancedb_ray.storage.credentials import place_and_options

_LOG = logging.getLogger(__name__)
JOBS_DIR = "jobs"
_SUFFIX = ".json"
_LOCK_FILE = "agent.lock"
_LOCK_BLOB = ".agent.lock"  # a leading dot: never taken for a record
_LEASE_SECONDS = 60  # the longest finite blob lease


class JobStore(Protocol):
    def put(self, job: Job) -> None:
        """Write ``job``'s record durably, replacing an earlier one of the same id."""

    def get(self, job_id: str) -> Job | None: ...

    def list(self) -> list[Job]:
        """Every readable record, oldest first; unreadable ones are logged and skipped."""

    def delete(self, job_ids: Iterable[str]) -> None: ...

    def unlock(self) -> None: ...

    def try_lock(self) -> bool:
        """Claim the store for this agent; False while another live agent holds it."""


def open_job_store(settings: Settings) -> JobStore:
    """The job store for these settings (see the module docstring)."""
    root = root_location(settings.storage)
    if root.is_azure:
        return BlobJobStore(root)
    return LocalJobStore(settings.agent.jobs_directory)


def root_location(storage: StorageSettings) -> DatabaseLocation:
    """The storage root as a location, with the options of the root's credential."""
    place, options = place_and_options(storage.root)
    return DatabaseLocation("", place.uri, options)


def describe(store: JobStore) -> str:
    return getattr(store, "where", type(store).__name__)


def select(
    jobs: Iterable[Job],
    state: str | None = None,
    database: str | None = None,
    table: str | None = None,
    limit: int | None = None,
) -> list[Job]:
    """Filter records for display: newest first, at most ``limit``."""
    wanted = JobState(state) if state else None
    chosen = [
        job
        for job in jobs
        if (wanted is None or job.state is wanted)
        and (database is None or job.database == database)
        and (table is None or job.table == table)
    ]
    chosen.sort(key=lambda job: (job.created_at, job.id), reverse=True)
    return chosen[:limit] if limit is not None else chosen


def expired(jobs: Iterable[Job], retention_seconds: float, now: float | None = None) -> list[str]:
    """Ids of finished jobs older than the retention: safe to delete."""
    horizon = (now or time.time()) - retention_seconds
    return [
        job.id
        for job in jobs
        if not job.state.active and (job.finished_at or job.created_at) < horizon
    ]


class LocalJobStore:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.where = str(self.directory)
        self._lock_fd: int | None = None

    def put(self, job: Job) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomically(self.directory / f"{job.id}{_SUFFIX}", [job.to_json()])

    def get(self, job_id: str) -> Job | None:
        try:
            return Job.from_json((self.directory / f"{job_id}{_SUFFIX}").read_bytes())
        except FileNotFoundError:
            return None

    def list(self) -> list[Job]:
        try:
            names = sorted(n for n in os.listdir(self.directory) if _is_record(n))
        except FileNotFoundError:
            return []
        jobs = []
        for name in names:
            try:
                jobs.append(Job.from_json((self.directory / name).read_bytes()))
            except FileNotFoundError:
                continue  # pruned meanwhile
            except ValueError as exc:
                _LOG.warning("skipping unreadable job record %s: %s", self.directory / name, exc)
        return jobs

    def delete(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            (self.directory / f"{job_id}{_SUFFIX}").unlink(missing_ok=True)

    def try_lock(self) -> bool:
        """An flock on ``agent.lock``, released by the kernel when this process dies."""
        if self._lock_fd is not None:
            return True
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = try_lock(self.directory / _LOCK_FILE)
        return self._lock_fd is not None

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class BlobJobStore:
    """Records as blobs under the root location, through its fsspec filesystem (adlfs)."""

    def __init__(self, root: DatabaseLocation) -> None:
        self._root = root
        self._base = root.fs_path(SYSTEM_DIR, JOBS_DIR)
        self.where = f"{root.uri}/{SYSTEM_DIR}/{JOBS_DIR}"

    @property
    def _fs(self) -> Any:
        return self._root.filesystem()

    def put(self, job: Job) -> None:
        self._fs.pipe_file(f"{self._base}/{job.id}{_SUFFIX}", job.to_json())

    def get(self, job_id: str) -> Job | None:
        try:
            return Job.from_json(self._fs.cat_file(f"{self._base}/{job_id}{_SUFFIX}"))
        except FileNotFoundError:
            return None

    def list(self) -> list[Job]:
        fs = self._fs
        fs.invalidate_cache(self._base)
        try:
            paths = sorted(p for p in fs.ls(self._base, detail=False) if _is_record(p.rsplit("/", 1)[-1]))
        except FileNotFoundError:
            return []
        if not paths:  # only the lease blob, or nothing
            return []
        jobs = []
        for path, data in fs.cat(paths, on_error="return").items():
            if isinstance(data, FileNotFoundError):
                continue
            try:
                if isinstance(data, Exception):
                    raise ValueError(str(data))
                jobs.append(Job.from_json(data))
            except ValueError as exc:
                _LOG.warning("skipping unreadable job record %s: %s", path, exc)
        jobs.sort(key=lambda job: job.id)
        return jobs

    def delete(self, job_ids: Iterable[str]) -> None:
        paths = [f"{self._base}/{job_id}{_SUFFIX}" for job_id in job_ids]
        if paths:
            self._fs.rm(paths)

    def try_lock(self) -> bool:
        """A lease on the blob ``.agent.lock`` beside the records, renewed while held.

        One agent acts at a time, also while Serve replaces a replica (the old one
        holds the lease until it stops); a dead agent's lease runs out after
        ``_LEASE_SECONDS`` and a standby takes over.
        """
        from azure.core.exceptions import HttpResponseError, ResourceExistsError

        if getattr(self, "_lease", None) is not None:
            return True  # held already
        blob = self._lock_blob()
        try:
            blob.upload_blob(b"", overwrite=False)
        except (ResourceExistsError, HttpResponseError) as exc:
            if getattr(exc, "status_code", 409) != 409:
                raise  # 409: it exists (perhaps leased)
        try:
            lease = blob.acquire_lease(lease_duration=_LEASE_SECONDS)
        except HttpResponseError as exc:
            if exc.status_code == 409:  # another agent holds it
                return False
            raise
        self._lease = lease
        self._renewing = threading.Event()
        threading.Thread(target=self._renew, args=(lease, self._renewing), name="job-store-lease",
                         daemon=True).start()
        return True

    def unlock(self) -> None:
        lease = getattr(self, "_lease", None)
        if lease is None:
            return
        self._renewing.set()
        self._lease = None
        try:
            lease.release()
        except Exception:  # it runs out by itself
            _LOG.warning("releasing the job store's lease failed", exc_info=True)

    def _lock_blob(self) -> Any:
        from lancedb_ray.storage.clients import blob_service_client

        container, _, prefix = self._base.partition("/")
        name = f"{prefix}/{_LOCK_BLOB}" if prefix else _LOCK_BLOB
        return blob_service_client(self._root.storage_options).get_blob_client(container, name)

    @staticmethod
    def _renew(lease: Any, stop: threading.Event) -> None:
        while not stop.wait(_LEASE_SECONDS / 3):
            try:
                lease.renew()
            except Exception:  # a missed renewal is retried; the lease outlives two of them
                _LOG.warning("renewing the job store's lease failed", exc_info=True)


def _is_record(name: str) -> bool:
    return name.endswith(_SUFFIX) and not name.startswith(".")

