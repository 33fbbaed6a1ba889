"""Bulk Ray jobs: ``ray job submit -- python -m lancedb_ray.jobs.<job> ...``.

- ``ingest``: read a parquet/CSV/Lance source with Ray Data, write fragments in
  parallel tasks, commit them as one new version.
- ``index``: build a vector index from segments in parallel (on GPU workers
  when asked), or a scalar / full-text index.
"""
