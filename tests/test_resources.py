"""Resource requests derived from the cluster (no Ray: the cluster's shape is stood in for)."""

from __future__ import annotations

import pytest

from lancedb_ray import resources
from lancedb_ray.resources import TaskResources, executor_count, service_cpus, task_resources
from lancedb_ray.settings import Settings


def on_cluster(monkeypatch: pytest.MonkeyPatch, largest_cpus: float, total_cpus: float) -> None:
    monkeypatch.setattr(resources, "largest_node", lambda resource="CPU": largest_cpus)
    monkeypatch.setattr(resources, "cluster_cpus", lambda: total_cpus)


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 6])
def test_on_a_small_node_every_task_that_may_run_at_once_fits_beside_the_service(
        monkeypatch: pytest.MonkeyPatch, cpus: int) -> None:
    on_cluster(monkeypatch, cpus, cpus)
    settings = Settings()
    request = task_resources(settings)
    at_once = settings.agent.max_concurrent_jobs * max(settings.agent.index_segments,
                                                       settings.agent.compact_parallelism)
    if cpus > service_cpus(settings):
        assert 0 < request.num_cpus <= 1
        assert service_cpus(settings) + at_once * request.num_cpus <= cpus
        # ... but no more of one operation's tasks at once than whole CPUs are left beside the service
        assert request.parallelism == max(1, int(cpus - service_cpus(settings)))
    else:  # the service alone does not fit: the smallest request, never a whole CPU
        assert request.num_cpus == 0.05


def test_a_roomy_node_gets_one_cpu_per_task(monkeypatch: pytest.MonkeyPatch) -> None:
    on_cluster(monkeypatch, 16, 64)
    assert task_resources(Settings()) == TaskResources(1.0)  # no cap: the scheduler places them


def test_a_cluster_without_cpus_yet_asks_for_one_for_the_autoscaler(monkeypatch: pytest.MonkeyPatch) -> None:
    on_cluster(monkeypatch, 0, 0)
    assert task_resources(Settings()).num_cpus == 1.0


def test_settings_win_over_the_derivation(monkeypatch: pytest.MonkeyPatch) -> None:
    on_cluster(monkeypatch, 2, 2)
    settings = Settings(agent={"task_num_cpus": 2.0, "task_resources": {"indexer": 1}})
    request = task_resources(settings)
    assert request.options() == {"num_cpus": 2.0, "resources": {"indexer": 1}}
    assert request.demand(num_gpus=1) == {"CPU": 2.0, "indexer": 1, "GPU": 1}


def test_executor_count_follows_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    on_cluster(monkeypatch, 2, 2)
    assert executor_count(Settings()) == 1
    on_cluster(monkeypatch, 16, 64)
    assert executor_count(Settings()) == 8
    assert executor_count(Settings(executors={"num_executors": 3})) == 3
