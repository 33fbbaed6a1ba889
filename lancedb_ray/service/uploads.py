"""Multipart writes (phalanx 0.4): parts staged on the table's storage, committed exactly once.

The client opens an upload (``multipart_write/create``), sends its data as parts
in parallel (``insert/?upload_id=..&upload_part_id=..``), then ``complete``s it,
or ``abort``s it after a failure. Each part is written as lance fragments that no
version references, and recorded (:mod:`lancedb_ray.storage.uploads`) on the
table's storage, so it survives a replica's death. ``complete`` commits every
part in one lance commit that carries the upload id in its transaction
properties: a retried ``complete`` (the client retries it with the same upload
id after a lost answer) finds the upload's record, or that commit, and answers
its version again. A claim makes ``complete`` and ``abort`` of one upload
exclusive across replicas. The agent expires what is left behind.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import lance
import pyarrow as pa
from lance.dataset import LanceDataset
from lance.fragment import FragmentMetadata

from lancedb_ray.errors import Gone, InvalidInput, Unavailable
from lancedb_ray.service import writes
from lancedb_ray.service.tables import TableService
from lancedb_ray.storage.connections import Connections
from lancedb_ray.storage.lance_errors import lance_errors
from lancedb_ray.storage.uploads import (
    ABORTED,
    COMMIT_TIMEOUT,
    COMMITTED,
    METRICS,
    STALE_CLAIM_SECONDS,
    UPLOAD_ID,
    Part,
    TableUploads,
    Upload,
    check_id,
    committed_version,
)
from lancedb_ray.types import TableRef

_LOG = logging.getLogger(__name__)


class UploadService:
    def __init__(self, connections: Connections, tables: TableService, ttl_seconds: float,
                 idempotency_window: int) -> None:
        self._connections = connections
        self._tables = tables
        self._ttl = ttl_seconds
        self._window = idempotency_window

    # Storage faults anywhere below (records, claims, lance) answer as any write's do (503).

    def create(self, ref: TableRef) -> dict[str, Any]:
        self._tables.before_write(ref)
        with lance_errors(f"upload to '{ref.qualified_name}'", ref.database):
            uploads, _ = self._open(ref)
            upload = uploads.create(self._ttl)
        METRICS.inc("uploads_total", outcome="created")
        return {"upload_id": upload.upload_id}

    def put_part(self, ref: TableRef, upload_id: str, part_id: str | None, data: pa.Table,
                 overwrite: bool) -> dict[str, Any]:
        """Stage one part; a part sent again under the same part id replaces the earlier one."""
        part_id = check_id("upload_part_id", part_id)
        self._tables.before_write(ref)  # staged data a rename would leave behind: refused (503)
        with lance_errors(f"upload to '{ref.qualified_name}'", ref.database):
            uploads, dataset = self._open(ref)
            upload = self._upload(uploads, upload_id, ref)
            if upload.state != "open" or uploads.claimed(upload_id):
                raise InvalidInput(f"upload '{upload_id}' is {_state(upload)}: it takes no more parts")
            fragments, schema = writes.stage(dataset, data, overwrite, self._options(ref))
            uploads.put_part(upload_id, Part(
                part_id, overwrite, data.num_rows, schema.serialize().to_pybytes().hex(),
                [fragment.to_json() for fragment in fragments]))
        return {}

    def complete(self, ref: TableRef, upload_id: str) -> dict[str, Any]:
        """Commit every part in one version, once: a retry answers the same version."""
        with lance_errors(f"completing upload '{upload_id}' to '{ref.qualified_name}'", ref.database):
            version, committed_here = self._complete(ref, upload_id)
        METRICS.inc("uploads_total", outcome="completed" if committed_here else "replayed")
        return {"version": version}

    def abort(self, ref: TableRef, upload_id: str) -> dict[str, Any]:
        """Delete the staged parts; aborting an aborted upload again is a no-op."""
        with lance_errors(f"aborting upload '{upload_id}' to '{ref.qualified_name}'", ref.database):
            if self._abort(ref, upload_id):
                METRICS.inc("uploads_total", outcome="aborted")
        return {}

    # -- helpers ---------------------------------------------------------------------------

    def _complete(self, ref: TableRef, upload_id: str) -> tuple[int, bool]:
        """The upload's version, and whether this request committed it."""
        uploads, dataset = self._open(ref, fresh=True)
        upload = uploads.get(check_id("upload_id", upload_id))
        if upload is None:  # its record expired: a late retry still finds its commit
            version = committed_version(dataset, upload_id, dataset.version - self._window)
            if version is None:
                raise Gone(_unknown(upload_id, ref))
            return version, False
        if upload.state == COMMITTED:
            return upload.version, False
        claim = uploads.claim(upload_id, dataset.version, STALE_CLAIM_SECONDS)
        if claim is None:
            raise Unavailable(f"upload '{upload_id}' is being completed or aborted by another request")
        upload = self._upload(uploads, upload_id, ref)  # as it is now that no one else may change it
        if upload.state == COMMITTED:
            return upload.version, False
        if upload.state == ABORTED:
            uploads.release(upload_id)
            raise Gone(f"upload '{upload_id}' was aborted: start a new one")
        version = committed_version(dataset, upload_id, claim.since)  # by a request that died
        rows, operation, committed_here = 0, "insert", version is None
        if version is None:
            try:
                self._tables.before_write(ref)  # 503 while a rename moves the table
                fragments, schema, rows = self._staged(dataset, uploads, upload_id)
            except BaseException:
                uploads.release(upload_id)
                raise
            operation = "insert" if schema is None else "overwrite"
            properties = {UPLOAD_ID: upload_id, "num_inserted_rows": str(rows)}
            committed = None
            try:
                committed = writes.commit_staged(dataset, fragments, schema, properties,
                                                 self._options(ref), COMMIT_TIMEOUT)
                version = committed.version
            except BaseException:
                version = self._survived(ref, uploads, upload_id, claim.since)
                if version is None:
                    raise
            self._tables.after_write(ref, version, committed)  # kept by a concurrent rename?
        self._committed(uploads, upload, version)
        self._tables.notify(ref, version, operation, upload_id, rows)
        return version, committed_here

    def _abort(self, ref: TableRef, upload_id: str) -> bool:
        """Whether this request aborted it (False: it was already)."""
        uploads, dataset = self._open(ref, fresh=True)
        upload = self._upload(uploads, upload_id, ref)
        if upload.state == ABORTED:
            return False
        if upload.state == COMMITTED:
            raise InvalidInput(_completed(upload))
        claim = uploads.claim(upload_id, dataset.version, STALE_CLAIM_SECONDS)
        if claim is None:
            raise Unavailable(f"upload '{upload_id}' is being completed or aborted by another request")
        upload = self._upload(uploads, upload_id, ref)
        if upload.state == ABORTED:  # by the request that held the claim before
            uploads.release(upload_id)
            return False
        version = upload.version if upload.state == COMMITTED else committed_version(
            dataset, upload_id, claim.since)
        if version is not None:
            self._committed(uploads, upload, version)
            raise InvalidInput(_completed(upload))
        upload.state = ABORTED
        uploads.put(upload)  # first: no complete may commit what is being deleted
        uploads.discard_parts(upload_id)
        uploads.release(upload_id)
        return True

    @staticmethod
    def _staged(dataset: LanceDataset, uploads: TableUploads, upload_id: str
                ) -> tuple[list[FragmentMetadata], pa.Schema | None, int]:
        """The parts' fragments, the schema to replace the table with (None: append), and rows."""
        parts = uploads.parts(upload_id)
        overwrite = {part.overwrite for part in parts}
        if len(overwrite) > 1:
            raise InvalidInput(f"upload '{upload_id}' mixes parts that append and parts that overwrite")
        schemas = {part.schema for part in parts}
        if len(schemas) > 1:
            raise InvalidInput(f"the parts of upload '{upload_id}' have different schemas")
        schema = pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(schemas.pop()))) if schemas else None
        if overwrite != {True} and schema is not None and not schema.equals(dataset.schema):
            raise InvalidInput(
                f"the table's schema changed since the parts of upload '{upload_id}' were sent: "
                "send them again in a new upload")
        fragments = [FragmentMetadata.from_json(json.dumps(fragment))
                     for part in parts for fragment in part.fragments]
        return fragments, schema if overwrite == {True} else None, sum(part.rows for part in parts)

    def _survived(self, ref: TableRef, uploads: TableUploads, upload_id: str, since: int) -> int | None:
        """After a commit raised: its version if it landed all the same, else None with the claim
        released. Where that cannot be told (storage down), the claim stays: the request that
        takes it over once it is stale looks again."""
        try:
            _, dataset = self._open(ref, fresh=True)
            version = committed_version(dataset, upload_id, since)
        except Exception:  # noqa: BLE001 - the commit's own error is the one to answer
            _LOG.warning("cannot tell whether upload %s committed; its claim stays", upload_id,
                         exc_info=True)
            return None
        if version is None:
            uploads.release(upload_id)
        return version

    @staticmethod
    def _committed(uploads: TableUploads, upload: Upload, version: int) -> None:
        """Record the commit; never raises (the commit is durable and found without it)."""
        try:
            upload.state, upload.version = COMMITTED, version
            uploads.put(upload)
        except Exception:  # noqa: BLE001 - after a commit nothing may fail the request
            _LOG.exception("recording the commit of upload %s (version %d)", upload.upload_id, version)

    def _open(self, ref: TableRef, fresh: bool = False) -> tuple[TableUploads, LanceDataset]:
        """The table's uploads and its dataset (``fresh``: read from storage, never a handle that
        may lag another replica's commit: complete and abort look for the upload's commit)."""
        table = self._connections.table(ref)  # 404 when the table is missing
        location = self._connections.location(ref.database)
        dataset = (lance.dataset(table.uri, storage_options=location.storage_options or None)
                   if fresh else table.to_lance())
        return TableUploads(location, table.uri), dataset

    def _options(self, ref: TableRef) -> dict[str, str]:
        return self._connections.location(ref.database).storage_options

    @staticmethod
    def _upload(uploads: TableUploads, upload_id: str, ref: TableRef) -> Upload:
        upload = uploads.get(check_id("upload_id", upload_id))
        if upload is None:
            raise Gone(_unknown(upload_id, ref))
        return upload


def _state(upload: Upload) -> str:
    return "being completed" if upload.state == "open" else upload.state


def _completed(upload: Upload) -> str:
    return f"upload '{upload.upload_id}' was completed (version {upload.version}): it cannot be aborted"


def _unknown(upload_id: str, ref: TableRef) -> str:
    return (f"no upload '{upload_id}' on table '{ref.qualified_name}': it was never created, "
            "or it expired")
