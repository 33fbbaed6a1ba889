"""Indexers: index builds, index refresh, compaction and version cleanup as Ray tasks.

The Lance agent calls these; the bulk ``index`` job calls them too. Every
function that does real work runs it as Ray tasks (or, where lance-ray does
the work, on lance-ray's pool of Ray actors) with resource requests, so it
goes to GPU workers (training) or CPU workers (segments, compaction) of
whatever cluster the caller is connected to, and raises ``RayNotInitialized``
in a process without Ray.
"""

from lancedb_ray.indexers.handle import TableHandle, table_handle
from lancedb_ray.indexers.maintenance import cleanup, compact, optimize_indices, unindexed_rows
from lancedb_ray.indexers.runtime import (
    JobContext,
    JobStalled,
    RayNotInitialized,
    cluster_has_gpus,
    resolve_use_gpu,
)
from lancedb_ray.indexers.scalar import SCALAR_INDEX_TYPES, build_scalar_index
from lancedb_ray.indexers.vector import (
    VECTOR_INDEX_TYPES,
    VectorBuild,
    VectorModel,
    build_vector_index,
    retrain_vector_index,
    run_vector_build,
    train_vector_model,
    vector_index_description,
)

__all__ = [
    "SCALAR_INDEX_TYPES",
    "VECTOR_INDEX_TYPES",
    "JobContext",
    "JobStalled",
    "RayNotInitialized",
    "TableHandle",
    "VectorBuild",
    "VectorModel",
    "build_scalar_index",
    "build_vector_index",
    "cleanup",
    "cluster_has_gpus",
    "compact",
    "optimize_indices",
    "resolve_use_gpu",
    "retrain_vector_index",
    "run_vector_build",
    "table_handle",
    "train_vector_model",
    "unindexed_rows",
    "vector_index_description",
]
