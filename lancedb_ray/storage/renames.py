"""Renaming a table safely while writers keep writing, on storage with or without a directory rename.

A local directory moves atomically (``os.rename``); Azure has no rename, so the
table is copied and the source deleted. Either way a writer that opened the
table before the move could commit into a table that is being moved: its
commit would be lost (Azure: copied too late; local: committed into a
re-created, half-empty directory) after the client heard success. So a rename
is a small protocol around a marker, ``<database>/_renames/<source>.json``:

1. the marker is created exclusively (``copying``): writes to the source are
   refused from now on (503, the client retries; once the rename is done it
   hears 404 "table not found", as a statement that waited for a rename does
   in SQL databases);
2. the source's latest version is left to settle (writes that passed the check
   just before the marker finish);
3. the table is moved: on Azure every object is copied, data before manifests,
   again until source and copy have the same latest version;
4. the marker records the copied version (``deleting``), the source is deleted,
   the marker says ``done``. It stays until a table is created under the old
   name (or for ``keep_done_s``): writes to the old name are 404s meanwhile,
   and a late writer's debris there is removed.

A writer checks the marker again after its commit: a rename that began after
the first check copied the source up to some version; unless the copy's
version of that number holds exactly the state this commit made (a commit
landing after the source's manifests were deleted reuses a number), the
write was not kept, and the writer answers an error instead of success. So
an acknowledged write is always in the renamed table.

A crash leaves the marker behind. ``recover`` (run by the next write, the next
rename of the table, and the agent's sweep once the marker is stale) either
finishes the rename (the copy was verified, or the local move happened) or
undoes it (deletes the partial copy): one readable table either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import lance
from lance.dataset import LanceDataset

from lancedb_ray.durable_files import write_atomically
from lancedb_ray.errors import InvalidInput, NotFound, Unavailable
from lancedb_ray.storage.catalog import DatabaseLocation

_LOG = logging.getLogger(__name__)

MARKERS = "_renames"
COPYING, DELETING, DONE = "copying", "deleting", "done"
# Objects lance never rewrites in place: a second copy pass skips them when the sizes match.
_IMMUTABLE = ("data/", "_indices/", "_transactions/", "_deletions/")
_MISSING = re.compile(r"not found|does not exist|no such file", re.I)


@dataclass(frozen=True)
class Marker:
    rename_id: str
    source: str
    target: str
    phase: str
    updated: float  # time.time() of the last write: a marker not updated for long is abandoned
    version: int | None = None  # the source's latest version, copied and verified (deleting, done)

    @property
    def active(self) -> bool:
        return self.phase != DONE


@dataclass(frozen=True)
class Timing:
    settle_s: float = 0.5  # the source's version must stay unchanged this long before the move
    wait_s: float = 30.0  # the most a rename waits to settle, or a writer for a rename's outcome
    stale_s: float = 300.0  # an active marker not updated for this long belongs to a crashed rename
    keep_done_s: float = 600.0  # how long a finished rename's marker answers the writers' check


class Markers:
    """The rename markers of one database, on its own storage (exclusive create where it matters)."""

    def __init__(self, location: DatabaseLocation) -> None:
        self._location = location
        self._fs = location.filesystem()

    def path(self, source: str) -> str:
        return self._location.fs_path(MARKERS, f"{source}.json")

    def read(self, source: str) -> Marker | None:
        try:
            return Marker(**json.loads(self._fs.cat_file(self.path(source))))
        except FileNotFoundError:
            return None

    def create(self, marker: Marker) -> bool:
        """Write ``marker`` unless one exists (If-None-Match on Azure, O_EXCL locally)."""
        data = json.dumps(asdict(marker)).encode()
        path = self.path(marker.source)
        try:
            if self._location.is_azure:
                self._fs.pipe_file(path, data, overwrite=False)
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "xb") as file:
                    file.write(data)
                    os.fsync(file.fileno())
        except FileExistsError:
            return False
        return True

    def write(self, marker: Marker) -> Marker:
        """Replace the marker whole (a blob put; locally a file renamed over it)."""
        marker = replace(marker, updated=time.time())
        data = json.dumps(asdict(marker)).encode()
        if self._location.is_azure:
            self._fs.pipe_file(self.path(marker.source), data)
        else:
            write_atomically(Path(self.path(marker.source)), [data])
        return marker

    def delete(self, source: str) -> None:
        try:
            self._fs.rm_file(self.path(source))
        except FileNotFoundError:
            pass

    def all(self) -> list[Marker]:
        self._fs.invalidate_cache()
        try:
            names = self._fs.ls(self._location.fs_path(MARKERS), detail=False)
        except FileNotFoundError:
            return []
        found = (self.read(name.rsplit("/", 1)[-1].removesuffix(".json")) for name in names)
        return [m for m in found if m is not None]


def latest_version(location: DatabaseLocation, table: str) -> int | None:
    """The table's latest version on storage, or None when it has none (missing, or deleted);
    any other failure (storage unreachable) raises: recovery must not take it for "missing"."""
    try:
        options = location.storage_options or None
        return lance.dataset(location.table_uri(table), storage_options=options).version
    except (FileNotFoundError, ValueError, OSError) as exc:
        if _MISSING.search(str(exc)):
            return None
        raise


def state_at(location: DatabaseLocation, table: str, version: int) -> str | None:
    """A digest of the table's state at ``version`` (fragments and schema), or None if unreadable."""
    try:
        options = location.storage_options or None
        dataset = lance.dataset(location.table_uri(table), version=version, storage_options=options)
    except (FileNotFoundError, ValueError, OSError):
        return None
    return state_of(dataset)


