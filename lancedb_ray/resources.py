"""What every Ray actor and task of lancedb-ray asks the scheduler for, derived in one place.

The service's long-lived actors (query node replicas, plan executors, the
agent) reserve CPUs for as long as they live; the indexers' tasks (training,
segments, compaction, cleanup) and the bulk jobs' tasks come and go. A fixed
request of one CPU per task never starts on a cluster whose largest node has
less than one CPU left beside the service (a 2-CPU machine: 0.5 + 0.5 + 0.25
reserved, 0.75 free), and Ray then waits forever. So a task's request is
derived from the cluster as it is when the work starts: one CPU where the
largest node has room for every task that may run at once, a share of what
is left where it has not. The request is a scheduling token, not a limit:
lance runs its own threads either way.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from lancedb_ray.settings import Settings

_MIN_TASK_CPUS = 0.05
_MAX_DEFAULT_EXECUTORS = 8


@dataclass(frozen=True)
class TaskResources:
    """The request of one indexer or bulk-job task; picklable, so it crosses to the driver as is."""

    num_cpus: float = 1.0
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources
    # Tasks of one operation in flight at once; None: as many as the scheduler places. Set where
    # the CPU request is a small token, so a small node is not oversubscribed (lance is threaded).
    parallelism: int | None = None

    def options(self, **extra: Any) -> dict[str, Any]:
        """Keyword arguments for ``.options()`` of a remote function (``extra`` wins)."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.resources:
            options["resources"] = dict(self.resources)
        options.update(extra)
        return options

    def demand(self, num_gpus: float = 0) -> dict[str, float]:
        """The request in the scheduler's terms (``CPU``, ``GPU``, custom names)."""
        demand = {"CPU": self.num_cpus, **self.resources}
        if num_gpus:
            demand["GPU"] = num_gpus
        return demand


def largest_node(resource: str = "CPU") -> float:
    """The most of ``resource`` any alive node has (0 without Ray or without such a node)."""
    import ray

    if not ray.is_initialized():
        return 0.0
    return max((float(node["Resources"].get(resource, 0)) for node in ray.nodes() if node.get("Alive")),
               default=0.0)


def cluster_cpus() -> float:
    """CPUs of the whole cluster; this machine's count when Ray is not initialised here."""
    import ray

    if ray.is_initialized():
        return float(ray.cluster_resources().get("CPU", 0))
    return float(os.cpu_count() or 2)


def executor_count(settings: Settings) -> int:
    """Plan executors to start: the setting, or one per two CPUs of the cluster (1 to 8)."""
    if settings.executors.num_executors:
        return settings.executors.num_executors
    return max(1, min(_MAX_DEFAULT_EXECUTORS, int(cluster_cpus()) // 2))


def service_cpus(settings: Settings) -> float:
    """CPUs the service's long-lived actors reserve, all together (the most they may reserve)."""
    server = settings.server
    replicas = server.num_replicas if isinstance(server.num_replicas, int) else server.max_replicas
    total = server.num_cpus * replicas
    if settings.executors.enabled:
        total += settings.executors.num_cpus * executor_count(settings)
    if settings.agent.enabled:
        total += settings.agent.num_cpus
    return total


def task_resources(settings: Settings) -> TaskResources:
    """The request of each indexer / bulk-job task on the cluster as it is now.

    ``agent.task_num_cpus`` wins when set. Otherwise: the largest node's CPUs
    less everything the service may reserve (as if it all sat on that node),
    shared by the tasks that may run at once (``max_concurrent_jobs`` jobs of
    ``index_segments`` or ``compact_parallelism`` tasks each), at most one CPU.
    A cluster with no CPU yet (workers scaled to zero) gets one CPU per task,
    which is what the autoscaler is asked to bring.
    """
    agent = settings.agent
    extra = dict(agent.task_resources)
    if agent.task_num_cpus is not None:
        return TaskResources(agent.task_num_cpus, extra)
    largest = largest_node("CPU")
    if largest <= 0:
        return TaskResources(1.0, extra)
    parallel = max(1, agent.max_concurrent_jobs) * max(1, agent.index_segments, agent.compact_parallelism)
    share = (largest - service_cpus(settings)) / parallel
    if share >= 1:
        return TaskResources(1.0, extra)
    parallelism = max(1, math.floor(largest - service_cpus(settings)))
    return TaskResources(max(_MIN_TASK_CPUS, math.floor(share * 100) / 100), extra, parallelism)
