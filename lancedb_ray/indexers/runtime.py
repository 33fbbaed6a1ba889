"""What every indexer shares: the Ray check, GPU discovery, task fan-out and metrics."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import ray
from ray import ObjectRefGenerator
from ray.exceptions import RayTaskError

from lancedb_ray.errors import JobStalled
from lancedb_ray.metrics import Metric, MetricSet
from lancedb_ray.resources import TaskResources, task_resources
from lancedb_ray.settings import Settings
from lancedb_ray.types import ProgressReport

_LOG = logging.getLogger(__name__)
T = TypeVar("T")
_STARTED = "lancedb-ray: task started"  # the first item every watched task yields
_WATCH_SECONDS = 1.0  # how often a wait with nothing done looks at the cluster

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


@dataclass
class JobContext:
    """How one operation's Ray tasks are requested, watched and reported.

    ``report(step, fraction, waiting)`` is called as the work moves on (``waiting``
    says why no task can start, None once one runs); a wait with no task started
    and none finished for ``stall_seconds`` cancels the tasks and raises
    :class:`JobStalled` with the reason, so no job waits silently forever.
    """

    resources: TaskResources = field(default_factory=TaskResources)
    stall_seconds: float = math.inf
    report: ProgressReport | None = None

    @classmethod
    def from_settings(cls, settings: Settings, report: ProgressReport | None = None) -> JobContext:
        return cls(task_resources(settings), settings.agent.stall_seconds, report)

    def note(self, step: str, fraction: float | None = None, waiting: str | None = None) -> None:
        if self.report is not None:
            try:
                self.report(step, fraction, waiting)
            except Exception:  # reporting must never fail the work itself
                _LOG.warning("progress report failed", exc_info=True)


def context(ctx: JobContext | None) -> JobContext:
    """``ctx``, or one for the default settings on the cluster as it is now."""
    return ctx if ctx is not None else JobContext.from_settings(Settings())


def gather(calls: Sequence[Callable[[], ObjectRefGenerator]], kind: str, ctx: JobContext, *,
           step: str | None = None, limit: int | None = None, num_gpus: float = 0) -> list[Any]:
    """Run ``calls`` (each starts one :func:`watched` task), at most ``limit`` at once; results in order.

    The first failure cancels the others and is raised. While no task runs
    (none started yet, or the nodes of those that had started died and Ray is
    to run them again), the reason is reported; past ``ctx.stall_seconds`` the
    tasks are cancelled and :class:`JobStalled` is raised.
    """
    step = step or kind
    limit = max(1, limit or len(calls))
    results: list[Any] = [None] * len(calls)
    queue = list(enumerate(calls))
    in_flight: dict[ObjectRefGenerator, int] = {}
    started: dict[int, str] = {}  # task -> the node it started on
    finished = 0
    quiet_since = time.monotonic()  # last time a task started or finished
    demand = ctx.resources.demand(num_gpus)
    try:
        while queue or in_flight:
            while queue and len(in_flight) < limit:
                i, call = queue.pop(0)
                in_flight[call()] = i
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=_WATCH_SECONDS)
            if not ready:
                if _forget_lost(started):
                    quiet_since = time.monotonic()  # the stall clock starts at the loss
                running = any(i in started for i in in_flight.values())
                waiting = None if running else waiting_reason(demand)
                ctx.note(step, finished / len(calls), waiting)
                if waiting and time.monotonic() - quiet_since > ctx.stall_seconds:
                    raise JobStalled(f"{waiting} (for {time.monotonic() - quiet_since:.0f} s)")
                continue
            generator = ready[0]
            i = in_flight[generator]
            value = _result(next(generator), kind)
            quiet_since = time.monotonic()
            if isinstance(value, tuple) and value[:1] == (_STARTED,):
                started[i] = value[1]
                ctx.note(step, finished / len(calls), None)
                continue
            del in_flight[generator]
            results[i] = value
            finished += 1
            ctx.note(step, finished / len(calls), None)
    except BaseException:
        METRICS.inc("task_failures_total", kind=kind)
        for generator in in_flight:
            ray.cancel(generator)
        raise
    return results


def _result(ref: ray.ObjectRef, kind: str) -> Any:
    """The task's value; a task's own error is raised as itself (its remote traceback logged)."""
    try:
        return ray.get(ref)
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, Exception):
            raise
        _LOG.warning("%s task failed: %s", kind, exc)
        raise cause from None


def run_one(call: Callable[[], ObjectRefGenerator], kind: str, ctx: JobContext, *,
            step: str | None = None, num_gpus: float = 0) -> Any:
    """One :func:`watched` task's result, watched like :func:`gather`."""
    return gather([call], kind, ctx, step=step, num_gpus=num_gpus)[0]


