"""The Lance agent's loop: events in, durable jobs out, indexers run, checkpoints last.

Per table: events are debounced; the table is then read and :mod:`decide`
says what it needs; each need becomes a job recorded as ``pending`` in the job
store; only then is the bus checkpoint moved past those events. Jobs run one
at a time per table (a few tables at once) and are marked ``succeeded`` or,
after the configured attempts, ``failed``. On start, every pending or running
record is resumed, so killing the agent at any point loses nothing; jobs being
idempotent (:mod:`execute`), nothing is applied twice either.

A reconciler walks every table of every database on a timer and treats each
one as if an event had arrived, so lost events, or writes by outside writers
that publish none, still get indexed.

Ray-free: :mod:`deployment` runs it inside a Serve replica; tests run it
directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from lancedb_ray.agent.decide import decide
from lancedb_ray.agent.execute import JobRunner, Outcome
from lancedb_ray.agent.jobs import Job, JobKind, JobState
from lancedb_ray.agent.metrics import METRICS
from lancedb_ray.agent.store import JobStore, expired, open_job_store, root_location
from lancedb_ray.agent.tables import TableReader, TableState, list_databases, list_tables
from lancedb_ray.agent.tracking import CheckpointTracker, Debouncer
from lancedb_ray.errors import JobStalled, LanceDBRayError
from lancedb_ray.events.bus import Delivery, EventConsumer, default_group, make_consumer
from lancedb_ray.settings import Settings
from lancedb_ray.storage.catalog import StorageCatalog
from lancedb_ray.storage.connections import Connections, registry_key
from lancedb_ray.storage.lance_errors import clean_message
from lancedb_ray.storage.renames import Renamer
from lancedb_ray.storage.uploads import TableUploads
from lancedb_ray.storage.uploads import expire as expire_uploads
from lancedb_ray.storage.versions import announce
from lancedb_ray.types import TableRef

_LOG = logging.getLogger(__name__)
_POLL_BATCH = 500
_POLL_TIMEOUT_S = 0.5
_BUS_RETRY_S = 2.0
_INSPECT_RETRY_S = 5.0
_INSPECT_ATTEMPTS = 5  # reads of a table before its events are let go (75 s of retries)
_RETRY_CAP_S = 300.0


def _key(database: str, table: str) -> str:
    return f"{database}/{table}"


def _recently_written(state: TableState, quiet_s: float) -> bool:
    """Whether the table changed within the debounce interval: the reconciler debounces too."""
    latest = state.latest_version_time
    return latest is not None and time.time() - latest < quiet_s


class LanceAgent:
    def __init__(
        self,
        settings: Settings,
        *,
        store: JobStore | None = None,
        consumer_factory: Callable[[], EventConsumer] | None = None,
        runner: JobRunner | None = None,
        indexers: Any = None,
    ) -> None:
        self._settings = settings
        self._agent = settings.agent
        self._store = store or open_job_store(settings)
        self._catalog = StorageCatalog(settings.storage)
        self._connections = Connections(self._catalog, 0.0)
        self._reader = TableReader(self._connections)
        self._renamer = Renamer()
        self._runner = runner or JobRunner(settings, self._reader, indexers)
        group = default_group(settings.events)
        self._consumer_factory = consumer_factory or (lambda: make_consumer(settings.events, group))
        self._debouncer = Debouncer(self._agent.debounce_seconds, self._agent.debounce_max_seconds)
        self._tracker = CheckpointTracker()
        self._examining: set[str] = set()
        self._read_failures: dict[str, int] = {}
        self._unindexed: dict[str, int] = {}  # "database/table" -> rows no index covers (for status)
        self._records: dict[str, Job] = {}  # every record in the store, as last written
        self._queues: dict[str, deque[Job]] = {}
        self._draining: set[str] = set()
        self._retrying: set[str] = set()  # ids of pending jobs waiting out a retry delay
        # (table, kind, index) -> table version at which a job changed nothing: not
        # planned again until the table moves, so an unfixable need cannot loop.
        self._settled: dict[tuple[str, str, str | None], int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._submitting = asyncio.Lock()
        self._slots: asyncio.Semaphore | None = None
        self.reconciled = 0  # completed reconciler passes, for tests and status

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Resume recorded jobs, then consume, schedule and reconcile until ``stop`` is set."""
        self._slots = asyncio.Semaphore(max(1, self._agent.max_concurrent_jobs))
        while not await asyncio.to_thread(self._store.try_lock):
            # Another agent (an old replica during a redeploy) holds the store: stand by.
            if stop.is_set():
                return
            await asyncio.sleep(1.0)
        try:
            await self._serve(stop)
        finally:
            self._store.unlock()

    async def _serve(self, stop: asyncio.Event) -> None:
        await self._resume()
        consumer = self._consumer_factory()
        loops = [
            asyncio.create_task(self._consume(consumer), name="agent-consume"),
            asyncio.create_task(self._schedule(), name="agent-schedule"),
            asyncio.create_task(self._reconcile_forever(), name="agent-reconcile"),
        ]
        try:
            stopped = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopped, *loops], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopped and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in [*loops, *self._tasks]:
                task.cancel()
            await asyncio.gather(*loops, *self._tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await consumer.close()

    def status(self) -> dict[str, Any]:
        counts = {state.value: 0 for state in JobState}
        for job in self._records.values():
            counts[job.state.value] += 1
        return {
            "jobs": counts,
            "events_outstanding": self._tracker.outstanding,
            "tables_waiting": len(self._debouncer),
            "reconciler_passes": self.reconciled,
            "unindexed_rows": {key: rows for key, rows in sorted(self._unindexed.items()) if rows},
        }

    async def submit_index(self, database: str, table: str, request: dict[str, Any]) -> str:
        """Record a client's create_index as a job ahead of the table's other jobs; its id.

        A retried request (same table, name and body) while that job is active gets the same job,
        so a client's retry never starts a second build.
        """
        name = request.get("name") or f"{request['column']}_idx"
        key = _key(database, table)
        async with self._submitting:  # a retry arriving meanwhile sees this job recorded
            for job in self._records.values():
                if (job.kind is JobKind.CREATE_INDEX and job.key == key and job.state.active
                        and job.request == request):
                    return job.id
            version = await asyncio.to_thread(self._safe_version, database, table)
            job = Job.new(database, table, JobKind.CREATE_INDEX, version, trigger="request", index=name,
                          request=request)
            await self._put(job)
        self._enqueue(job, first=True)
        return job.id

    def job_record(self, job_id: str) -> Job | None:
        return self._records.get(job_id)

    def pending_indexes(self, database: str, table: str) -> list[str]:
        """Names of the indexes active create_index jobs on the table build (not yet committed)."""
        key = _key(database, table)
        return sorted({job.index for job in self._records.values() if job.kind is JobKind.CREATE_INDEX
                       and job.key == key and job.state.active and job.index is not None})

    def _safe_version(self, database: str, table: str) -> int:
        state = self._safe_inspect(database, table)
        return state.version if state is not None else 0

    async def _resume(self) -> None:
        records = await asyncio.to_thread(self._store.list)
        queued = {job.id for queue in self._queues.values() for job in queue}  # submitted meanwhile
        self._records = {**{job.id: job for job in records}, **self._records}
        for job in sorted(records, key=lambda j: (j.created_at, j.id)):
            if not job.state.active or job.id in queued:
                continue
            if job.state is JobState.RUNNING and job.attempts >= self._agent.max_attempts:
                await self._put(job.attempt_failed("interrupted on every attempt", final=True))
                continue
            _LOG.info("resuming %s job %s on %s (%s)", job.kind.value, job.id, job.key, job.state.value)
            self._enqueue(job)
        self._gauge_jobs()

    # -- events ----------------------------------------------------------------------------

    async def _consume(self, consumer: EventConsumer) -> None:
        while True:
            try:
                deliveries = await consumer.poll(_POLL_BATCH, _POLL_TIMEOUT_S)
                if deliveries:
                    self._received(deliveries)
                await self._checkpoint(consumer)
            except asyncio.CancelledError:
                raise
            except Exception:
                _LOG.exception("the event bus failed; retrying in %.0fs", _BUS_RETRY_S)
                await asyncio.sleep(_BUS_RETRY_S)

    def _received(self, deliveries: Sequence[Delivery]) -> None:
        now = time.monotonic()
        for delivery in deliveries:
            self._tracker.add(delivery)
            event = delivery.event
            self._debouncer.touch(_key(event.database, event.table), now, delivery)
        METRICS.inc("events_consumed_total", len(deliveries))
        METRICS.set("events_outstanding", self._tracker.outstanding)
        self._wake.set()

    async def _checkpoint(self, consumer: EventConsumer) -> None:
        ready = self._tracker.ready()
        if ready:
            try:
                await consumer.commit(ready)
            except Exception:
                # Only later redelivery follows (the next commit covers these positions too).
                _LOG.warning("checkpointing %d events failed", len(ready), exc_info=True)
            METRICS.set("events_outstanding", self._tracker.outstanding)

    async def _schedule(self) -> None:
        while True:
            now = time.monotonic()
            for key, deliveries in self._debouncer.due(now, busy=self._examining):
                self._spawn(self._examine(key, deliveries, "event"))
            next_due = self._debouncer.next_due()
            timeout = 1.0 if next_due is None else min(1.0, max(0.01, next_due - now))
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    # -- decisions -------------------------------------------------------------------------

    async def _examine(self, key: str, deliveries: list[Delivery], trigger: str) -> None:
        """Read the table, record a job per need, then release its events to the checkpoint."""
        database, table = key.split("/", 1)
        self._examining.add(key)
        try:
            try:
                state = await asyncio.to_thread(self._reader.inspect, database, table)
            except Exception as exc:
                self._try_later(key, deliveries, f"cannot read {key}", exc)
                return
            if state is None:
                self._unindexed.pop(key, None)
                METRICS.set("unindexed_rows", 0, database=database, table=table)
            elif trigger == "reconcile" and _recently_written(state, self._agent.debounce_seconds):
                self._observe(state)  # its event is on the way, or the next pass will do
            else:
                self._observe(state)
                for need in decide(state, self._agent, time.time()):
                    settled = (key, need.kind.value, need.index)
                    if self._settled.get(settled) == state.version or self._pending(key, need):
                        continue
                    job = Job.new(database, table, need.kind, state.version, trigger=trigger,
                                  index=need.index, detail=need.reason)
                    try:
                        await self._put(job)  # durable before the events behind it are checkpointed
                    except Exception as exc:  # the next look records it (jobs recorded so far are pending)
                        self._try_later(key, deliveries, f"cannot record a job for {key}", exc)
                        return
                    self._enqueue(job)
            self._read_failures.pop(key, None)
            self._tracker.handled(deliveries)
        finally:
            self._examining.discard(key)

    def _try_later(self, key: str, deliveries: list[Delivery], problem: str, exc: Exception) -> None:
        """Look at a table that could not be read (or its job not recorded) again later; in the end
        let its events go.

        Its events hold back the checkpoint of every later event, so they are not
        kept forever: once released, the reconciler still looks at the table.
        """
        failures = self._read_failures.get(key, 0) + 1
        if failures >= _INSPECT_ATTEMPTS or not deliveries:
            self._read_failures.pop(key, None)
            _LOG.error("%s (%d attempts), leaving it to the reconciler: %s", problem, failures, exc)
            self._tracker.handled(deliveries)
            return
        self._read_failures[key] = failures
        delay = _INSPECT_RETRY_S * 2 ** (failures - 1)
        _LOG.warning("%s, trying again in %.0fs: %s", problem, delay, exc)
        self._debouncer.defer(key, deliveries, time.monotonic(), delay)

    def _pending(self, key: str, need: Any) -> bool:
        return any(
            job.state is JobState.PENDING and job.kind is need.kind and job.index == need.index
            for job in self._queues.get(key, ())
        ) or any(
            (job := self._records[job_id]).key == key and job.kind is need.kind
            and job.index == need.index
            for job_id in self._retrying
        )

    def _observe(self, state: TableState) -> None:
        self._unindexed[f"{state.database}/{state.table}"] = state.unindexed_rows
        METRICS.set("unindexed_rows", state.unindexed_rows, database=state.database, table=state.table)

    # -- jobs ------------------------------------------------------------------------------

    def _enqueue(self, job: Job, first: bool = False) -> None:
        queue = self._queues.setdefault(job.key, deque())
        if first:
            queue.appendleft(job)
        else:
            queue.append(job)
        if job.key not in self._draining:
            self._draining.add(job.key)
            self._spawn(self._drain(job.key))

    async def _drain(self, key: str) -> None:
        """Run ``key``'s jobs one after another; tables run side by side up to the limit."""
        assert self._slots is not None
        try:
            queue = self._queues[key]
            while queue:
                async with self._slots:
                    if not queue:
                        break
                    await self._attempt(queue.popleft())
        finally:
            self._draining.discard(key)
            if not self._queues.get(key):
                self._queues.pop(key, None)

    def _announce(self, job: Job, version: int) -> None:
        """Tell the query nodes of the commit now, not a consistency interval later."""
        try:
            key = registry_key(self._catalog, TableRef.parse(job.database, job.table))
        except LanceDBRayError:
            return  # a name the service could not have served
        announce(self._settings.ray.namespace, key, version)

    async def _attempt(self, job: Job) -> None:
        job = job.started()
        await self._put(job)
        began = time.monotonic()
        try:
            outcome, job = await self._run_reporting(job)
        except Exception as exc:
            METRICS.observe("job_seconds", time.monotonic() - began, kind=job.kind.value)
            await self._failed(job, exc)
            return
        METRICS.observe("job_seconds", time.monotonic() - began, kind=job.kind.value)
        if outcome.acted and outcome.result_version is not None:
            await asyncio.to_thread(self._announce, job, outcome.result_version)
        if outcome.after is not None:
            self._observe(outcome.after)
            if not outcome.acted:
                self._settled[(job.key, job.kind.value, job.index)] = outcome.after.version
        done = job.succeeded(outcome.result_version, outcome.detail)
        await self._put(done)
        METRICS.inc("jobs_finished_total", kind=job.kind.value, state=done.state.value)
        _LOG.info("%s job %s on %s: %s", job.kind.value, job.id, job.key, outcome.detail)

    async def _run_reporting(self, job: Job) -> tuple[Outcome, Job]:
        """Run ``job`` on a thread; each change of its step or waiting reason is saved as it comes.

        The saves happen here, one after another, so the final record is always the last one.
        """
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        latest: list[tuple[str, float | None, str | None]] = []

        def report(step: str, fraction: float | None, waiting: str | None) -> None:
            progress = (step, None if fraction is None else round(fraction, 2), waiting)
            if not latest or latest[-1] != progress:
                latest.append(progress)
                loop.call_soon_threadsafe(changed.set)

        work = asyncio.ensure_future(asyncio.to_thread(self._runner.run, job, report))
        while not work.done():
            wake = asyncio.ensure_future(changed.wait())
            await asyncio.wait([work, wake], return_when=asyncio.FIRST_COMPLETED)
            wake.cancel()
            if changed.is_set():
                changed.clear()
                job = job.progressed(*latest[-1])
                await self._put(job)
        if latest:  # the last report, had the work finished before it was saved
            job = job.progressed(*latest[-1])
        return work.result(), job

    async def _failed(self, job: Job, exc: BaseException) -> None:
        cause = exc.__cause__ or exc
        if isinstance(cause, JobStalled):
            METRICS.inc("jobs_stalled_total", kind=job.kind.value)
        name = cause.name if isinstance(cause, LanceDBRayError) else type(cause).__name__
        error = f"{name}: {clean_message(cause)}"[:2000]
        # Bad input (a 4xx) fails the same way every time: not retried.
        permanent = isinstance(cause, LanceDBRayError) and cause.status_code < 500
        final = permanent or job.attempts >= self._agent.max_attempts
        failed = job.attempt_failed(error, final)
        await self._put(failed)
        _LOG.warning("%s job %s on %s failed (attempt %d): %s", job.kind.value, job.id, job.key,
                     job.attempts, error)
        if final:
            METRICS.inc("jobs_finished_total", kind=job.kind.value, state=failed.state.value)
            state = await asyncio.to_thread(self._safe_inspect, job.database, job.table)
            if state is not None:
                self._settled[(job.key, job.kind.value, job.index)] = state.version
            return
        delay = min(_RETRY_CAP_S, self._agent.retry_seconds * 2 ** (job.attempts - 1))
        self._retrying.add(job.id)
        self._spawn(self._retry_later(failed, delay))

    async def _retry_later(self, job: Job, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            self._retrying.discard(job.id)
        self._enqueue(self._records.get(job.id, job))

    def _safe_inspect(self, database: str, table: str) -> TableState | None:
        try:
            return self._reader.inspect(database, table)
        except Exception:
            return None

    async def _put(self, job: Job) -> None:
        await asyncio.to_thread(self._store.put, job)
        self._records[job.id] = job
        self._gauge_jobs()

    def _gauge_jobs(self) -> None:
        counts = {state: 0 for state in JobState}
        for job in self._records.values():
            counts[job.state] += 1
        for state, count in counts.items():
            METRICS.set("jobs", count, state=state.value)
        METRICS.set("jobs_waiting", sum(1 for job in self._records.values()
                                        if job.state is JobState.RUNNING and job.waiting))

    # -- reconciler ------------------------------------------------------------------------

    async def _reconcile_forever(self) -> None:
        interval = max(0.1, self._agent.reconcile_interval_seconds)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                _LOG.exception("reconciler pass failed")

    async def reconcile(self) -> None:
        """Look at every table once, as if an event had arrived for each."""
        began = time.monotonic()
        tables = await asyncio.to_thread(self._all_tables)
        for key in tables:
            if (key in self._debouncer or key in self._examining or key in self._draining
                    or self._queues.get(key)):
                continue  # already on its way (a job of it running: its outcome is seen anyway)
            await self._examine(key, [], "reconcile")
        await asyncio.to_thread(self.expire_uploads, tables)
        await self._prune()
        self.reconciled += 1
        METRICS.observe("reconcile_seconds", time.monotonic() - began)

    def _all_tables(self) -> list[str]:
        keys = []
        root = root_location(self._settings.storage)
        for database in list_databases(self._settings.storage, root):
            try:  # a rename abandoned by a crashed query node: finish or undo it first
                self._renamer.sweep(self._connections.location(database))
            except Exception as exc:
                _LOG.warning("reconciler cannot recover the renames of %s: %s", database, exc)
            try:
                keys += [_key(database, table) for table in list_tables(self._connections, database)]
            except Exception as exc:
                _LOG.warning("reconciler cannot list the tables of %s: %s", database, exc)
        return keys

    def expire_uploads(self, keys: list[str], now: float | None = None) -> None:
        """Clean up the multipart uploads of these tables past their expiry at ``now`` (default:
        the clock), as every reconciler pass does (``storage.uploads.expire``)."""
        now = time.time() if now is None else now
        for key in keys:
            database, table = key.split("/", 1)
            try:
                ref = TableRef.parse(database, table)
                location = self._connections.location(database)
                # A listing first: most tables have no uploads and need not be opened.
                uri = self._connections.table(ref).uri if ref.namespace else location.table_uri(table)
                uploads = TableUploads(location, uri)
                if uploads.upload_ids():
                    expire_uploads(uploads, self._connections.table(ref).to_lance(), now)
            except Exception as exc:  # the next pass tries again
                _LOG.warning("cannot expire the uploads of %s: %s", key, exc)

    async def _prune(self) -> None:
        old = expired(self._records.values(), self._agent.job_retention_seconds)
        if old:
            await asyncio.to_thread(self._store.delete, old)
            for job_id in old:
                self._records.pop(job_id, None)
            self._gauge_jobs()

    # -- helpers ---------------------------------------------------------------------------

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _LOG.error("agent task failed", exc_info=task.exception())
