"""Queries planned on the query node and executed by the plan executors.

Each sub-plan goes to an owner of its cache partition (rendezvous hashing,
R owners); if that executor is dead or restarting, the sub-plan fails over to
the next executor in the partition's ranking, which becomes its new owner
until the first one is back. The query node merges the local results.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
    RayTaskError,
)

from lancedb_ray.errors import LanceDBRayError, Unavailable
from lancedb_ray.execution import hashing
from lancedb_ray.execution.base import QueryTarget
from lancedb_ray.execution.executor_actor import PlanExecutor
from lancedb_ray.execution.local import LocalExecutor
from lancedb_ray.execution.merge import merge_nearest, merge_scan
from lancedb_ray.execution.plan import (
    DatasetRef,
    Snapshot,
    SubPlan,
    SubPlanKind,
    plan_count,
    plan_query,
)
from lancedb_ray.execution.snapshots import Snapshots
from lancedb_ray.metrics import Metric, MetricSet
from lancedb_ray.protocol import QueryRequest
from lancedb_ray.resources import executor_count
from lancedb_ray.settings import Settings, on_object_store
from lancedb_ray.storage.connections import Connections
from lancedb_ray.storage.lance_errors import lance_errors, translate
from lancedb_ray.storage.session import process_session
from lancedb_ray.types import TableRef

logger = logging.getLogger(__name__)
METRICS = MetricSet(
    "executors",
    {
        "failovers_total": Metric("Counter", "Sub-plans re-routed from a failed executor."),
        "subplans_per_query": Metric("Histogram", "Sub-plans one query (or count) was split into.",
                                     (), (1, 2, 4, 8, 16, 32, 64, 128, 256)),
        "call_seconds": Metric("Histogram", "One batched executor call, sent to answered, by outcome.",
                               ("outcome",), (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)),
    },
)
_EXECUTOR_FAULTS = (ActorDiedError, ActorUnavailableError, RayActorError, GetTimeoutError)
FIRST_PING_WAIT_S = 0.05  # a query waits this long, once, for a suspect's first ping
SUBPLAN_TIMEOUT_S = 120.0  # a sub-plan still running (and its executor answering) this long fails
QUERY_NODE_INDEX_CACHE = 64 * 1024**2
QUERY_NODE_METADATA_CACHE = 256 * 1024**2
# A query that is one flat, scan or count sub-plan over a table this small runs on the query node:
# the executor hop (an actor call, ~1-2 ms) costs more than the work (bench/executor_hop.py).
IN_PROCESS_MAX_ROWS = 10_000
IN_PROCESS_CACHE_BYTES = 128 * 1024**2  # the query node's own copies of such small tables
_IN_PROCESS_KINDS = (SubPlanKind.FLAT, SubPlanKind.SCAN, SubPlanKind.COUNT)


class ExecutorPool:
    """The named plan executors of this deployment, started on first use."""

    def __init__(self, settings: Settings) -> None:
        count = executor_count(settings)
        self.names = [f"plan-executor-{i}" for i in range(count)]
        self.replicas = min(settings.executors.replicas, count)
        self._namespace = settings.ray.namespace
        self._num_cpus = settings.executors.num_cpus
        self._settings = settings.to_plain()
        self._handles: dict[str, Any] = {}

    def handle(self, name: str) -> Any:
        if name not in self._handles:
            self._handles[name] = (
                ray.remote(PlanExecutor)
                .options(
                    name=name,
                    namespace=self._namespace,
                    lifetime="detached",
                    get_if_exists=True,
                    max_restarts=-1,
                    max_concurrency=8,
                    num_cpus=self._num_cpus,
                    # Over the nodes: losing one node loses as few executors as it can.
                    scheduling_strategy="SPREAD",
                )
                .remote(name, self._settings)
            )
        return self._handles[name]

    def start(self) -> None:
        """Start every executor and wait until each answers."""
        ray.get([self.handle(name).ready.remote() for name in self.names])

    def unanswered(self, timeout_s: float) -> list[str]:
        """The executors that do not answer a ping within ``timeout_s`` (readiness)."""
        pings = {self.handle(name).ready.remote(): name for name in self.names}
        answered, _ = ray.wait(list(pings), num_returns=len(pings), timeout=timeout_s)
        silent = [name for ref, name in pings.items() if ref not in answered]
        for ref in answered:
            try:
                ray.get(ref)
            except RayActorError:
                silent.append(pings[ref])
                self.forget(pings[ref])
        return sorted(silent)

    def forget(self, name: str) -> None:
        """Drop an executor's handle after a fault: the next call looks the actor up (or starts it)."""
        self._handles.pop(name, None)

    def route(self, partition: str) -> list[str]:
        """Executors to try for ``partition``: a random owner first, then the rest in rank."""
        ranked = hashing.rank(partition, self.names)
        owners = ranked[: self.replicas]
        first = random.choice(owners)
        return [first] + [name for name in ranked if name != first]


