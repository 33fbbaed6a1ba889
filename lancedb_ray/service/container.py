"""Builds the service layer from settings: what one query node replica holds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lancedb_ray.execution.base import QueryExecutor
from lancedb_ray.execution.local import LocalExecutor
from lancedb_ray.service.indexes import IndexJobs, IndexService
from lancedb_ray.service.namespaces import NamespaceService
from lancedb_ray.service.tables import ChangeSink, TableService
from lancedb_ray.service.uploads import UploadService
from lancedb_ray.service.versions import VersionService
from lancedb_ray.settings import Settings
from lancedb_ray.storage.catalog import StorageCatalog
from lancedb_ray.storage.connections import Connections
from lancedb_ray.storage.versions import LatestVersions, Registry, VersionRegistry


@dataclass
class Services:
    settings: Settings
    connections: Connections
    tables: TableService
    indexes: IndexService
    versions: VersionService
    namespaces: NamespaceService
    executor: QueryExecutor
    uploads: UploadService

    @classmethod
    def build(
        cls,
        settings: Settings,
        on_change: ChangeSink,
        executor_factory: Callable[[Connections], QueryExecutor] = LocalExecutor,
        registry: Registry | None = None,
        index_jobs: IndexJobs | None = None,
    ) -> Services:
        """``registry``: the deployment's shared version registry (None: this process alone)."""
        seconds = settings.server.read_consistency_seconds
        versions = LatestVersions(registry or VersionRegistry(), seconds)
        connections = Connections(StorageCatalog(settings.storage), seconds, versions)
        tables = TableService(connections, on_change, settings.server.idempotency_window)
        return cls(
            settings=settings,
            connections=connections,
            tables=tables,
            indexes=IndexService(connections, tables, index_jobs, settings.server.index_wait_seconds),
            versions=VersionService(connections, tables),
            namespaces=NamespaceService(connections, tables),
            executor=executor_factory(connections),
            uploads=UploadService(connections, tables, settings.server.multipart_upload_ttl_seconds,
                                  settings.server.idempotency_window),
        )
