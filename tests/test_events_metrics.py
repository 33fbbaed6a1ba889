"""Event-bus metrics: real Ray metrics under Ray, and nothing at all without it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from lancedb_ray.events import metrics


def test_recording_without_ray_is_a_no_op_that_never_imports_ray() -> None:
    script = textwrap.dedent(
        """
        import sys
        from lancedb_ray.events import metrics
        metrics.published("embedded", 3)
        metrics.publish_failed("embedded")
        metrics.consumed("embedded", "agent", 2)
        metrics.outbox_pending(1)
        assert "ray" not in sys.modules and metrics.METRICS._metrics == {}, sys.modules.keys()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)


@pytest.mark.ray
def test_recording_under_ray_creates_each_metric_once(ray_cluster: None) -> None:
    from ray.util.metrics import Counter, Gauge

    for _ in range(2):
        metrics.published("kafka", 3)
        metrics.publish_failed("kafka")
        metrics.consumed("kafka", "agent", 2)
        metrics.outbox_pending(4)
    kinds = {name: type(metric) for name, metric in metrics.METRICS._metrics.items()}
    assert kinds == {
        "published_total": Counter,
        "publish_failures_total": Counter,
        "consumed_total": Counter,
        "outbox_pending": Gauge,
    }
