"""Where databases live: the storage catalog, credentials and storage fault mapping."""

from lancedb_ray.storage.catalog import (
    DatabaseLocation,
    StorageCatalog,
    StorageConfigError,
    validate_name,
)
from lancedb_ray.storage.faults import storage_error

__all__ = [
    "DatabaseLocation",
    "StorageCatalog",
    "StorageConfigError",
    "storage_error",
    "validate_name",
]
