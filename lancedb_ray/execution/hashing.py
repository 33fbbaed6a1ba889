"""Rendezvous (highest-random-weight) hashing of cache partitions onto executors.

Each (partition, executor) pair gets a pseudo-random weight; a partition's
owners are the R executors with the highest weights. An executor joining or
leaving changes only the partitions for which it is (or becomes) among the
top R, so only its share of the cache moves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _weight(partition: str, executor: str) -> int:
    digest = hashlib.blake2b(f"{partition}|{executor}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank(partition: str, executors: Sequence[str]) -> list[str]:
    """All executors, best owner first: the fail-over order for ``partition``."""
    return sorted(executors, key=lambda executor: _weight(partition, executor), reverse=True)


def owners(partition: str, executors: Sequence[str], replicas: int) -> list[str]:
    """The ``replicas`` executors that own ``partition``."""
    return rank(partition, executors)[: max(1, replicas)]