def state_of(dataset: LanceDataset) -> str:
    """A digest of a dataset's fragments and schema, from its manifest in memory."""
    fragments = json.dumps([f.metadata.to_json() for f in dataset.get_fragments()], sort_keys=True)
    schema = dataset.schema.to_string(show_schema_metadata=True)
    return hashlib.sha256(f"{fragments}\n{schema}".encode()).hexdigest()


class Renamer:
    """Runs renames and their recovery for the query node; ``on_step`` names each step done
    (``marked``, ``settled``, ``copied``, ``verified``, ``deleted``), so a test can crash there."""

    def __init__(self, timing: Timing | None = None) -> None:
        self.timing = timing or Timing()
        self.on_step: Callable[[str], None] = lambda step: None

    # -- the write path --------------------------------------------------------------------

    def before_write(self, location: DatabaseLocation, table: str) -> None:
        """Refuse a write to a table being renamed (503), or renamed away (404: what is left at
        the name is a late writer's debris until a new table is created there)."""
        markers = Markers(location)
        marker = markers.read(table)
        if marker is not None and marker.active and self._stale(marker):
            self.recover(location, marker)
            marker = markers.read(table)
        if marker is None:
            return
        if marker.active:
            raise Unavailable(f"table '{table}' is being renamed to '{marker.target}'; retry later")
        raise NotFound(f"Table '{table}' was not found (it was renamed to '{marker.target}')")

    def after_write(
        self, location: DatabaseLocation, table: str, version: int | None,
        committed: LanceDataset | None = None,
    ) -> None:
        """Raise unless the commit of ``version`` survives any rename that began during the write
        (``version`` None, a tag: unless no rename began or it was undone).

        Kept means: the renamed table's version ``version`` holds the state this commit made.
        A version number alone is not enough: a commit landing after the source's manifests
        were deleted reuses a number the copy already has (with other contents). The state is
        read from ``committed`` (the commit's dataset, in memory) or else from the source, which
        the rename may have moved meanwhile: then the write is answered as not kept although it
        may be (an error, never a lost acknowledged write)."""
        markers = Markers(location)
        deadline = time.monotonic() + self.timing.wait_s
        ours: str | None = None
        looked = False
        while True:
            try:
                marker = markers.read(table)
            except Exception:  # the write committed: a storage hiccup must not turn it into a 503
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            if marker is None:
                return  # no rename began, or one began and was undone: the source is intact
            if not looked and version is not None:
                looked = True
                ours = state_of(committed) if committed is not None else state_at(location, table, version)
            if marker.phase in (DELETING, DONE):
                if (ours is not None and marker.version is not None and version is not None
                        and version <= marker.version
                        and state_at(location, marker.target, version) == ours):
                    return  # copied: the write is in the renamed table
                raise Unavailable(
                    f"table '{table}' was renamed to '{marker.target}' while this write committed; "
                    "the write was not kept"
                )
            if self._stale(marker):
                self.recover(location, marker)
            elif time.monotonic() > deadline:
                raise Unavailable(f"table '{table}' is being renamed; the write's outcome is unknown")
            time.sleep(0.05)

    def reuse_name(self, location: DatabaseLocation, table: str) -> None:
        """Before a table is created at ``table``: forget a finished rename away from the name
        (and a late writer's debris there); 503 while a rename of it runs."""
        marker = Markers(location).read(table)
        if marker is not None and marker.active and self._stale(marker):
            self.recover(location, marker)
            marker = Markers(location).read(table)
        if marker is None:
            return
        if marker.active:
            raise Unavailable(f"table '{table}' is being renamed to '{marker.target}'; retry later")
        _delete_table_files(location, table)
        Markers(location).delete(table)

    # -- the rename ------------------------------------------------------------------------

    def rename(self, location: DatabaseLocation, source: str, target: str) -> int | None:
        """Move ``source`` to ``target``; the moved table's latest version."""
        markers = Markers(location)
        self.reuse_name(location, target)
        earlier = markers.read(source)
        if earlier is not None and earlier.active and self._stale(earlier):
            self.recover(location, earlier)
        marker = Marker(uuid.uuid4().hex, source, target, COPYING, time.time())
        if not markers.create(marker):
            raise Unavailable(f"table '{source}' is already being renamed; retry later")
        self.on_step("marked")
        try:
            self._settle(location, source)
            self.on_step("settled")
            if location.is_azure:
                version = self._copy_until_equal(location, markers, marker)
                self._require_ours(markers, marker)
                marker = markers.write(replace(marker, phase=DELETING, version=version))
            else:
                version = latest_version(location, source)
                self._require_ours(markers, marker)
                os.rename(location.table_uri(source), location.table_uri(target))  # atomic on one fs
                marker = markers.write(replace(marker, phase=DELETING, version=version))
                self.on_step("moved")
        except Exception:
            # Not a crash: undo now rather than keep the table unwritable until the marker is stale.
            current = markers.read(source)
            if current is not None and current.rename_id == marker.rename_id:
                self.recover(location, current)
            raise
        if location.is_azure:
            self.on_step("verified")
            _delete_table_files(location, source)
            self.on_step("deleted")
        markers.write(replace(marker, phase=DONE))
        _delete_table_files(location, source)  # what a late commit re-created there
        return version

    def recover(self, location: DatabaseLocation, marker: Marker) -> None:
        """Finish or undo the rename ``marker`` describes; forget a finished one kept long enough."""
        markers = Markers(location)
        if marker.phase == DONE:
            if time.time() - marker.updated > self.timing.keep_done_s:
                _delete_table_files(location, marker.source)  # a late writer's debris, if any
                markers.delete(marker.source)
            return
        if marker.phase == DELETING:  # the copy was verified: finish
            _LOG.warning("finishing the rename of '%s' to '%s' left by a crash", marker.source, marker.target)
            _delete_table_files(location, marker.source)
            markers.write(replace(marker, phase=DONE))
            return
        moved = not location.is_azure and latest_version(location, marker.source) is None
        if moved and latest_version(location, marker.target) is not None:
            # A local move that happened before the crash (a local source is never half there).
            markers.write(replace(marker, phase=DONE, version=latest_version(location, marker.target)))
            return
        _LOG.warning("undoing the abandoned rename of '%s' to '%s'", marker.source, marker.target)
        if location.is_azure:
            _delete_table_files(location, marker.target)
        markers.delete(marker.source)

    def sweep(self, location: DatabaseLocation) -> None:
        """Recover every abandoned rename of the database; forget old finished ones (the agent)."""
        for marker in Markers(location).all():
            if not marker.active or self._stale(marker):
                self.recover(location, marker)

    # -- steps -----------------------------------------------------------------------------

    def _stale(self, marker: Marker) -> bool:
        return time.time() - marker.updated > self.timing.stale_s

    def _settle(self, location: DatabaseLocation, table: str) -> None:
        """Wait until the latest version stops moving (commits that passed the check finish)."""
        deadline = time.monotonic() + self.timing.wait_s
        version, since = latest_version(location, table), time.monotonic()
        while time.monotonic() - since < self.timing.settle_s and time.monotonic() < deadline:
            time.sleep(min(0.1, self.timing.settle_s))
            now = latest_version(location, table)
            if now != version:
                version, since = now, time.monotonic()

    def _copy_until_equal(self, location: DatabaseLocation, markers: Markers, marker: Marker) -> int:
        """Copy the source until the copy's latest version is the source's (a late commit is copied
        too); the marker is touched on every pass so that no one takes the rename for crashed."""
        deadline = time.monotonic() + self.timing.wait_s
        beat = [time.monotonic()]

        def alive() -> None:  # a long copy keeps its marker fresh, so that no one undoes it
            if time.monotonic() - beat[0] > self.timing.stale_s / 10:
                self._require_ours(markers, marker)
                markers.write(marker)
                beat[0] = time.monotonic()

        while True:
            _copy_table_files(location, marker.source, marker.target, alive)
            self.on_step("copied")
            source, copy = latest_version(location, marker.source), latest_version(location, marker.target)
            if source is None:
                raise InvalidInput(f"table '{marker.source}' has no version to rename")
            if source == copy:
                return source
            if time.monotonic() > deadline:
                raise Unavailable(f"table '{marker.source}' kept changing while it was renamed; retry")
            self._require_ours(markers, marker)
            markers.write(marker)

    def _require_ours(self, markers: Markers, marker: Marker) -> None:
        """Stop when someone took this rename for crashed and undid it meanwhile."""
        current = markers.read(marker.source)
        if current is None or current.rename_id != marker.rename_id:
            raise Unavailable(f"the rename of '{marker.source}' was abandoned; retry")


