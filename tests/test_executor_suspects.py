"""Executors that stopped answering are tried last until a ping comes back, and a lost ping is
sent again: a restarted executor is never kept out of its partitions for good."""

from __future__ import annotations

import threading

import pytest
import ray

from lancedb_ray.execution.distributed import DistributedExecutor
from lancedb_ray.settings import Settings
from tests.support.waiting import wait_for


@ray.remote(max_concurrency=2)  # release() while wait() blocks
class Gate:
    """Holds back the answer to a ping until released: a call lost around a restart."""

    def __init__(self) -> None:
        self._open = threading.Event()

    def wait(self) -> str:
        self._open.wait()
        return "late"

    def release(self) -> None:
        self._open.set()


class _Handle:
    def __init__(self, pings: list) -> None:
        self.ready = self
        self._pings = pings

    def remote(self):
        return self._pings.pop(0)


class _Pool:
    """The plan executors, reduced to what suspects need: a handle whose pings are given."""

    names = ["plan-executor-0", "plan-executor-1"]

    def __init__(self, pings: list) -> None:
        self.pings = pings
        self.fresh_handles = 0

    def handle(self, name: str) -> _Handle:
        return _Handle(self.pings)

    def forget(self, name: str) -> None:
        self.fresh_handles += 1  # the next handle() is a fresh one


@pytest.fixture()
def gate(ray_cluster: None):
    gate = Gate.remote()
    yield gate
    ray.get(gate.release.remote())
    ray.kill(gate)


def _executor(pool: _Pool, failover_seconds: float) -> DistributedExecutor:
    settings = Settings(executors={"failover_seconds": failover_seconds})
    return DistributedExecutor(settings, connections=None, pool=pool)


def test_a_lost_ping_is_sent_again_through_a_fresh_handle(gate) -> None:
    pool = _Pool([gate.wait.remote(), ray.put("plan-executor-0")])
    executor = _executor(pool, failover_seconds=0.5)
    executor._mark_silent("plan-executor-0")  # it just failed a call
    assert executor._current_suspects() == {"plan-executor-0"}  # first ping sent, never answered
    wait_for(lambda: not executor._current_suspects(), 30, "the suspect's ping to be sent again",
             interval_s=0.05)
    assert pool.fresh_handles == 1 and not pool.pings


def test_a_suspect_stays_until_its_ping_is_answered(gate) -> None:
    pool = _Pool([gate.wait.remote()])
    executor = _executor(pool, failover_seconds=60)
    executor._mark_silent("plan-executor-1")
    for _ in range(3):
        assert executor._current_suspects() == {"plan-executor-1"}
    ray.get(gate.release.remote())
    wait_for(lambda: not executor._current_suspects(), 30, "an answered ping to clear the suspect",
             interval_s=0.05)
    assert pool.fresh_handles == 0