def hand_over(call: Callable[[], T], kind: str, ctx: JobContext, *, step: str) -> T:
    """Run ``call``, a lance-ray operation, once one of its tasks' requests fits the cluster.

    lance-ray runs its tasks on a ``ray.util.multiprocessing.Pool``, whose
    constructor waits, without a timeout, for every actor to start, and reports
    nothing while the work goes on. So the wait for room happens here first,
    reported and stalled as :func:`gather`'s (``ctx.stall_seconds``); from the
    hand-over on, only the step is reported (no fraction).
    """
    demand = ctx.resources.demand()
    waiting_since = time.monotonic()
    while (waiting := waiting_reason(demand)) is not None:
        ctx.note(step, None, waiting)
        if time.monotonic() - waiting_since > ctx.stall_seconds:
            METRICS.inc("task_failures_total", kind=kind)
            raise JobStalled(f"{waiting} (for {time.monotonic() - waiting_since:.0f} s)")
        time.sleep(_WATCH_SECONDS)
    ctx.note(step, None, None)
    try:
        return call()
    except BaseException:
        METRICS.inc("task_failures_total", kind=kind)
        raise


def pool_arguments(ctx: JobContext, workers: int) -> dict[str, Any]:
    """``num_workers`` and ``ray_remote_args`` for a lance-ray call that runs a pool of actors.

    The actors ask for what the project's tasks ask for (fractional CPUs on a
    small cluster, custom resources from settings). ``ray.util.multiprocessing.Pool``
    refuses more workers than the cluster has whole CPUs. Unlike a Ray task, a
    pool actor's work is not run again when its node dies: lance-ray then
    fails the whole operation before its commit, and the agent retries the job.
    """
    cpus = int(ray.cluster_resources().get("CPU", 0))
    workers = max(1, min(workers, ctx.resources.parallelism or workers, cpus or 1))
    return {"num_workers": workers, "ray_remote_args": ctx.resources.options()}


def _forget_lost(started: dict[int, str]) -> bool:
    """Tasks whose node died are not running: Ray runs them again once a node has room. Any?"""
    if not started:
        return False
    alive = {node["NodeID"] for node in ray.nodes() if node.get("Alive")}
    lost = [i for i, node in started.items() if node not in alive]
    for i in lost:
        del started[i]
    return bool(lost)


def waiting_reason(demand: dict[str, float]) -> str | None:
    """Why a task asking for ``demand`` cannot start now; None if the cluster has room for it."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if not any(all(node.get(k, 0) >= v for k, v in demand.items()) for node in nodes):
        largest = {k: max((node.get(k, 0) for node in nodes), default=0) for k in demand}
        return (f"cannot be scheduled: needs {_fmt(demand)}, the largest node has {_fmt(largest)} "
                "(waiting for the autoscaler, if there is one)")
    free = ray.available_resources()
    if all(free.get(k, 0) >= v for k, v in demand.items()):
        return None
    return f"waiting for resources: needs {_fmt(demand)}, free {_fmt({k: free.get(k, 0) for k in demand})}"


def _fmt(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {round(v, 2):g}" for k, v in resources.items()) + "}"


def watched(fn: Callable[..., T]) -> Any:
    """``fn`` as a Ray task that first says it started, then returns its result (see :func:`gather`).

    Call it as ``watched_fn.options(**ctx.resources.options()).remote(...)``.
    """

    @functools.wraps(fn)
    def task(*args: Any, **kwargs: Any) -> Iterator[Any]:
        yield _STARTED, node_id()
        yield fn(*args, **kwargs)

    return ray.remote(num_returns="streaming")(task)


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
