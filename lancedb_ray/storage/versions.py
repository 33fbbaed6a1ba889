"""The latest committed version of each table, known without asking storage.

Every query node replica and every writer shares one ``VersionRegistry`` (a
named Ray actor in the service; a plain object in tests). A writer publishes
the version it committed before it acknowledges the write, so the next query
on any replica reads at least that version: read-your-writes across replicas
without listing storage per query. Writes made outside the service (embedded
lancedb on the same storage) are found by re-reading storage once the entry is
older than ``read_consistency_seconds``; that read is shared by every replica.

Each query node replica keeps a copy of the registry (``RegistryView``) that a
background thread keeps current by long-polling, so a warm query asks neither
storage nor the registry. A commit that moves a table waits until every
following replica has either applied it or stopped trusting its copy: a copy is
trusted for ``LEASE_S`` after the follower sent the request that brought it, so
the registry waits at most ``LEASE_S`` past its last answer to a replica that
stopped following (frozen, partitioned or gone), which then asks the registry
itself until it follows again. Either way no replica reads behind a write that
was acknowledged.

If the actor restarts, it starts empty: every table is then re-read from
storage once, so nothing stale is ever served from a lost registry.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

REGISTRY_NAME = "version-registry"
HEAD_RESOURCE = "node:__internal_head__"  # the resource Ray gives the head node alone
_LOG = logging.getLogger(__name__)
# A replica's copy is trusted for LEASE_S after it sent the request that brought its last answer,
# so LEASE_S after the registry's last answer to it no copy of it is trusted any more. A follower's
# request waits POLL_S for news.
LEASE_S = 1.0
POLL_S = 0.4
STUCK_S = 10.0  # a commit whose wait outlasts this logs an error and goes on: a bug, not a state


@dataclass(frozen=True)
class TableVersion:
    version: int  # 0: the table was dropped (or renamed away) through the service
    # Bumps whenever version numbers may restart (create, overwrite-create, drop, rename):
    # (generation, version) names one state of the table's data, version alone may not.
    generation: int
    checked_at: float  # time.time() when storage or a writer last confirmed it


@dataclass
class _Follower:
    applied: int  # the last publish it has applied
    answered_at: float | None = None  # monotonic time of the registry's last answer to it


@dataclass(frozen=True)
class Changes:
    """What a follower has not applied yet: entries published after ``applied``."""

    incarnation: str  # the registry's: a new one (restart) means "forget your copy"
    seq: int  # apply these, then ask again with this as ``applied``
    entries: dict[str, TableVersion]


class VersionRegistry:
    """Table key -> latest known version; plain methods, run as a Ray actor or in-process."""

    def __init__(self) -> None:
        self._tables: dict[str, TableVersion] = {}
        self._seqs: dict[str, int] = {}  # the publish that last changed each entry
        self._seq = 0
        self._incarnation = uuid.uuid4().hex
        self._followers: dict[str, _Follower] = {}
        self._changed = threading.Condition()

    def get(self, key: str) -> TableVersion | None:
        with self._changed:
            return self._tables.get(key)

    def changes(self, follower: str, incarnation: str | None, applied: int, wait_s: float) -> Changes:
        """The entries ``follower`` lacks, once there are any (or after ``wait_s``).

        Asking with ``applied`` acknowledges every publish up to it: commits waiting for this
        follower go on.
        """
        with self._changed:
            if incarnation != self._incarnation:
                applied = 0  # a new follower, or one that followed the registry's last life
            known = self._followers.setdefault(follower, _Follower(applied))
            known.applied = applied
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._seq > applied, timeout=wait_s)
            entries = {key: self._tables[key] for key, seq in self._seqs.items() if seq > applied}
            # Re-fetched: a commit may have forgotten it meanwhile (its lease had run out).
            self._followers.setdefault(follower, _Follower(applied)).answered_at = time.monotonic()
            return Changes(self._incarnation, self._seq, entries)

    def publish(self, key: str, version: int, recreated: bool = False,
                seen: TableVersion | None = None) -> TableVersion:
        """Record a committed (or, with ``seen``, an observed) version.

        Versions only move forward within a generation, so a replica that read storage just
        before a commit cannot move the table back. An observer passes ``seen``, the entry it
        read before reading storage: if nothing was published since and storage shows a lower
        version, the table was re-created outside the service and a new generation starts.
        """
        now = time.time()
        with self._changed:
            known = self._tables.get(key)
            generation = known.generation if known else 0
            if recreated:
                entry = TableVersion(version, generation + 1, now)
            elif known is None or version >= known.version:
                entry = TableVersion(version, generation, now)
            elif seen is not None and seen == known:
                entry = TableVersion(version, generation + 1, now)
            else:
                return known  # a read that raced a newer commit: keep the newer version
            self._seq += 1
            self._tables[key] = entry
            self._seqs[key] = self._seq
            self._changed.notify_all()
            moved = known is None or (known.version, known.generation) != (entry.version,
                                                                             entry.generation)
            if moved:  # a mere re-confirmation needs no one to wait for it
                self._await_followers(self._seq)
            return entry

    def _await_followers(self, seq: int) -> None:
        """Until every follower has applied publish ``seq`` or trusts no copy of its own any more.

        A follower whose lease has run out is forgotten: it asks the registry itself (``get``)
        until its next request makes it a follower again.
        """
        deadline = time.monotonic() + STUCK_S
        while True:
            now = time.monotonic()
            for name, follower in list(self._followers.items()):
                if (follower.applied < seq and follower.answered_at is not None
                        and now >= follower.answered_at + LEASE_S):
                    del self._followers[name]
            leases = [follower.answered_at + LEASE_S for follower in self._followers.values()
                      if follower.applied < seq and follower.answered_at is not None]
            if not leases:
                return
            if now >= deadline:
                _LOG.error("version registry: %d replicas neither applied a commit nor let their "
                           "leases run out in %.0fs", len(leases), STUCK_S)
                return
            self._changed.wait(min(min(leases), deadline) - now)


class Registry(Protocol):
    def get(self, key: str) -> TableVersion | None: ...

    def publish(self, key: str, version: int, recreated: bool = False,
                seen: TableVersion | None = None) -> TableVersion: ...


class FollowableRegistry(Registry, Protocol):
    """A registry whose changes a ``RegistryView`` can follow."""

    def changes(self, follower: str, incarnation: str | None, applied: int, wait_s: float
                ) -> Changes: ...


class RemoteRegistry:
    """A ``VersionRegistry`` actor behind the same methods."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def get(self, key: str) -> TableVersion | None:
        import ray

        return ray.get(self._handle.get.remote(key))

    def changes(self, follower: str, incarnation: str | None, applied: int, wait_s: float
                ) -> Changes:
        import ray

        call = self._handle.changes.remote(follower, incarnation, applied, wait_s)
        return ray.get(call, timeout=wait_s + 2 * LEASE_S)

    def publish(self, key: str, version: int, recreated: bool = False,
                seen: TableVersion | None = None) -> TableVersion:
        import ray

        return ray.get(self._handle.publish.remote(key, version, recreated, seen))


