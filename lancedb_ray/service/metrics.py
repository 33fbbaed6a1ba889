"""The query node's service metrics (``ray_lancedb_ray_service_*`` in Prometheus).

Writes are counted where every acknowledged change is announced
(``TableService.notify``), version probes where a table is opened at its latest
version: the manifest read each request costs with ``read_consistency_seconds`` 0.
"""

from __future__ import annotations

from lancedb_ray.metrics import Metric, MetricSet

METRICS = MetricSet(
    "service",
    {
        "writes_total": Metric("Counter", "Acknowledged table changes, by operation.", ("operation",)),
        "rows_written_total": Metric("Counter", "Rows inserted, updated or deleted, by operation.",
                                     ("operation",)),
    },
)

# Faults after a commit: alerting material, not a dashboard series (it exists only once one happened).
POST_COMMIT = MetricSet(
    "writes",
    {"post_commit_failures_total": Metric(
        "Counter", "Committed writes whose change event or bookkeeping failed afterwards.")},
)
