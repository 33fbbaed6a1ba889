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
from typing import Any

from lance.dataset import LanceDataset

from lancedb_ray.durable_files import write_atomically
from lancedb_ray.errors import InvalidInput
from lancedb_ray.storage.catalog import DatabaseLocation

_LOG = logging.getLogger(__name__)
UPLOADS_DIR = "_uploads"
UPLOAD_ID = "lancedb-ray.upload-id"  # the transaction property naming a completed upload
OPEN, COMMITTED, ABORTED = "open", "committed", "aborted"
# A commit gives up after COMMIT_TIMEOUT, so a claim older than STALE_CLAIM_SECONDS belongs to
# a request that died: another may take it over without risking a second commit.
COMMIT_TIMEOUT = timedelta(seconds=60)
STALE_CLAIM_SECONDS = 300.0
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
        self._location = location
        self._local = not location.is_azure
        self._table = table_uri.removeprefix("az://").rstrip("/")
        self._root = f"{self._table}/{UPLOADS_DIR}"

    # -- records ---------------------------------------------------------------------------

    def create(self, ttl_seconds: float) -> Upload:
        now = time.time()
        upload = Upload(uuid.uuid4().hex, now, now + ttl_seconds)
        self._put(self._path(upload.upload_id, "upload.json"), asdict(upload))
        return upload

    def get(self, upload_id: str) -> Upload | None:
        data = self._get(self._path(upload_id, "upload.json"))
        return None if data is None else Upload(**data)

    def put(self, upload: Upload) -> None:
        self._put(self._path(upload.upload_id, "upload.json"), asdict(upload))

    def put_part(self, upload_id: str, part: Part) -> None:
        """Record a staged part; a part sent again under the same id replaces the earlier one."""
        self._put(self._path(upload_id, "parts", f"{part.part_id}.json"), asdict(part))

    def parts(self, upload_id: str) -> list[Part]:
        parts = []
        for path in self._list(self._path(upload_id, "parts")):
            data = self._get(path)
            if data is not None:
                parts.append(Part(**data))
        return sorted(parts, key=lambda part: part.part_id)

    def upload_ids(self) -> list[str]:
        return [path.rsplit("/", 1)[-1] for path in self._list(self._root)]

    # -- claims ----------------------------------------------------------------------------

    def claim(self, upload_id: str, since: int, stale_after: float) -> Claim | None:
        """Claim ``upload_id`` for this request; None while another request holds a fresh claim.

        A claim older than ``stale_after`` belongs to a request that died: it is taken over,
        keeping its ``since`` (the dead request may have committed after that version).
        """
        path = self._path(upload_id, "claim.json")
        mine = Claim(since, time.time())
        if self._create(path, asdict(mine)):
            return mine
        held = self._get(path)
        if held is not None and time.time() - held["at"] < stale_after:
            return None
        mine.since = min(since, held["since"]) if held is not None else since
        if not self._replace_stale(path, held):
            return None  # another request took it over first
        return mine if self._create(path, asdict(mine)) else None

    def claimed(self, upload_id: str) -> bool:
        return self._get(self._path(upload_id, "claim.json")) is not None

    def release(self, upload_id: str) -> None:
        self._remove([self._path(upload_id, "claim.json")])

    # -- clean-up --------------------------------------------------------------------------

    def discard_parts(self, upload_id: str) -> None:
        """Delete the parts' data files (never committed), then their records."""
        parts = self.parts(upload_id)
        self._remove([f"{self._table}/data/{name}" for part in parts for name in part.data_files])
        self._remove([self._path(upload_id, "parts", f"{part.part_id}.json") for part in parts])

    def forget(self, upload_id: str) -> None:
        """Delete every record of ``upload_id`` (its data files stay: committed, or discarded)."""
        directory = self._path(upload_id)
        if self._local:
            shutil.rmtree(directory, ignore_errors=True)
            return
        try:
            self._fs.rm(directory, recursive=True)
        except FileNotFoundError:
            pass

    # -- the storage -----------------------------------------------------------------------

    def _path(self, upload_id: str, *parts: str) -> str:
        return "/".join([self._root, check_id("upload id", upload_id), *parts])

    @property
    def _fs(self) -> Any:
        return self._location.filesystem()

    def _put(self, path: str, data: dict[str, Any]) -> None:
        payload = json.dumps(data).encode()
        if self._local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write_atomically(Path(path), [payload])
        else:
            self._fs.pipe_file(path, payload)  # one Put Blob: replaced whole

    def _get(self, path: str) -> dict[str, Any] | None:
        try:
            raw = Path(path).read_bytes() if self._local else self._fs.cat_file(path)
        except FileNotFoundError:
            return None
        return json.loads(raw)

    def _list(self, directory: str) -> list[str]:
        try:
            if self._local:
                return [f"{directory}/{name}" for name in sorted(os.listdir(directory))
                        if not name.startswith(".")]
            self._fs.invalidate_cache(directory)
            return sorted(p.rstrip("/") for p in self._fs.ls(directory, detail=False))
        except FileNotFoundError:
            return []

    def _remove(self, paths: list[str]) -> None:
        if not paths:
            return
        if self._local:
            for path in paths:
                Path(path).unlink(missing_ok=True)
            return
        for path in paths:
            try:
                self._fs.rm_file(path)
            except FileNotFoundError:
                continue

    def _create(self, path: str, data: dict[str, Any]) -> bool:
        """Write ``path`` only if it does not exist; False if it does."""
        payload = json.dumps(data).encode()
        if self._local:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
            write_atomically(temp, [payload])
            try:
                os.link(temp, target)  # fails if the target exists: create-if-absent, whole
                return True
            except FileExistsError:
                return False
            finally:
                temp.unlink(missing_ok=True)
        from azure.core.exceptions import ResourceExistsError

        try:
            self._blob(path).upload_blob(payload, overwrite=False)  # If-None-Match: *
            return True
        except ResourceExistsError:
            return False

    def _replace_stale(self, path: str, held: dict[str, Any] | None) -> bool:
        """Remove the stale claim at ``path`` unless another request replaced it meanwhile."""
        if self._local:
            try:
                os.rename(path, f"{path}.{uuid.uuid4().hex}.stale")  # only one renamer wins
            except FileNotFoundError:
                return held is None
            for name in os.listdir(Path(path).parent):
                if name.endswith(".stale"):
                    Path(path).parent.joinpath(name).unlink(missing_ok=True)
            return True
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        blob = self._blob(path)
        try:
            etag = blob.get_blob_properties().etag
            if self._get(path) != held:
                return False
            blob.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
            return True
        except ResourceNotFoundError:
            return held is None
        except ResourceModifiedError:
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
        cleaned += 1
        _LOG.info("expired upload %s of %s (%s)", upload_id, dataset.uri,
                  "no record" if upload is None else upload.state)
    return cleaned