class RegistryView:
    """This process's copy of a registry, kept current by a follower thread (long-polling).

    ``get`` answers from the copy while its lease holds (no round trip), else from the
    registry itself. ``publish`` goes to the registry, which answers once every follower,
    this one included, has applied it.
    """

    def __init__(self, registry: FollowableRegistry) -> None:
        self._registry = registry
        self._name = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._entries: dict[str, TableVersion] = {}
        self._incarnation: str | None = None
        self._applied = 0
        self._valid_until = 0.0  # monotonic
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._follower = threading.Thread(target=self._follow, name="version-registry-follower",
                                          daemon=True)
        self._follower.start()

    def get(self, key: str) -> TableVersion | None:
        with self._lock:
            if time.monotonic() < self._valid_until:
                return self._entries.get(key)
        return self._registry.get(key)

    def publish(self, key: str, version: int, recreated: bool = False,
                seen: TableVersion | None = None) -> TableVersion:
        return self._registry.publish(key, version, recreated, seen)

    def close(self) -> None:
        self._stopped.set()

    def _follow(self) -> None:
        while not self._stopped.is_set():
            sent = time.monotonic()
            try:
                news = self._registry.changes(self._name, self._incarnation, self._applied, POLL_S)
            except Exception:  # noqa: BLE001 - the registry restarts or moves: its lease runs out
                _LOG.debug("version registry: follower request failed", exc_info=True)
                self._stopped.wait(POLL_S)  # not a busy loop while the registry is away
                continue
            with self._lock:
                if news.incarnation != self._incarnation:
                    self._entries = {}
                    self._incarnation = news.incarnation
                self._entries.update(news.entries)
                self._applied = news.seq
                self._valid_until = sent + LEASE_S


