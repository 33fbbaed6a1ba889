"""Ray metrics for the event bus (``ray_lancedb_ray_events_*`` in Prometheus).

Recorded through the shared ``MetricSet``: a no-op where Ray is not running
(tests, CLI tools, a job driver before ``ray.init``), and never raising, so a
metrics fault cannot fail a publish.
"""

from __future__ import annotations

from lancedb_ray.metrics import Metric, MetricSet

METRICS = MetricSet(
    "events",
    {
        "published_total": Metric("Counter", "Change events published to the event bus.", ("backend",)),
        "publish_failures_total": Metric("Counter", "Failed attempts to publish change events.",
                                         ("backend",)),
        "consumed_total": Metric("Counter", "Change events delivered to a consumer.", ("backend", "group")),
        "outbox_pending": Metric("Gauge", "Change events emitted but not yet published."),
    },
)


def published(backend: str, count: int) -> None:
    METRICS.inc("published_total", count, backend=backend)


def publish_failed(backend: str) -> None:
    METRICS.inc("publish_failures_total", backend=backend)


def consumed(backend: str, group: str, count: int) -> None:
    METRICS.inc("consumed_total", count, backend=backend, group=group)


def outbox_pending(count: int) -> None:
    METRICS.set("outbox_pending", count)
