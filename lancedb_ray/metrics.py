"""Ray metrics that cost nothing where Ray is not running.

Every part records through ``MetricSet``: metric objects are created on first
use and only when Ray is initialised in the process, so the same code runs in
plain processes (unit tests, CLI tools) where recording is a no-op. Exported
names are ``lancedb_ray_<prefix>_<name>`` (Prometheus adds ``ray_``).
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    kind: str  # "Counter", "Gauge" or "Histogram"
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()


class MetricSet:
    def __init__(self, prefix: str, definitions: dict[str, Metric]) -> None:
        self._prefix = prefix
        self._definitions = definitions
        self._metrics: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _get(self, name: str) -> Any | None:
        ray = sys.modules.get("ray")
        if ray is None or not ray.is_initialized():
            return None
        with self._lock:
            if name not in self._metrics:
                from ray.util import metrics

                spec = self._definitions[name]
                kwargs: dict[str, Any] = {"description": spec.description,
                                          "tag_keys": spec.tag_keys}
                if spec.boundaries:
                    kwargs["boundaries"] = list(spec.boundaries)
                self._metrics[name] = getattr(metrics, spec.kind)(
                    f"lancedb_ray_{self._prefix}_{name}", **kwargs
                )
            return self._metrics[name]

    def inc(self, name: str, value: float = 1, **tags: str) -> None:
        if value and (metric := self._get(name)) is not None:
            metric.inc(value, tags=tags or None)

    def set(self, name: str, value: float, **tags: str) -> None:
        if (metric := self._get(name)) is not None:
            metric.set(value, tags=tags or None)

    def observe(self, name: str, value: float, **tags: str) -> None:
        if (metric := self._get(name)) is not None:
            metric.observe(value, tags=tags or None)
