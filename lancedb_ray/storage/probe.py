"""Is a storage location reachable right now? The readiness probe's storage check.

One cheap round trip (does the container exist) with the storage client's short
retries, so an outage is reported within seconds. The answer names only the
kind of failure: exception texts may carry account or endpoint details.
"""

from __future__ import annotations

import os
from pathlib import Path

from lancedb_ray.storage import clients
from lancedb_ray.storage.catalog import DatabaseLocation


def unreachable(location: DatabaseLocation, timeout_s: float = 5.0) -> str | None:
    """Why ``location`` cannot be used now, or None when it can."""
    if not location.is_azure:
        return _local_problem(Path(location.uri))
    container = location.uri.removeprefix("az://").split("/", 1)[0]
    try:
        client = clients.blob_service_client(location.storage_options)
        client.get_container_client(container).exists(timeout=max(1, int(timeout_s)))
    except Exception as exc:  # noqa: BLE001 - any failure means not reachable; its text is not shown
        return f"storage root unreachable ({type(exc).__name__})"
    return None


def _local_problem(path: Path) -> str | None:
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return "storage root is not a writable directory"
    return None
