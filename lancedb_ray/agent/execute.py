"""Running one job: look at the table again, then act only if there is still work.

Jobs are at-least-once: an attempt can be interrupted after its Lance commit
and before its record says so. Every attempt therefore starts from the
table's current state with the same rule that created the job
(:func:`decide.still_needed`): indices that already cover the table are not
optimised again, a retrained index is not retrained again, compaction
re-plans from the fragments as they are. A repeated attempt is a no-op.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from lancedb_ray.agent.decide import Need, index_segments, still_needed
from lancedb_ray.agent.jobs import Job, JobKind
from lancedb_ray.agent.tables import TableReader, TableState
from lancedb_ray.settings import Settings
from lancedb_ray.types import ProgressReport


@dataclass(frozen=True)
class Outcome:
    result_version: int | None  # the table's version after the job
    detail: str
    acted: bool  # False: the job found nothing to do, or nothing changed
    after: TableState | None  # the table once the job is done (None: it no longer exists)


class JobRunner:
    """Turns a job record into calls of the indexers (``lancedb_ray.indexers``)."""

    def __init__(self, settings: Settings, reader: TableReader, indexers: ModuleType | Any = None):
        self._settings = settings
        self._agent = settings.agent
        self._reader = reader
        self._indexers = indexers
        self._use_gpu: bool | None = settings.agent.use_gpu

    @property
    def indexers(self) -> Any:
        if self._indexers is None:
            from lancedb_ray import indexers

            self._indexers = indexers
        return self._indexers

    def run(self, job: Job, report: ProgressReport | None = None) -> Outcome:
        """Do ``job``; ``report(step, fraction, waiting)`` hears how it goes (see indexers' JobContext)."""
        state = self._reader.inspect(job.database, job.table)
        if state is None:
            return Outcome(None, "skipped: the table no longer exists", False, None)
        if job.kind is JobKind.CREATE_INDEX:  # asked for by a client: built even if one exists
            return self._create_index(job, state, report)
        need = still_needed(state, self._agent, job.kind, job.index, time.time())
        if need is None:
            return Outcome(state.version, f"no-op: nothing to do at version {state.version}",
                           False, state)
        detail = self._act(job, need, state, report)
        after = self._reader.inspect(job.database, job.table)
        version = after.version if after is not None else None
        return Outcome(version, detail, version != state.version, after)

    def _act(self, job: Job, need: Need, state: TableState, report: ProgressReport | None) -> str:
        ops = self.indexers
        location = self._reader.location(job.database)
        handle = ops.TableHandle(job.database, job.table, state.uri, dict(location.storage_options))
        ctx = ops.JobContext.from_settings(self._settings, report)
        if job.kind is JobKind.OPTIMIZE_INDICES:
            version = ops.optimize_indices(handle, ctx=ctx)
            return f"indexed new rows ({need.reason}) at version {version}"
        if job.kind is JobKind.RETRAIN:
            assert job.index is not None
            version = ops.retrain_vector_index(
                handle, job.index, num_segments=index_segments(state, self._agent),
                use_gpu=self._gpu(), gpu_wait_seconds=self._agent.gpu_wait_seconds, ctx=ctx,
            )
            return f"retrained {job.index} ({need.reason}) at version {version}"
        if job.kind is JobKind.COMPACT:
            version = ops.compact(
                handle,
                target_rows_per_fragment=self._agent.target_rows_per_fragment,
                parallelism=self._agent.compact_parallelism,
                ctx=ctx,
            )
            if version is None:
                return f"compaction found nothing to rewrite ({need.reason})"
            return f"compacted {need.reason} at version {version}"
        if job.kind is JobKind.CLEANUP:
            removed = ops.cleanup(handle, older_than_seconds=self._agent.version_retention_seconds,
                                  ctx=ctx)
            return f"cleaned up ({need.reason}): {removed}"
        raise ValueError(f"unknown job kind {job.kind}")

    def _create_index(self, job: Job, state: TableState, report: ProgressReport | None) -> Outcome:
        """A large vector index: trained once (on a GPU worker when there is one) and built in
        segments by the indexers; anything else: lancedb's own build, on a Ray task."""
        from lancedb_ray.agent.index_requests import build_requested_index, segmented_build_params

        assert job.request is not None
        earlier = self._committed_by_an_earlier_attempt(job, state)
        if earlier is not None:
            return Outcome(earlier, f"index '{job.index}' was committed by an earlier attempt "
                                    f"(at or before version {earlier})", True, state)
        ops = self.indexers
        ctx = ops.JobContext.from_settings(self._settings, report)
        params = segmented_build_params(job.request)
        if params is not None and state.num_rows >= self._agent.segment_min_rows:
            location = self._reader.location(job.database)
            handle = ops.TableHandle(job.database, job.table, state.uri, dict(location.storage_options))
            build = ops.run_vector_build(
                handle, job.request["column"], params.pop("index_type"), params,
                num_segments=index_segments(state, self._agent), use_gpu=self._gpu(), name=job.index,
                replace=job.request.get("replace", True), gpu_wait_seconds=self._agent.gpu_wait_seconds,
                ctx=ctx)
            version = build.version
            trained = "" if build.model is None else (
                f", trained on {build.model.device} (node {build.model.node_id})")
            detail = f"built index '{job.index}' in {max(1, len(build.segments))} segments{trained}"
        else:
            version = build_requested_index(self._settings.storage, job.database, job.table, job.request,
                                            ctx)
            detail = f"built index '{job.index}'"
        after = self._reader.inspect(job.database, job.table)
        return Outcome(version, f"{detail} at version {version}", True, after)

    def _committed_by_an_earlier_attempt(self, job: Job, state: TableState) -> int | None:
        """The table's version if an earlier attempt of ``job`` already committed its index.

        An attempt can fail after its commit landed (reading the table back, saving the job's
        record); building again on the retry would commit the same index a second time. The
        index counts as this job's when every segment of it was created after the job was.
        """
        if job.attempts <= 1 or job.index is None:
            return None
        dataset = self._reader.dataset(job.database, job.table)
        for index in dataset.describe_indices() if dataset is not None else []:
            if index.name == job.index and index.segments and all(
                    segment.created_at.timestamp() >= job.created_at for segment in index.segments):
                return state.version
        return None

    def _gpu(self) -> bool:
        """The setting; else whether the cluster has GPUs now (asked each time: the cluster changes)
        or a GPU group the autoscaler can start (``agent.gpu_group``)."""
        if self._use_gpu is None:
            return self._agent.gpu_group or bool(self.indexers.cluster_has_gpus())
        return self._use_gpu