def start_registry(namespace: str) -> RemoteRegistry:
    """The deployment's registry actor, created by the first replica that asks.

    It sits on the head node, beside the Serve controller: every query asks it, so
    it must not go down with a worker node (each query would then wait until Ray
    noticed the node's loss and restarted it elsewhere).
    """
    import ray

    handle = (
        ray.remote(VersionRegistry)
        .options(name=REGISTRY_NAME, namespace=namespace, lifetime="detached", get_if_exists=True,
                 max_restarts=-1, max_concurrency=64, num_cpus=0,
                 # A resource only the head node has (a soft node affinity is ignored with get_if_exists).
                 resources={HEAD_RESOURCE: 0.001})
        .remote()
    )
    return RemoteRegistry(handle)


def existing_registry(namespace: str) -> RemoteRegistry | None:
    """The registry if the service runs in this Ray cluster (bulk jobs, the agent), else None."""
    import ray

    try:
        return RemoteRegistry(ray.get_actor(REGISTRY_NAME, namespace=namespace))
    except ValueError:
        return None


def announce(namespace: str, key: str, version: int) -> None:
    """From the agent or a bulk job: publish a commit to the service's registry, if one runs.

    Best effort: without it the query nodes still find the version within
    ``read_consistency_seconds``. Never raises.
    """
    import ray

    if not ray.is_initialized():
        return
    try:
        registry = existing_registry(namespace)
        if registry is not None:
            registry.publish(key, version)
    except Exception:  # noqa: BLE001 - the commit stands; the registry learns it on its next read
        _LOG.warning("could not publish version %d of %s to the version registry", version, key,
                     exc_info=True)


class LatestVersions:
    """One process's view of the registry, with the staleness bound for outside writers.

    Keys name a table by its database's storage location and its qualified name, so two
    deployments in one Ray namespace never share an entry unless they share the table.
    """

    def __init__(self, registry: Registry, read_consistency_seconds: float) -> None:
        self._registry = registry
        self._interval = read_consistency_seconds

    def trusted(self, key: str) -> tuple[TableVersion | None, TableVersion | None]:
        """(the entry if fresh enough to skip storage, else None; the entry as read)."""
        entry = self._registry.get(key)
        if entry is None or entry.version == 0:
            return None, entry
        if time.time() - entry.checked_at > self._interval:
            return None, entry  # an outside writer may have committed since: read storage
        return entry, entry

    def observed(self, key: str, version: int, seen: TableVersion | None) -> TableVersion:
        """What storage showed after ``seen`` was read: shared with every replica, so the next
        re-read is one interval away."""
        return self._registry.publish(key, version, seen=seen)

    def committed(self, key: str, version: int, recreated: bool = False) -> TableVersion:
        """A write through the service committed ``version``: publish before acknowledging."""
        return self._registry.publish(key, version, recreated)
