"""Ray metrics that cost nothing where Ray is not running.

Every part records through ``MetricSet``: metric objects are created on first
use and only when Ray is initialised in the process, so the same code runs in
plain processes (unit tests, CLI tools) where recording is a no-op. Exported
names are ``lancedb_ray_<prefix>_<name>`` (Prometheus adds ``ray_``).

One naming rule, checked when a set is defined: every counter ends in
``_total`` (exported as is; Prometheus would append it otherwise), no other
kind does. Label values that grow with the data (databases, tables) are capped
per metric: past ``MAX_SERIES`` distinct values they are recorded as ``_other``.
A metrics fault is logged, never raised: recording must not fail a request.
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any

_LOG = logging.getLogger(__name__)
MAX_SERIES = 200  # distinct values of a metric's unbounded labels before they fold into "_other"
OTHER = "_other"
ALL_SETS: list[MetricSet] = []  # every set defined, for the dashboard check and the docs


@dataclass(frozen=True)
class Metric:
    kind: str  # "Counter", "Gauge" or "Histogram"
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()
    unbounded: tuple[str, ...] = ()  # tag keys whose values grow with the data: capped


class MetricSet:
    def __init__(self, prefix: str, definitions: dict[str, Metric]) -> None:
        for name, spec in definitions.items():
            if (spec.kind == "Counter") != name.endswith("_total"):
                raise ValueError(f"metric {prefix}_{name}: counters, and only counters, end in _total")
            if not set(spec.unbounded) <= set(spec.tag_keys):
                raise ValueError(f"metric {prefix}_{name}: unbounded tags must be tag keys")
        self._prefix = prefix
        self._definitions = definitions
        self._metrics: dict[str, Any] = {}
        self._seen: dict[str, set[tuple[str, ...]]] = {name: set() for name in definitions}
        self._lock = threading.Lock()
        ALL_SETS.append(self)

    def exported(self) -> dict[str, Metric]:
        """The exported names (without Prometheus' ``ray_`` prefix) and their definitions."""
        return {f"lancedb_ray_{self._prefix}_{name}": spec for name, spec in self._definitions.items()}

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

    def _capped(self, name: str, tags: dict[str, str]) -> dict[str, str]:
        unbounded = self._definitions[name].unbounded
        if not unbounded:
            return tags
        key = tuple(str(tags.get(k)) for k in unbounded)
        with self._lock:
            seen = self._seen[name]
            if key not in seen and len(seen) >= MAX_SERIES:
                return {**tags, **dict.fromkeys(unbounded, OTHER)}
            seen.add(key)
        return tags

    def _record(self, method: str, name: str, value: float, tags: dict[str, str]) -> None:
        try:
            if (metric := self._get(name)) is not None:
                getattr(metric, method)(value, tags=self._capped(name, tags) or None)
        except Exception:  # noqa: BLE001 - a metric must never fail the work it measures
            _LOG.warning("recording metric %s_%s failed", self._prefix, name, exc_info=True)

    def inc(self, name: str, value: float = 1, **tags: str) -> None:
        if value:
            self._record("inc", name, value, tags)

    def set(self, name: str, value: float, **tags: str) -> None:
        self._record("set", name, value, tags)

    def observe(self, name: str, value: float, **tags: str) -> None:
        self._record("observe", name, value, tags)
