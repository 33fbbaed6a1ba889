"""Work per executor hop: what a batch of sub-plans carries, and how the executor runs it.

No Ray: the executor actor is a plain class, called in-process here.
"""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from lancedb_ray.execution import executor_actor
from lancedb_ray.execution.executor_actor import PlanExecutor
from lancedb_ray.execution.plan import DatasetRef, Snapshot, SubPlanKind, plan_count, plan_query
from lancedb_ray.protocol import QueryRequest
from lancedb_ray.settings import Settings
from lancedb_ray.types import TableRef

DIM = 384


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    uri = str(tmp_path_factory.mktemp("hop") / "db" / "t.lance")
    vectors = np.random.default_rng(1).normal(size=(400, DIM)).astype("float32")
    data = pa.table({"id": np.arange(400),
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM)})
    lance.write_dataset(data, uri, max_rows_per_file=25)  # 16 fragments: 8 buckets of 2
    return Snapshot.of(lance.dataset(uri))


def _target(snapshot: Snapshot) -> DatasetRef:
    return DatasetRef(TableRef("db", (), "t"), snapshot.dataset.uri, snapshot.dataset.version,
                      snapshot.fingerprint)


def test_a_batch_carries_the_query_vector_once(snapshot: Snapshot) -> None:
    query = QueryRequest(vector=np.random.default_rng(2).normal(size=DIM).tolist(), k=5)
    plans = plan_query(snapshot, _target(snapshot), query, group_size=2)
    assert len(plans) == 8 and all(p.kind is SubPlanKind.FLAT for p in plans)
    one_vector = len(pickle.dumps(query.vector))
    batch = len(pickle.dumps(plans))
    assert batch < 2 * one_vector, (batch, one_vector)


def test_a_batch_runs_its_sub_plans_concurrently(snapshot: Snapshot, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(Path(snapshot.dataset.uri).parents[1])
    settings = Settings(storage={"root": {"uri": root}}, executors={"spill_dir": str(tmp_path)})
    executor = PlanExecutor("hop-test", settings.to_plain())
    plans = plan_count(snapshot, _target(snapshot), None, group_size=2)
    together = threading.Barrier(2, timeout=30)  # passes only if two sub-plans run at once
    real_run = executor_actor.subplans.run

    def run_side_by_side(plan, open_dataset, cache):
        if plan is plans[0] or plan is plans[1]:
            together.wait()
        return real_run(plan, open_dataset, cache)

    monkeypatch.setattr(executor_actor.subplans, "run", run_side_by_side)
    assert sum(executor.execute_batch(plans)) == 400
    monkeypatch.setattr(executor_actor.subplans, "run", real_run)
    assert executor.execute_batch(plans[:1]) == [50]  # a single sub-plan runs on the caller's thread
