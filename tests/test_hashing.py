"""Rendezvous hashing: balanced, replicated, and minimal movement on membership change."""

from collections import Counter

from lancedb_ray.execution.hashing import owners, rank

PARTITIONS = [f"az://c/db/t{t}.lance#fragments/{b}" for t in range(20) for b in range(50)]


def test_owners_are_distinct_and_stable() -> None:
    executors = [f"e{i}" for i in range(5)]
    for partition in PARTITIONS[:100]:
        chosen = owners(partition, executors, 2)
        assert len(set(chosen)) == 2
        assert chosen == owners(partition, list(reversed(executors)), 2)
        assert chosen == rank(partition, executors)[:2]


def test_load_is_spread_over_executors() -> None:
    executors = [f"e{i}" for i in range(4)]
    load = Counter(owners(p, executors, 1)[0] for p in PARTITIONS)
    assert set(load) == set(executors)
    assert min(load.values()) > len(PARTITIONS) / 4 * 0.8


def test_adding_an_executor_moves_only_its_share() -> None:
    before = [f"e{i}" for i in range(4)]
    after = [*before, "e4"]
    moved = [p for p in PARTITIONS if owners(p, before, 1) != owners(p, after, 1)]
    assert moved, "the new executor must take some partitions"
    assert all(owners(p, after, 1) == ["e4"] for p in moved)
    assert len(moved) < len(PARTITIONS) / 5 * 1.3


def test_removing_an_executor_moves_only_its_partitions() -> None:
    before = [f"e{i}" for i in range(5)]
    after = [e for e in before if e != "e2"]
    for partition in PARTITIONS:
        old, new = owners(partition, before, 2), owners(partition, after, 2)
        if "e2" not in old:
            assert old == new
        else:
            assert [e for e in old if e != "e2"] == new[:1]