def _table_dir(location: DatabaseLocation, table: str) -> str:
    return location.fs_path(f"{table}.lance")


def _copy_table_files(
    location: DatabaseLocation, source: str, target: str, alive: Callable[[], None]
) -> None:
    """Copy every object of ``source`` to ``target``: manifests last, so that a reader of the target
    never meets a version whose files are not there yet. ``alive`` is called between objects."""
    fs = location.filesystem()
    fs.invalidate_cache()
    src, dst = _table_dir(location, source), _table_dir(location, target)
    files: dict[str, Any] = fs.find(src, detail=True)
    copied: dict[str, Any] = fs.find(dst, detail=True)
    manifests = [p for p in files if "/_versions/" in p or p.endswith(".manifest")]
    for path in [p for p in files if p not in manifests] + manifests:
        relative = path[len(src) + 1:]
        existing = copied.get(f"{dst}/{relative}")
        if (existing and relative.startswith(_IMMUTABLE)
                and existing.get("size") == files[path].get("size")):
            continue
        fs.cp_file(path, f"{dst}/{relative}")
        alive()


def _delete_table_files(location: DatabaseLocation, table: str) -> None:
    """Manifests first: a reader of a half-deleted table finds no table rather than missing files."""
    if not location.is_azure:
        shutil.rmtree(_table_dir(location, table), ignore_errors=True)  # only debris, locally
        return
    fs = location.filesystem()
    fs.invalidate_cache()
    files = fs.find(_table_dir(location, table))
    manifests = [p for p in files if "/_versions/" in p or p.endswith(".manifest")]
    for batch in (manifests, [p for p in files if p not in manifests]):
        if batch:
            fs.rm(batch)