class DistributedExecutor:
    def __init__(self, settings: Settings, connections: Connections, pool: ExecutorPool) -> None:
        self._connections = connections
        self._pool = pool
        self._group_size = settings.executors.fragments_per_group
        self._local = LocalExecutor(connections)
        self._settings = settings
        self._in_process: PlanExecutor | None = None  # built on first use
        self._in_process_lock = threading.Lock()
        # Half of the fail-over deadline waiting for a call, half for a ping (_await).
        self._probe_s = settings.executors.failover_seconds / 2
        self._failover_s = settings.executors.failover_seconds
        self._suspects: dict[str, _Suspect] = {}  # executors that stopped answering
        self._suspects_lock = threading.Lock()
        # The query node plans (manifests and index metadata); where it searches the indexes of
        # tables on a local disk too (_searches_here), their partitions get an executor's share.
        index_cache = QUERY_NODE_INDEX_CACHE if settings.executors.search_local_disk_indexes \
            else settings.executors.cache_bytes // 2
        self._snapshots = Snapshots(process_session(index_cache, QUERY_NODE_METADATA_CACHE))

    def plan(self, target: QueryTarget, query: QueryRequest) -> list[SubPlan]:
        """The sub-plans of ``query`` (its first query vector), as ``search`` would run them."""
        snapshot, ref = self._resolve(target)
        single = query.model_copy(update={"vector": query.query_vectors[0]}) if query.vector \
            else query
        with lance_errors(f"query on '{ref.ref.qualified_name}'", ref.ref.database):
            return plan_query(snapshot, ref, single, self._group_size)

    def search(self, target: QueryTarget, query: QueryRequest) -> pa.Table:
        snapshot, ref = self._resolve(target)
        vectors = query.query_vectors
        if not query.is_multi_vector:
            return self._single(snapshot, ref, query)
        answers = []
        for index, vector in enumerate(vectors):
            answer = self._single(snapshot, ref, query.model_copy(update={"vector": vector}))
            column = pa.array([index] * answer.num_rows, pa.int32())
            field = pa.field("query_index", pa.int32(), nullable=False)  # as lancedb has it
            answers.append(answer.add_column(0, field, column))
        return pa.concat_tables(answers)

    def count(self, target: QueryTarget, predicate: str | None) -> int:
        snapshot, ref = self._resolve(target)
        if not predicate:
            with lance_errors(f"count_rows on '{target.ref.qualified_name}'", target.ref.database):
                return snapshot.row_count  # from the manifest: no executor, no data read
        plans = plan_count(snapshot, ref, predicate, self._group_size)
        return sum(self._run_all(plans, target, snapshot))

    def explain(self, target: QueryTarget, query: QueryRequest, verbose: bool) -> str:
        plans = self.plan(target, query)
        lines = [f"DistributedPlan: {len(plans)} sub-plans on {len(self._pool.names)} executors"]
        for plan in plans:
            owner = "query-node" if self._searched_here(plan) else self._pool.route(plan.partition)[0]
            detail = plan.index_segment or ",".join(map(str, plan.fragment_ids)) or "-"
            lines.append(f"  {plan.kind.value} [{detail}] -> {owner} k={plan.local_limit}")
        engine = self._local.explain(target, query, verbose)
        return "\n".join(lines) + "\nPer sub-plan engine plan (lance):\n" + engine

    def analyze(self, target: QueryTarget, query: QueryRequest) -> str:
        return self._local.analyze(target, query)

    def unanswered(self, timeout_s: float) -> list[str]:
        """Plan executors that cannot answer now: the query node is not ready while any is."""
        return self._pool.unanswered(timeout_s)

    def prewarm(self, tables: list[str]) -> None:
        """Load every bucket of ``tables`` ("database/table") into its owners' caches (and this
        process's, for a table small enough that its queries run here)."""
        for name in tables:
            database, _, table_id = name.partition("/")
            target = QueryTarget(TableRef.parse(database, table_id), None)
            snapshot, ref = self._resolve(target)
            plans = plan_count(snapshot, ref, None, self._group_size)
            by_owner: dict[str, list[SubPlan]] = {}
            for plan in plans:
                for owner in hashing.owners(plan.partition, self._pool.names, self._pool.replicas):
                    by_owner.setdefault(owner, []).append(plan)
            self._broadcast({owner: self._pool.handle(owner).prewarm.remote(owned)
                             for owner, owned in by_owner.items()}, target)
            if self._runs_here(plans, snapshot):
                with lance_errors(f"prewarm of '{target.ref.qualified_name}'", target.ref.database):
                    self._here().prewarm(plans)

    def prewarm_index(self, target: QueryTarget, name: str) -> None:
        """Load index ``name`` into every executor's lance caches (and this process's, for a
        small table): any executor may run a sub-plan that reads it (each owns some of the
        table's partitions and takes the others' on fail-over), and lance loads an index whole."""
        snapshot, ref = self._resolve(target)
        self._broadcast({owner: self._pool.handle(owner).prewarm_index.remote(ref, name)
                         for owner in self._pool.names}, target)
        if snapshot.row_count <= IN_PROCESS_MAX_ROWS or self._searches_here(snapshot.dataset.uri):
            with lance_errors(f"prewarm of index '{name}' on '{target.ref.qualified_name}'",
                              target.ref.database):
                self._here().prewarm_index(ref, name)

    def _broadcast(self, calls: dict[str, Any], target: QueryTarget) -> None:
        """Wait for every executor's answer: its error as the query node would raise it, and an
        executor that is gone or silent as a transient fault (the client retries)."""
        if not calls:  # an empty table has no buckets to load
            return
        try:
            ray.get(list(calls.values()), timeout=SUBPLAN_TIMEOUT_S)
        except RayTaskError as exc:
            raise _cause(exc, target) from None
        except _EXECUTOR_FAULTS as exc:
            raise Unavailable(f"a plan executor did not answer ({type(exc).__name__}); "
                              "try again") from None

    def _resolve(self, target: QueryTarget) -> tuple[Snapshot, DatasetRef]:
        """The version to read and its snapshot: no storage request on a warm, unchanged table."""
        location = self._connections.location(target.ref.database)
        with lance_errors(f"table '{target.ref.qualified_name}'", target.ref.database):
            if target.version is None:
                opened = self._connections.latest(target.ref)
                snapshot = self._snapshots.get(opened, location.storage_options)
            else:  # time travel: rare, opened for this query alone
                snapshot = Snapshot.of(self._connections.table(target.ref, target.version).to_lance())
        dataset = snapshot.dataset
        return snapshot, DatasetRef(target.ref, dataset.uri, dataset.version, snapshot.fingerprint)

    def _single(self, snapshot: Snapshot, ref: DatasetRef, query: QueryRequest) -> pa.Table:
        with lance_errors(f"query on '{ref.ref.qualified_name}'", ref.ref.database):
            plans = plan_query(snapshot, ref, query, self._group_size)
        if not plans:  # an empty table: nothing to distribute
            return self._local.search(QueryTarget(ref.ref, ref.version), query)
        results = self._run_all(plans, QueryTarget(ref.ref, ref.version), snapshot)
        if plans[0].kind is SubPlanKind.WHOLE_QUERY:
            return results[0]
        if plans[0].kind is SubPlanKind.SCAN:
            return merge_scan(results, query)
        return merge_nearest(results, query)

    def _run_all(self, plans: Sequence[SubPlan], target: QueryTarget, snapshot: Snapshot) -> list[Any]:
        """Run every sub-plan: one batched call per executor, each plan failing over alone.

        A query that is one small sub-plan runs here instead, and so do index searches on a
        local disk (``_searches_here``); so does a sub-plan whose executors have all stopped
        answering (or failed it twice each): the query node is the last resort.
        """
        METRICS.observe("subplans_per_query", len(plans))
        if self._runs_here(plans, snapshot):
            return self._run_here(plans[:1], target)
        routes = [self._pool.route(plan.partition) for plan in plans]
        tried: list[list[str]] = [[] for _ in plans]  # the executors each sub-plan was sent to
        results: list[Any] = [None] * len(plans)
        todo = list(range(len(plans)))
        while todo:
            suspects = self._current_suspects()
            batches: dict[str, list[int]] = {}
            here = []
            for i in todo:
                if self._searched_here(plans[i]) or len(tried[i]) >= 2 * len(routes[i]) \
                        or suspects.issuperset(routes[i]):
                    here.append(i)
                    continue
                # The route's order, but executors that stopped answering (now or in an earlier
                # query) and those this sub-plan already tried go last.
                name = min(routes[i], key=lambda n, i=i: (tried[i].count(n), n in suspects))
                tried[i].append(name)
                batches.setdefault(name, []).append(i)
            sent = time.monotonic()
            calls = {
                name: self._pool.handle(name).execute_batch.remote([plans[i] for i in members])
                for name, members in batches.items()
            }
            if here:  # while the executors work
                answers = self._run_here([plans[i] for i in here], target)
                for i, answer in zip(here, answers, strict=True):
                    results[i] = answer
            stopped = self._await(calls)  # now suspects, with any other executor that stopped
            todo = []
            for name, call in calls.items():
                members = batches[name]
                try:
                    if name in stopped:
                        raise GetTimeoutError(f"{name} stopped answering")
                    answers = ray.get(call, timeout=0)
                    METRICS.observe("call_seconds", time.monotonic() - sent, outcome="ok")
                except _EXECUTOR_FAULTS as exc:
                    METRICS.observe("call_seconds", time.monotonic() - sent, outcome="failed")
                    # Any fault: the next call looks the actor up again rather than reuse this handle.
                    self._pool.forget(name)
                    self._mark_silent(name)
                    METRICS.inc("failovers_total", len(members))
                    logger.warning("%d sub-plans failed over from %s: %s", len(members), name, exc)
                    todo.extend(members)
                    continue
                except RayTaskError as exc:
                    METRICS.observe("call_seconds", time.monotonic() - sent, outcome="error")
                    raise _cause(exc, target) from None
                for i, answer in zip(members, answers, strict=True):
                    results[i] = answer
        return results

    def _run_here(self, plans: Sequence[SubPlan], target: QueryTarget) -> list[Any]:
        """Run ``plans`` in this process (no executor hop), side by side as an executor runs a
        batch, with a small cache of its own."""
        with lance_errors(f"query on '{target.ref.qualified_name}'", target.ref.database):
            return self._here().execute_batch(list(plans))

    def _searches_here(self, uri: str) -> bool:
        """Whether index searches of the table at ``uri`` run here (ExecutorSettings)."""
        return not on_object_store(uri) and not self._settings.executors.search_local_disk_indexes

    def _searched_here(self, plan: SubPlan) -> bool:
        return plan.kind is SubPlanKind.INDEX_SEGMENT and self._searches_here(plan.dataset.uri)

    def _here(self) -> PlanExecutor:
        """The executor inside this process, for small tables' queries (built on first use)."""
        with self._in_process_lock:
            if self._in_process is None:
                plain = self._settings.to_plain()
                plain["executors"].update(cache_bytes=IN_PROCESS_CACHE_BYTES, spill_dir=None)
                self._in_process = PlanExecutor("query-node", plain)
            return self._in_process

    @staticmethod
    def _runs_here(plans: Sequence[SubPlan], snapshot: Snapshot) -> bool:
        """A query that is one flat, scan or count sub-plan over a small table runs here."""
        return len(plans) == 1 and plans[0].kind in _IN_PROCESS_KINDS \
            and snapshot.row_count <= IN_PROCESS_MAX_ROWS

    def _mark_silent(self, name: str) -> None:
        """``name`` stopped answering: tried last until it answers a ping again."""
        with self._suspects_lock:
            if name not in self._suspects:
                logger.warning("%s stopped answering: tried last until it answers a ping", name)
                self._suspects[name] = _Suspect(since=time.monotonic())

    def _current_suspects(self) -> set[str]:
        """Executors to try last: they stopped answering and have not answered a ping since.

        A new ping (none pending) is waited for briefly (``FIRST_PING_WAIT_S``): an executor
        marked silent while a query waited on it, and back since, is not avoided by the next query. A ping
        unanswered for the whole fail-over deadline is sent again through a fresh handle: a call
        sent while an actor restarts can be lost, and a lost ping must not keep a restarted
        executor out of its partitions for good.
        """
        now = time.monotonic()
        with self._suspects_lock:
            for name, suspect in list(self._suspects.items()):
                answered = None if suspect.ping is None else _answered(suspect.ping, 0)
                if answered is False:  # dead or restarting: ask again, through a new handle
                    self._pool.forget(name)
                    suspect.ping = None
                    logger.info("%s: ping failed after %.1fs silent", name, now - suspect.since)
                elif answered is None and (suspect.ping is None or now - suspect.sent_at > self._failover_s):
                    if suspect.ping is not None:
                        self._pool.forget(name)
                        logger.warning("%s has not answered a ping for %.1fs (silent for %.1fs): "
                                       "asking again through a new handle", name, now - suspect.sent_at,
                                       now - suspect.since)
                    unasked = suspect.ping is None  # not a ping given up on: it may be back already
                    suspect.ping, suspect.sent_at = self._pool.handle(name).ready.remote(), now
                    if unasked:
                        answered = _answered(suspect.ping, FIRST_PING_WAIT_S)
                if answered:
                    del self._suspects[name]
                    logger.info("%s answers again after %.1fs", name, now - suspect.since)
            return set(self._suspects)

    def _await(self, calls: dict[str, Any]) -> set[str]:
        """Wait for every executor's answer together; give up on those that stop answering.

        A call still running after half the fail-over deadline gets its executor pinged:
        a busy executor answers the ping (it serves calls concurrently) and is waited for;
        one that does not answer within the other half (its node lost, its process frozen)
        is given up on, so its sub-plans fail over in seconds rather than at the timeout.
        """
        pending = dict(calls)
        stopped: set[str] = set()
        deadline = time.monotonic() + SUBPLAN_TIMEOUT_S
        while pending:
            ready, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=self._probe_s)
            pending = {name: call for name, call in pending.items() if call not in ready}
            if not pending:
                break
            if time.monotonic() > deadline:
                return stopped | set(pending)
            # Every executor is pinged, not only the silent ones: executors fail together when
            # their node is lost, and the next round must not pick one that is gone too.
            silent = self._silent({name: self._pool.handle(name).ready.remote()
                                   for name in self._pool.names})
            for name in silent:
                self._mark_silent(name)
            for name in silent & pending.keys():
                stopped.add(name)
                del pending[name]
        return stopped

    def _silent(self, pings: dict[str, Any]) -> set[str]:
        """The executors whose ping is unanswered after half the fail-over deadline, or failed."""
        ray.wait(list(pings.values()), num_returns=len(pings), timeout=self._probe_s)
        return {name for name, ping in pings.items() if not _answered(ping, 0)}


@dataclass
class _Suspect:
    """An executor that stopped answering, and the ping that clears it once answered."""

    since: float  # when it stopped answering (for the log)
    ping: Any = None  # None: none sent since it stopped answering or since its ping failed
    sent_at: float = 0.0  # when ``ping`` was sent


def _answered(ping: Any, timeout_s: float) -> bool | None:
    """Whether ``ping`` was answered within ``timeout_s``: True, False if the call failed, None if
    not yet."""
    if not ray.wait([ping], timeout=timeout_s)[0]:
        return None
    try:
        ray.get(ping, timeout=0)
    except _EXECUTOR_FAULTS:
        return False
    return True


def _cause(exc: RayTaskError, target: QueryTarget) -> LanceDBRayError:
    """The error a sub-plan raised on its executor, as the query node would have raised it."""
    cause = exc.cause if isinstance(exc.cause, BaseException) else exc
    return translate(cause, f"query on '{target.ref.qualified_name}'", target.ref.database)
