"""The latest committed version of each table, known without asking storage.

Every query node replica and every writer shares one ``VersionRegistry`` (a
named Ray actor in the service; a plain object in tests). A writer publishes
the version it committed before it acknowledges the write, so the next query
on any replica reads at least that version: read-your-writes across replicas
without listing storage per query. Writes made outside the service (embedded
lancedb on the same storage) are found by re-reading storage once the entry is
older than ``read_consistency_seconds``; that read is shared by every replica.

If the actor restarts, it starts empty: every table is then re-read from
storage once, so nothing stale is ever served from a lost registry.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

REGISTRY_NAME = "version-registry"
HEAD_RESOURCE = "node:__internal_head__"  # the resource Ray gives the head node alone
_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableVersion:
    version: int  # 0: the table was dropped (or renamed away) through the service
    # Bumps whenever version numbers may restart (create, overwrite-create, drop, rename):
    # (generation, version) names one state of the table's data, version alone may not.
    generation: int
    checked_at: float  # time.time() when storage or a writer last confirmed it


class VersionRegistry:
    """Table key -> latest known version; plain methods, run as a Ray actor or in-process."""

    def __init__(self) -> None:
        self._tables: dict[str, TableVersion] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> TableVersion | None:
        with self._lock:
            return self._tables.get(key)

    def publish(self, key: str, version: int, recreated: bool = False,
                seen: TableVersion | None = None) -> TableVersion:
        """Record a committed (or, with ``seen``, an observed) version.

        Versions only move forward within a generation, so a replica that read storage just
        before a commit cannot move the table back. An observer passes ``seen``, the entry it
        read before reading storage: if nothing was published since and storage shows a lower
        version, the table was re-created outside the service and a new generation starts.
        """
        now = time.time()
        with self._lock:
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
            self._tables[key] = entry
            return entry


class Registry(Protocol):
    def get(self, key: str) -> TableVersion | None: ...

    def publish(self, key: str, version: int, recreated: bool = False,
                seen: TableVersion | None = None) -> TableVersion: ...


class RemoteRegistry:
    """A ``VersionRegistry`` actor behind the same two methods."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def get(self, key: str) -> TableVersion | None:
        import ray

        return ray.get(self._handle.get.remote(key))

    def publish(self, key: str, version: int, recreated: bool = False,
                seen: TableVersion | None = None) -> TableVersion:
        import ray

        return ray.get(self._handle.publish.remote(key, version, recreated, seen))


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
