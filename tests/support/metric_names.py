"""Every metric the code defines, and the metric names a PromQL expression uses."""

from __future__ import annotations

import importlib
import pkgutil
import re

import lancedb_ray
from lancedb_ray.metrics import ALL_SETS, Metric

_NAME = re.compile(r"\b(ray_lancedb_ray_\w+)\b")
_SUFFIXES = ("_bucket", "_sum", "_count")


def all_metrics() -> dict[str, Metric]:
    """Exported name (without ``ray_``) -> definition; importing each module registers its sets."""
    for module in pkgutil.walk_packages(lancedb_ray.__path__, "lancedb_ray."):
        if module.name != "lancedb_ray.cli":
            importlib.import_module(module.name)
    exported: dict[str, Metric] = {}
    for metric_set in ALL_SETS:
        names = metric_set.exported()
        assert not set(names) & set(exported), f"defined twice: {set(names) & set(exported)}"
        exported.update(names)
    return exported


def used_metrics(expr: str) -> set[tuple[str, str]]:
    """(exported name, Prometheus suffix) of each lancedb-ray series ``expr`` reads."""
    used = set()
    for name in _NAME.findall(expr):
        base = name.removeprefix("ray_")
        suffix = next((s for s in _SUFFIXES if base.endswith(s)), "")
        used.add((base.removesuffix(suffix) if suffix else base, suffix))
    return used
