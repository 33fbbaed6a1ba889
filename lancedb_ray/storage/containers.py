"""Create a database's container on first use, where the credential allows it.

Lance does not create Azure containers, and a missing one makes every write
fail; creating it up front (Azurite, or an identity with Contributor rights)
turns a new database into a working one, and otherwise yields a clear error.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from lancedb_ray.errors import NotFound
from lancedb_ray.storage import clients
from lancedb_ray.storage import credentials as opt
from lancedb_ray.storage.faults import storage_error


class ContainerGuard:
    """Remembers which containers are known to exist, per credential, in this process.

    Keyed by credential too, so each credential is tried once on first use and a
    wrong one fails early with a clear 403 rather than deep inside a query.
    """

    def __init__(self) -> None:
        self._ready: set[tuple[tuple[tuple[str, str], ...], str]] = set()
        self._lock = threading.Lock()

    def ensure(self, options: Mapping[str, str], container: str, database: str) -> None:
        """Make sure ``container`` exists; raise an HTTP-mapped error naming ``database``."""
        key = (tuple(sorted(options.items())), container)
        with self._lock:
            if key in self._ready:
                return
        try:
            _ensure(options, container, database)
        except Exception as exc:
            mapped = storage_error(exc, database)
            if mapped is None:
                raise
            raise mapped from None
        with self._lock:
            self._ready.add(key)


def _ensure(options: Mapping[str, str], container: str, database: str) -> None:
    from azure.core.exceptions import HttpResponseError, ResourceExistsError

    client = clients.blob_service_client(options).get_container_client(container)
    with client:
        try:
            # Listing needs only read/list rights, which every usable credential has.
            next(iter(client.list_blobs(results_per_page=1).by_page()), None)
            return
        except HttpResponseError as exc:
            if exc.error_code != "ContainerNotFound":
                raise
        if options.get(opt.SKIP_SIGNATURE) == "true":
            raise NotFound(f"the storage container of database '{database}' does not exist")
        try:
            client.create_container()
        except ResourceExistsError:
            pass  # created concurrently by another process
        except HttpResponseError as exc:
            if exc.status_code in (401, 403):
                raise NotFound(
                    f"the storage container of database '{database}' does not exist, "
                    "and its credential may not create it"
                ) from None
            raise
