"""An executor's cache: copies of fragment buckets, in memory with a disk spill tier.

A cached copy is itself a Lance dataset (``memory://``, private to its handle,
freed when dropped), so a sub-plan runs on it with lance's own kernels and
gets exactly the distances lance computes on the source. Copies are keyed by
the content of their fragments (data files, deletion files, schema): fragment
files never change in place, so a copy stays valid across table versions
until its fragments change, and a changed fragment simply misses.

Memory holds at most ``memory_bytes``; the least recently used copies spill to
``spill_dir`` (a node's NVMe) up to ``spill_bytes``, beyond which they are dropped.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lance
import pyarrow as pa
from lance.dataset import LanceDataset

from lancedb_ray.metrics import Metric, MetricSet

METRICS = MetricSet(
    "cache",
    {
        "hits_total": Metric("Counter", "Cache hits by tier.", ("executor", "tier")),
        "misses_total": Metric("Counter", "Cache misses (read from storage).", ("executor",)),
        "evictions_total": Metric("Counter", "Copies evicted, by tier.", ("executor", "tier")),
        "bytes": Metric("Gauge", "Bytes held, by tier.", ("executor", "tier")),
    },
)


def content_key(uri: str, schema: str, fragment_metadata: list[str]) -> str:
    """A key that changes whenever the rows of these fragments could have changed."""
    text = "\n".join([uri, schema, *fragment_metadata])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass
class _Entry:
    dataset: LanceDataset
    nbytes: int


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    memory_bytes: int
    spill_bytes: int
    entries: int


class FragmentCache:
    def __init__(
        self, executor: str, memory_bytes: int, spill_dir: str | None, spill_bytes: int
    ) -> None:
        self._executor = executor
        self._memory_budget = memory_bytes
        self._spill_budget = spill_bytes
        self._spill_dir = Path(spill_dir) / executor if spill_dir else None
        if self._spill_dir:
            shutil.rmtree(self._spill_dir, ignore_errors=True)  # a restart starts cold
            self._spill_dir.mkdir(parents=True, exist_ok=True)
        self._memory: OrderedDict[str, _Entry] = OrderedDict()
        self._disk: OrderedDict[str, int] = OrderedDict()  # key -> bytes
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        self._hits = self._misses = self._evictions = 0

    @property
    def memory_budget(self) -> int:
        return self._memory_budget

    def peek(self, key: str) -> LanceDataset | None:
        """The cached copy for ``key`` if there is one; never loads."""
        return self._lookup(key)

    def get(self, key: str, load: Callable[[], pa.Table]) -> LanceDataset:
        """The cached copy for ``key``, loading it with ``load`` on a miss (once per key)."""
        found = self._lookup(key)
        if found is not None:
            return found
        with self._lock:
            build_lock = self._building.setdefault(key, threading.Lock())
        with build_lock:
            found = self._lookup(key)
            if found is not None:
                return found
            self._misses += 1
            METRICS.inc("misses_total", executor=self._executor)
            table = load()
            copy = lance.write_dataset(table, f"memory://{key}")
            self._admit(key, _Entry(copy, table.nbytes))
        with self._lock:
            self._building.pop(key, None)
        return copy

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                memory_bytes=sum(e.nbytes for e in self._memory.values()),
                spill_bytes=sum(self._disk.values()),
                entries=len(self._memory) + len(self._disk),
            )

    def _lookup(self, key: str) -> LanceDataset | None:
        with self._lock:
            entry = self._memory.get(key)
            if entry is not None:
                self._memory.move_to_end(key)
                self._hits += 1
                METRICS.inc("hits_total", executor=self._executor, tier="memory")
                return entry.dataset
            on_disk = key in self._disk
        if not on_disk:
            return None
        # Promote from the spill tier back to memory.
        assert self._spill_dir is not None
        table = lance.dataset(str(self._spill_dir / key)).to_table()
        copy = lance.write_dataset(table, f"memory://{key}")
        with self._lock:
            self._hits += 1
            self._forget_disk(key)
        METRICS.inc("hits_total", executor=self._executor, tier="disk")
        self._admit(key, _Entry(copy, table.nbytes))
        return copy

    def _admit(self, key: str, entry: _Entry) -> None:
        """Keep ``entry`` in memory, spilling the least recently used beyond the budget.

        A copy larger than the whole memory budget serves the query that loaded it and
        goes straight to the spill tier: memory never holds more than the budget.
        """
        spilled: list[tuple[str, _Entry]] = []
        with self._lock:
            if entry.nbytes > self._memory_budget:
                spilled.append((key, entry))
            else:
                self._memory[key] = entry
                self._memory.move_to_end(key)
            while self._memory and self._memory_bytes() > self._memory_budget:
                spilled.append(self._memory.popitem(last=False))
        for old_key, old_entry in spilled:
            self._evictions += 1
            METRICS.inc("evictions_total", executor=self._executor, tier="memory")
            self._spill(old_key, old_entry)
        self._publish_sizes()

    def _spill(self, key: str, entry: _Entry) -> None:
        if self._spill_dir is None or entry.nbytes > self._spill_budget:
            return
        lance.write_dataset(entry.dataset.to_table(), str(self._spill_dir / key), mode="overwrite")
        with self._lock:
            self._disk[key] = entry.nbytes
            while sum(self._disk.values()) > self._spill_budget:
                oldest = next(iter(self._disk))
                self._forget_disk(oldest)
                self._evictions += 1
                METRICS.inc("evictions_total", executor=self._executor, tier="disk")

    def _forget_disk(self, key: str) -> None:
        """Drop ``key`` from the spill tier; the caller holds the lock."""
        self._disk.pop(key, None)
        assert self._spill_dir is not None
        shutil.rmtree(self._spill_dir / key, ignore_errors=True)

    def _memory_bytes(self) -> int:
        return sum(e.nbytes for e in self._memory.values())

    def _publish_sizes(self) -> None:
        stats = self.stats()
        METRICS.set("bytes", stats.memory_bytes, executor=self._executor, tier="memory")
        METRICS.set("bytes", stats.spill_bytes, executor=self._executor, tier="disk")
