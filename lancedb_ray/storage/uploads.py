"""The records of multipart uploads (phalanx 0.4), kept on the table's own storage.

Layout, inside the table's directory (``<table>.lance/``), beside lance's own::

    _uploads/<upload id>/upload.json        the upload: state, creation and expiry times
    _uploads/<upload id>/parts/<part>.json  a staged part: its uncommitted lance fragments
    _uploads/<upload id>/claim.json         held by the one request completing or aborting it

The parts' data files are written into the table's ``data/`` directory (lance
``write_fragments``) but no version references them until ``complete`` commits
them. Keeping the records under the table means they travel with a rename,
vanish with a drop, and are reachable from every replica and the agent, on a
local directory and on Azure Blob Storage alike. Every record is replaced
atomically (rename on a local disk, one Put Blob on Azure); a claim is created
only if absent (a hard link / ``If-None-Match``), so two requests can never
both complete (or one complete and one abort) the same upload.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from lance.dataset import LanceDataset

from lancedb_ray.durable_files import try_lock, write_atomically
from lancedb_ray.errors import InvalidInput
from lancedb_ray.metrics import Metric, MetricSet
from lancedb_ray.storage.catalog import DatabaseLocation

_LOG = logging.getLogger(__name__)
UPLOADS_DIR = "_uploads"
UPLOAD_ID = "lancedb-ray.upload-id"  # the transaction property naming a completed upload
OPEN, COMMITTED, ABORTED = "open", "committed", "aborted"
# A commit gives up after COMMIT_TIMEOUT, so a claim older than STALE_CLAIM_SECONDS belongs to
# a request that died: another may take it over without risking a second commit.
COMMIT_TIMEOUT = timedelta(seconds=60)
STALE_CLAIM_SECONDS = 300.0
METRICS = MetricSet(
    "multipart",
    {"uploads_total": Metric(
        "Counter", "Multipart uploads by outcome: created, completed, replayed (a retried complete "
        "answered again), aborted, expired.", ("outcome",))},
)
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def check_id(kind: str, value: str | None) -> str:
    """``value`` if it is safe as a path segment (the client sends UUIDs), else 400."""
    if not value or len(value) > 128 or not set(value) <= _ID_CHARS:
        raise InvalidInput(f"invalid {kind} '{str(value)[:64]}': expected letters, digits, '-' or '_'")
    return value


@dataclass
class Upload:
    upload_id: str
    created_at: float
    expires_at: float
    state: str = OPEN
    version: int | None = None  # the version that committed it


@dataclass
class Part:
    part_id: str
    overwrite: bool
    rows: int
    schema: str  # the Arrow schema of the part's data, IPC-serialised, hex
    fragments: list[dict[str, Any]] = field(default_factory=list)  # FragmentMetadata.to_json()

    @property
    def data_files(self) -> list[str]:
        return [f["path"] for fragment in self.fragments for f in fragment["files"]]


@dataclass
class Claim:
    """Who is completing (or aborting) an upload, and the version it read first: a commit of
    the upload, if one happened, is newer than ``since``."""

    since: int
    at: float
    by: str = field(default_factory=lambda: uuid.uuid4().hex)


class TableUploads:
    """The uploads of one table (``table_uri``: the lance dataset's URI)."""

    def __init__(self, location: DatabaseLocation, table_uri: str) -> None:
        self._files: _Files = _BlobFiles(location) if location.is_azure else _LocalFiles()
        self._table = table_uri.removeprefix("az://").rstrip("/")
        self._root = f"{self._table}/{UPLOADS_DIR}"

    # -- records ---------------------------------------------------------------------------

    def create(self, ttl_seconds: float) -> Upload:
        now = time.time()
        upload = Upload(uuid.uuid4().hex, now, now + ttl_seconds)
        self.put(upload)
        return upload

    def get(self, upload_id: str) -> Upload | None:
        raw = self._files.get(self._path(upload_id, "upload.json"))
        return None if raw is None else Upload(**json.loads(raw))

    def put(self, upload: Upload) -> None:
        self._files.put(self._path(upload.upload_id, "upload.json"), _json(upload))

    def put_part(self, upload_id: str, part: Part) -> None:
        """Record a staged part; a part sent again under the same id replaces the earlier one."""
        self._files.put(self._path(upload_id, "parts", f"{part.part_id}.json"), _json(part))

    def parts(self, upload_id: str) -> list[Part]:
        raws = (self._files.get(path) for path in self._files.list(self._path(upload_id, "parts")))
        parts = [Part(**json.loads(raw)) for raw in raws if raw is not None]
        return sorted(parts, key=lambda part: part.part_id)

    def upload_ids(self) -> list[str]:
        return [path.rsplit("/", 1)[-1] for path in self._files.list(self._root)]

    # -- claims ----------------------------------------------------------------------------

    def claim(self, upload_id: str, since: int, stale_after: float) -> Claim | None:
        """Claim ``upload_id`` for this request; None while another request holds a fresh claim.

        A claim older than ``stale_after`` belongs to a request that died: it is taken over,
        keeping its ``since`` (the dead request may have committed after that version).
        """
        path = self._path(upload_id, "claim.json")
        mine = Claim(since, time.time())
        if self._files.create(path, _json(mine)):
            return mine
        raw = self._files.get(path)
        if raw is None:  # released meanwhile
            return mine if self._files.create(path, _json(mine)) else None
        held = Claim(**json.loads(raw))
        if mine.at - held.at < stale_after:
            return None
        mine.since = min(since, held.since)
        return mine if self._files.swap(path, raw, _json(mine)) else None

    def claimed(self, upload_id: str) -> bool:
        return self._files.get(self._path(upload_id, "claim.json")) is not None

    def release(self, upload_id: str) -> None:
        self._files.remove([self._path(upload_id, "claim.json")])

    # -- clean-up --------------------------------------------------------------------------

    def discard_parts(self, upload_id: str) -> None:
        """Delete the parts' data files (never committed), then their records."""
        parts = self.parts(upload_id)
        self._files.remove([f"{self._table}/data/{name}" for part in parts for name in part.data_files])
        self._files.remove([self._path(upload_id, "parts", f"{part.part_id}.json") for part in parts])

    def forget(self, upload_id: str) -> None:
        """Delete every record of ``upload_id`` (its data files stay: committed, or discarded)."""
        self._files.remove_tree(self._path(upload_id))

    def _path(self, upload_id: str, *parts: str) -> str:
        return "/".join([self._root, check_id("upload id", upload_id), *parts])


def _json(record: Any) -> bytes:
    return json.dumps(asdict(record)).encode()


class _Files(Protocol):
    """Small files on a table's storage, each written whole."""

    def put(self, path: str, payload: bytes) -> None: ...

    def get(self, path: str) -> bytes | None: ...

    def list(self, directory: str) -> list[str]: ...

    def remove(self, paths: list[str]) -> None: ...

    def remove_tree(self, directory: str) -> None: ...

    def create(self, path: str, payload: bytes) -> bool:
        """Write ``path`` only if it does not exist; False if it does."""

    def swap(self, path: str, expected: bytes, payload: bytes) -> bool:
        """Replace ``path`` only if it still holds ``expected``; False if it does not."""


class _LocalFiles:
    """A local directory: atomic renames, a hard link to create only if absent."""

    def put(self, path: str, payload: bytes) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(Path(path), [payload])

    def get(self, path: str) -> bytes | None:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            return None

    def list(self, directory: str) -> list[str]:
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        return [f"{directory}/{name}" for name in names if not name.startswith(".")]

    def remove(self, paths: list[str]) -> None:
        for path in paths:
            Path(path).unlink(missing_ok=True)

    def remove_tree(self, directory: str) -> None:
        shutil.rmtree(directory, ignore_errors=True)

    def create(self, path: str, payload: bytes) -> bool:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        write_atomically(temp, [payload])
        try:
            os.link(temp, target)  # fails if the target exists: created whole, or not at all
            return True
        except FileExistsError:
            return False
        finally:
            temp.unlink(missing_ok=True)

    def swap(self, path: str, expected: bytes, payload: bytes) -> bool:
        lock = try_lock(Path(path).with_name(f".{Path(path).name}.lock"))
        if lock is None:
            return False  # another request is swapping it
        try:
            if self.get(path) != expected:
                return False
            write_atomically(Path(path), [payload])
            return True
        finally:
            os.close(lock)


class _BlobFiles:
    """Azure Blob Storage: one Put Blob replaces a blob whole; conditions on ETags."""

    def __init__(self, location: DatabaseLocation) -> None:
        self._location = location

    @property
    def _fs(self) -> Any:
        return self._location.filesystem()

    def put(self, path: str, payload: bytes) -> None:
        self._fs.pipe_file(path, payload)

    def get(self, path: str) -> bytes | None:
        try:
            return self._fs.cat_file(path)
        except FileNotFoundError:
            return None

    def list(self, directory: str) -> list[str]:
        self._fs.invalidate_cache(directory)
        try:
            return sorted(p.rstrip("/") for p in self._fs.ls(directory, detail=False))
        except FileNotFoundError:
            return []

    def remove(self, paths: list[str]) -> None:
        for path in paths:
            try:
                self._fs.rm_file(path)
            except FileNotFoundError:
                continue

    def remove_tree(self, directory: str) -> None:
        try:
            self._fs.rm(directory, recursive=True)
        except FileNotFoundError:
            pass

    def create(self, path: str, payload: bytes) -> bool:
        from azure.core.exceptions import ResourceExistsError

        try:
            self._blob(path).upload_blob(payload, overwrite=False)  # If-None-Match: *
            return True
        except ResourceExistsError:
            return False

    def swap(self, path: str, expected: bytes, payload: bytes) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        blob = self._blob(path)
        try:
            current = blob.download_blob()
            if current.readall() != expected:
                return False
            blob.upload_blob(payload, overwrite=True, etag=current.properties.etag,
                             match_condition=MatchConditions.IfNotModified)
            return True
        except (ResourceNotFoundError, ResourceModifiedError):
            return False

    def _blob(self, path: str) -> Any:
        from lancedb_ray.storage.clients import blob_service_client

        container, _, name = path.partition("/")
        return blob_service_client(self._location.storage_options).get_blob_client(container, name)


def transaction_properties(dataset: LanceDataset, version: int) -> dict[str, str]:
    """A commit's transaction properties; {} where lance cannot decode the transaction.

    Read one version at a time: pylance 14 cannot decode some transactions (a
    compaction that remapped an index), and one such commit must not hide the rest.
    """
    try:
        transaction = dataset.read_transaction(version)
    except (OSError, ValueError, RuntimeError, TypeError):
        return {}
    return dict(transaction.transaction_properties or {}) if transaction else {}


def committed_version(dataset: LanceDataset, upload_id: str, since: int) -> int | None:
    """The version newer than ``since`` whose commit carries ``upload_id``, if any."""
    for version in range(dataset.version, max(0, since), -1):
        if transaction_properties(dataset, version).get(UPLOAD_ID) == upload_id:
            return version
    return None


def expire(uploads: TableUploads, dataset: LanceDataset, now: float) -> int:
    """Delete the uploads of one table that are past their expiry; how many.

    A committed upload loses its records only (lance owns its data files now); any
    other loses its parts' data files too, unless a commit of it is found (a request
    that died between the commit and its record). Until then a finished upload's
    record answers a late retry of ``complete`` or a ``complete`` after ``abort``.
    """
    cleaned = 0
    for upload_id in uploads.upload_ids():
        upload = uploads.get(upload_id)
        if upload is not None and upload.expires_at > now:
            continue
        if upload is None or upload.state != COMMITTED:
            claim = uploads.claim(upload_id, dataset.version, STALE_CLAIM_SECONDS)
            if claim is None:
                continue  # being completed right now
            if committed_version(dataset, upload_id, claim.since) is None:
                uploads.discard_parts(upload_id)
        uploads.forget(upload_id)
        METRICS.inc("uploads_total", outcome="expired")
        cleaned += 1
        _LOG.info("expired upload %s of %s (%s)", upload_id, dataset.uri,
                  "no record" if upload is None else upload.state)
    return cleaned
