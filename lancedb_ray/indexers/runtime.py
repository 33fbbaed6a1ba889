"""What every indexer shares: the Ray check, GPU discovery, task fan-out and metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import ray

from lancedb_ray.metrics import Metric, MetricSet

_LOG = logging.getLogger(__name__)
T = TypeVar("T")

METRICS = MetricSet(
    "indexers",
    {
        "tasks_total": Metric("Counter", "Indexer Ray tasks finished.", ("kind", "device")),
        "task_failures_total": Metric("Counter", "Indexer Ray tasks that failed.", ("kind",)),
        "jobs_total": Metric("Counter", "Indexer operations run to the end.", ("kind",)),
        "job_failures_total": Metric("Counter", "Indexer operations that failed.", ("kind",)),
        "operation_seconds": Metric("Histogram", "Wall time of one indexer operation.", ("kind",),
                          (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)),
        "segments_total": Metric("Counter", "Index segments built and committed.", ("kind",)),
        "gpu_fallbacks_total": Metric("Counter", "GPU training that fell back to the CPU.", ("reason",)),
        "fragments_compacted_total": Metric("Counter", "Fragments rewritten by compaction.", ()),
    },
)


class RayNotInitialized(RuntimeError):
    """An indexer was called in a process that is not connected to a Ray cluster."""


def require_ray(operation: str) -> None:
    if not ray.is_initialized():
        raise RayNotInitialized(
            f"{operation} runs its work as Ray tasks, but Ray is not initialised in this process: "
            "call ray.init() (or ray.init(address='auto') to join a cluster) first"
        )


def cluster_has_gpus() -> bool:
    """Whether the cluster has GPU resources right now (a GPU group scaled to zero has none)."""
    return ray.cluster_resources().get("GPU", 0) > 0


def resolve_use_gpu(setting: bool | None) -> bool:
    """``AgentSettings.use_gpu``: None means "when the cluster has GPUs"."""
    return cluster_has_gpus() if setting is None else setting


def wait_for_gpus(timeout_seconds: float, poll_seconds: float = 1.0) -> bool:
    """Ask the autoscaler for one GPU and wait for it to join; False if none came in time.

    On KubeRay the GPU worker group scales to zero, so a GPU job first asks the
    autoscaler for a GPU bundle; without an autoscaler the request does nothing.
    """
    if cluster_has_gpus():
        return True
    if timeout_seconds <= 0:
        return False
    from ray.autoscaler.sdk import request_resources

    _LOG.info("no GPU in the cluster: asking the autoscaler for one, waiting up to %.0f s",
              timeout_seconds)
    request_resources(bundles=[{"GPU": 1}])
    try:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if cluster_has_gpus():
                return True
            time.sleep(poll_seconds)
        return cluster_has_gpus()
    finally:
        request_resources(bundles=[])  # let the GPU group scale back to zero once idle


def gather(refs: Sequence[ray.ObjectRef], kind: str, *,
           on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
    """Results of ``refs`` in order; the first failure cancels the others and is raised."""
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ref = done[0]
        try:
            results[index[ref]] = ray.get(ref)
        except Exception:
            METRICS.inc("task_failures_total", kind=kind)
            for other in pending:
                ray.cancel(other)
            raise
        if on_result is not None:
            on_result(index[ref], results[index[ref]])
    return results


def bounded_map(submit: Callable[[T], ray.ObjectRef], items: Sequence[T], limit: int,
                kind: str) -> list[Any]:
    """Run ``submit(item)`` for every item, at most ``limit`` tasks in flight; results in order."""
    limit = max(1, limit)
    results: list[Any] = [None] * len(items)
    in_flight: dict[ray.ObjectRef, int] = {}
    queue = list(enumerate(items))
    try:
        while queue or in_flight:
            while queue and len(in_flight) < limit:
                i, item = queue.pop(0)
                in_flight[submit(item)] = i
            done, _ = ray.wait(list(in_flight), num_returns=1)
            i = in_flight.pop(done[0])
            results[i] = ray.get(done[0])
    except Exception:
        METRICS.inc("task_failures_total", kind=kind)
        for ref in in_flight:
            ray.cancel(ref)
        raise
    return results


@contextmanager
def operation(kind: str) -> Iterator[None]:
    """Count and time one indexer operation."""
    start = time.monotonic()
    try:
        yield
    except BaseException:
        METRICS.inc("job_failures_total", kind=kind)
        raise
    METRICS.inc("jobs_total", kind=kind)
    METRICS.observe("operation_seconds", time.monotonic() - start, kind=kind)


def node_id() -> str:
    return ray.get_runtime_context().get_node_id()
