"""Where databases live: the storage catalog, credentials and storage fault mapping."""

from lancedb_ray.storage.catalog import DatabaseLocation, StorageCatalog, validate_name

__all__ = ["DatabaseLocation", "StorageCatalog", "validate_name"]
