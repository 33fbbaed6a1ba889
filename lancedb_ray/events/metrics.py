"""Ray metrics for the event bus, on the Ray dashboard next to everything else.

The metric objects are created on first use, and only when Ray is initialised
in this process: the bus also runs in plain processes (tests, CLI tools, a job
driver before ``ray.init``), where recording is a no-op. Ray is never imported
here; if nothing else imported it, it cannot be initialised.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

_LOG = logging.getLogger(__name__)
_lock = threading.Lock()
_metrics: dict[str, Any] = {}

_DEFINITIONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "published": ("Counter", "Change events published to the event bus.", ("backend",)),
    "publish_failures": ("Counter", "Failed attempts to publish change events.", ("backend",)),
    "consumed": ("Counter", "Change events delivered to a consumer.", ("backend", "group")),
    "outbox_pending": ("Gauge", "Change events emitted but not yet published.", ()),
}


def _record(name: str, action: Callable[[Any], None]) -> None:
    """Apply ``action`` to the metric; a metrics fault must never fail a publish."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    try:
        with _lock:
            if name not in _metrics:
                from ray.util import metrics

                kind, description, tag_keys = _DEFINITIONS[name]
                _metrics[name] = getattr(metrics, kind)(
                    f"lancedb_ray_events_{name}", description=description, tag_keys=tag_keys
                )
            metric = _metrics[name]
        action(metric)
    except Exception:
        _LOG.warning("recording the %s metric failed", name, exc_info=True)


def published(backend: str, count: int) -> None:
    if count:
        _record("published", lambda m: m.inc(count, tags={"backend": backend}))


def publish_failed(backend: str) -> None:
    _record("publish_failures", lambda m: m.inc(1, tags={"backend": backend}))


def consumed(backend: str, group: str, count: int) -> None:
    if count:
        _record("consumed", lambda m: m.inc(count, tags={"backend": backend, "group": group}))


def outbox_pending(count: int) -> None:
    _record("outbox_pending", lambda m: m.set(count))
