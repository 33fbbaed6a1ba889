"""The agent's decisions: what a table needs, from its current state alone.

Pure functions of a :class:`TableState` and the agent settings, so that they
are tested without storage or Ray, and so that the same rule that enqueues a
job is asked again right before the job runs: a job whose work is already
done (by an earlier, interrupted attempt) finds nothing to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from lancedb_ray.agent.jobs import KIND_ORDER, JobKind
from lancedb_ray.agent.tables import IndexState, TableState
from lancedb_ray.settings import AgentSettings

DELETED_FRACTION = 0.1  # a fragment with this share of rows deleted is worth rewriting


@dataclass(frozen=True)
class Need:
    kind: JobKind
    reason: str
    index: str | None = None  # the vector index to retrain


def decide(state: TableState, settings: AgentSettings, now: float) -> list[Need]:
    """Everything ``state`` calls for, in the order the jobs should run."""
    if not settings.maintains(state.database):
        return []
    needs = [*_compaction(state, settings), *_retraining(state, settings), *_indexing(state, settings),
             *_cleanup(state, settings, now)]
    return sorted(needs, key=lambda need: KIND_ORDER.index(need.kind))


def still_needed(state: TableState, settings: AgentSettings, kind: JobKind, index: str | None,
                 now: float) -> Need | None:
    """The need behind a job of ``kind`` (and ``index``), if the table still has it."""
    for need in decide(state, settings, now):
        if need.kind is kind and need.index == index:
            return need
    return None


def _compaction(state: TableState, settings: AgentSettings) -> list[Need]:
    candidates = sum(
        1
        for rows, deleted in zip(state.fragment_rows, state.fragment_deleted, strict=True)
        if rows < settings.small_fragment_rows or (rows and deleted / rows >= DELETED_FRACTION)
    )
    if candidates >= max(2, settings.compact_min_fragments):
        return [Need(JobKind.COMPACT, f"{candidates} small or deletion-heavy fragments")]
    return []


def untrained_share(index: IndexState) -> float:
    """The share of the rows an index should cover that its training never saw."""
    total = index.num_indexed_rows + index.num_unindexed_rows
    if total <= 0:
        return 0.0
    if index.trained_rows is None:
        return index.num_unindexed_rows / total
    return max(0, total - index.trained_rows) / total


def _retraining(state: TableState, settings: AgentSettings) -> list[Need]:
    needs = []
    for index in state.indices:
        if not index.is_vector or state.num_rows < settings.min_rows_for_vector_index:
            continue
        share = untrained_share(index)
        if share > settings.retrain_unindexed_fraction:
            needs.append(Need(JobKind.RETRAIN, f"{share:.0%} of rows unseen by training", index.name))
    return needs


def _indexing(state: TableState, settings: AgentSettings) -> list[Need]:
    lagging = [index for index in state.indices
               if index.num_unindexed_rows > 0 and not _untrainable(index, state, settings)]
    if not lagging:
        return []
    described = ", ".join(f"{i.name}: {i.num_unindexed_rows}" for i in lagging)
    return [Need(JobKind.OPTIMIZE_INDICES, f"unindexed rows ({described})")]


def _untrainable(index: IndexState, state: TableState, settings: AgentSettings) -> bool:
    """A vector index lance wrote without training (too few rows), on a table still that small:
    optimising it indexes nothing and would commit a version on every look. Past the threshold,
    ``_retraining`` builds it properly."""
    too_small = state.num_rows < settings.min_rows_for_vector_index
    return index.is_vector and index.num_indexed_rows == 0 and too_small


def _cleanup(state: TableState, settings: AgentSettings, now: float) -> list[Need]:
    oldest = state.oldest_version_time
    if state.num_versions > 1 and oldest is not None:
        age = now - oldest
        if age > settings.version_retention_seconds:
            return [Need(JobKind.CLEANUP, f"{state.num_versions} versions, oldest {age:.0f}s old")]
    return []


def index_segments(state: TableState, settings: AgentSettings) -> int:
    """How many segments a (re)build of a vector index on this table should have."""
    return settings.index_segments if state.num_rows >= settings.segment_min_rows else 1
