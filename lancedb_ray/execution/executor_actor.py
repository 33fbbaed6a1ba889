"""The plan executor: a named Ray actor that owns a share of the cache.

It keeps three things warm: opened datasets (manifests), lance's index and
metadata caches (one ``lance.Session``), and copies of the fragment buckets it
owns (``FragmentCache``). It restarts on failure with an empty cache, which
refills on the next misses.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import lance
import pyarrow as pa
from lance.dataset import LanceDataset

from lancedb_ray import logging_setup
from lancedb_ray.execution import subplans
from lancedb_ray.execution.base import QueryTarget
from lancedb_ray.execution.cache import FragmentCache
from lancedb_ray.execution.local import LocalExecutor
from lancedb_ray.execution.plan import DatasetRef, SubPlan, SubPlanKind
from lancedb_ray.settings import Settings
from lancedb_ray.storage.catalog import StorageCatalog
from lancedb_ray.storage.connections import Connections
from lancedb_ray.storage.session import process_session

_OPEN_DATASETS = 128
BATCH_THREADS = 4


class PlanExecutor:
    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        config = Settings.from_plain(settings)
        logging_setup.configure(config.logging)
        budget = config.executors.cache_bytes
        self._name = name
        # Index data and manifests get a share of the budget in lance's own caches.
        self._session = process_session(budget // 2, budget // 8)
        self._cache = FragmentCache(
            name, budget // 2, config.executors.spill_dir, config.executors.spill_bytes
        )
        self._datasets: OrderedDict[tuple[str, int, str], LanceDataset] = OrderedDict()
        self._lock = threading.Lock()
        self._catalog = StorageCatalog(config.storage)
        self._local = LocalExecutor(Connections(self._catalog, config.server.read_consistency_seconds))
        # A batch's sub-plans run side by side: lance releases the GIL while it reads and searches.
        self._threads = ThreadPoolExecutor(BATCH_THREADS, thread_name_prefix=f"{name}-subplan")

    def ready(self) -> str:
        return self._name

    def execute(self, plan: SubPlan) -> pa.Table | int:
        if plan.kind is SubPlanKind.WHOLE_QUERY:
            target = QueryTarget(plan.dataset.ref, plan.dataset.version)
            return self._local.search(target, plan.query)
        return subplans.run(plan, self._open, self._cache)

    def execute_batch(self, plans: list[SubPlan]) -> list[pa.Table | int]:
        """Several sub-plans in one call (one round trip per executor per query), run concurrently."""
        if len(plans) == 1:
            return [self.execute(plans[0])]
        return list(self._threads.map(self.execute, plans))

    def prewarm(self, plans: list[SubPlan]) -> int:
        """Load the copies of ``plans`` now, so the first queries hit the cache."""
        for plan in plans:
            if plan.cache_key is not None:
                subplans.cached_copy(plan, self._open, self._cache)
        return len(plans)

    def prewarm_index(self, dataset: DatasetRef, name: str) -> None:
        """Load index ``name`` where this executor's sub-plans read it: the lance session of the
        datasets it opens, and its embedded connection (which runs the whole-query sub-plans)."""
        self._dataset(dataset).prewarm_index(name)
        self._local.prewarm_index(QueryTarget(dataset.ref, dataset.version), name)

    def cache_stats(self) -> dict[str, Any]:
        return {"executor": self._name, **asdict(self._cache.stats()),
                "index_cache_bytes": self._session.index_cache_size_bytes()}

    def _open(self, plan: SubPlan) -> LanceDataset:
        return self._dataset(plan.dataset)

    def _dataset(self, ref: DatasetRef) -> LanceDataset:
        key = (ref.uri, ref.version, ref.fingerprint)
        with self._lock:
            dataset = self._datasets.get(key)
            if dataset is not None:
                self._datasets.move_to_end(key)
                return dataset
        dataset = lance.dataset(
            ref.uri,
            version=ref.version,
            storage_options=self._catalog.resolve(ref.ref.database).storage_options or None,
            session=self._session,
        )
        with self._lock:
            self._datasets[key] = dataset
            while len(self._datasets) > _OPEN_DATASETS:
                self._datasets.popitem(last=False)
        return dataset
