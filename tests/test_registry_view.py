"""A replica's copy of the version registry: current without a round trip per query, never behind an
acknowledged commit (it is dropped, and stops trusting itself, when it cannot follow)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from lancedb_ray.storage.versions import LEASE_S, RegistryView, TableVersion, VersionRegistry
from tests.support.waiting import wait_for


class CountingRegistry:
    """A registry whose direct reads are counted, and which can be swapped for a fresh one
    (the actor restarted, empty)."""

    def __init__(self) -> None:
        self.target = VersionRegistry()
        self.gets = 0

    def get(self, key: str) -> TableVersion | None:
        self.gets += 1
        return self.target.get(key)

    def changes(self, *args):
        return self.target.changes(*args)

    def publish(self, *args, **kwargs) -> TableVersion:
        return self.target.publish(*args, **kwargs)


@pytest.fixture()
def registry() -> CountingRegistry:
    return CountingRegistry()


@pytest.fixture()
def views(registry: CountingRegistry) -> Iterator[list[RegistryView]]:
    made = [RegistryView(registry), RegistryView(registry)]
    for view in made:
        wait_for(lambda view=view: view._valid_until > time.monotonic(), 10, "the view to follow",
                 interval_s=0.01)
    yield made
    for view in made:
        view.close()


def test_a_following_view_answers_without_asking_the_registry(registry, views) -> None:
    views[0].publish("t", 3)
    before = registry.gets
    for _ in range(100):
        assert views[1].get("t").version == 3
        assert views[1].get("missing") is None
    assert registry.gets == before


def test_no_view_reads_behind_an_acknowledged_commit(views) -> None:
    stale = []
    for version in range(1, 301):
        writer, reader = views[version % 2], views[(version + 1) % 2]
        writer.publish("t", version)
        entry = reader.get("t")
        if entry is None or entry.version < version:
            stale.append((version, entry))
    assert stale == []


def test_concurrent_commits_each_wait_for_every_view(views) -> None:
    errors: list[str] = []

    def write(key: str) -> None:
        for version in range(1, 51):
            views[0].publish(key, version)
            seen = views[1].get(key)
            if seen is None or seen.version < version:
                errors.append(f"{key}: {seen} after {version}")

    threads = [threading.Thread(target=write, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_a_view_that_stops_following_is_dropped_and_stops_trusting_its_copy(registry, views) -> None:
    writer, stalled = views
    writer.publish("t", 1)
    assert stalled.get("t").version == 1
    stalled.close()  # its follower stops, as in a frozen or partitioned replica
    wait_for(lambda: not stalled._follower.is_alive(), 10, "the follower to stop", interval_s=0.01)
    writer.publish("t", 2)  # waits for the stalled view, then drops it
    assert stalled.get("t").version == 2  # its lease has run out: it asked the registry
    assert time.monotonic() >= stalled._valid_until
    before = registry.gets
    writer.publish("t", 3)  # no longer waits for the dropped view
    assert registry.gets == before


def test_a_restarted_registry_empties_every_copy(registry, views) -> None:
    views[0].publish("t", 7)
    assert views[1].get("t").version == 7
    registry.target = VersionRegistry()  # the actor restarted: it knows nothing
    wait_for(lambda: views[1]._incarnation == registry.target._incarnation, 10,
             "the view to follow the new registry", interval_s=0.01)
    assert views[1].get("t") is None  # read from storage again, never the lost entry


def test_a_re_confirmation_does_not_wait_for_followers(registry) -> None:
    """Re-reading storage and finding the same version only refreshes the entry's time."""
    registry.target.publish("t", 4)
    registry.target.changes("gone", None, 0, 0)  # a follower that never asks again
    assert registry.target.publish("t", 4).version == 4
    assert "gone" in registry.target._followers  # not waited out (and so not dropped)
    registry.target.publish("t", 5)  # a new version is waited for: the silent follower is dropped
    assert "gone" not in registry.target._followers


def test_a_commit_waits_out_the_lease_of_a_follower_answered_late_in_the_last_commit() -> None:
    """A follower that got an answer late in one commit's wait, then fell silent, trusts that answer
    for a lease: the next commit must wait it out, not skip the follower as given up on."""
    registry = VersionRegistry()
    first = registry.changes("slow", None, 0, 0)
    committing = threading.Thread(target=registry.publish, args=("t", 1))
    started = time.monotonic()
    committing.start()  # waits for "slow", which is silent
    wait_for(lambda: registry.get("t") is not None, 10, "the first commit to wait", interval_s=0.01)
    # The slow follower asks again 1.6 s into that wait (its lease, LEASE_S = 1 s, is longer than
    # what is left of the old fixed 2.5 s wait), gets version 1, and falls silent.
    time.sleep(max(0.0, started + 1.6 - time.monotonic()))
    sent = time.monotonic()
    late = registry.changes("slow", first.incarnation, first.seq, 0)
    assert late.entries["t"].version == 1
    committing.join()
    registry.publish("t", 2)
    assert time.monotonic() >= sent + LEASE_S, "acknowledged while the follower still trusted version 1"
