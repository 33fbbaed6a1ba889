"""The agent's job record: what one table needs done, and how far it got.

A record is plain JSON, one per job, so that any process (the agent after a
restart, a query node answering the admin endpoint, the CLI) reads the same
truth from storage without talking to the agent.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any


class JobKind(str, Enum):
    COMPACT = "compact"  # rewrite small fragments into fewer, larger ones
    OPTIMIZE_INDICES = "optimize_indices"  # index newly written rows into every existing index
    RETRAIN = "retrain"  # rebuild one vector index from scratch over all rows
    CLEANUP = "cleanup"  # remove versions older than the retention setting
    CREATE_INDEX = "create_index"  # a client's create_index, built off the request path


# The order in which one table's jobs run: compaction first (it rewrites the
# fragments the indices would otherwise cover one by one), cleanup last.
KIND_ORDER = (JobKind.COMPACT, JobKind.RETRAIN, JobKind.OPTIMIZE_INDICES, JobKind.CLEANUP,
              JobKind.CREATE_INDEX)


class JobState(str, Enum):
    PENDING = "pending"  # recorded, not started (or interrupted, waiting to be retried)
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # gave up after the configured number of attempts

    @property
    def active(self) -> bool:
        return self in (JobState.PENDING, JobState.RUNNING)


@dataclass(frozen=True)
class Job:
    id: str
    database: str
    table: str
    kind: JobKind
    trigger_version: int  # the table version the decision was made on
    trigger: str = "event"  # event, reconcile
    index: str | None = None  # the vector index a retrain rebuilds
    state: JobState = JobState.PENDING
    attempts: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result_version: int | None = None
    detail: str | None = None  # what the job found or did, e.g. "no-op: indices cover version 7"
    error: str | None = None
    step: str | None = None  # what a running job is doing now, e.g. "building 2 segments"
    fraction: float | None = None  # of the current step, 0 to 1
    waiting: str | None = None  # why its tasks cannot start, e.g. "waiting for resources: ..."
    request: dict[str, Any] | None = None  # CREATE_INDEX: the client's create_index body

    @classmethod
    def new(cls, database: str, table: str, kind: JobKind, trigger_version: int, **extra: Any) -> Job:
        # Sortable by creation time, unique without coordination.
        job_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"
        return cls(job_id, database, table, kind, trigger_version, **extra)

    @property
    def key(self) -> str:
        return f"{self.database}/{self.table}"

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    def started(self) -> Job:
        return replace(self, state=JobState.RUNNING, attempts=self.attempts + 1,
                       started_at=time.time(), finished_at=None, step=None, fraction=None, waiting=None)

    def progressed(self, step: str, fraction: float | None, waiting: str | None) -> Job:
        return replace(self, step=step, fraction=fraction, waiting=waiting)

    def succeeded(self, result_version: int | None, detail: str) -> Job:
        return replace(self, state=JobState.SUCCEEDED, finished_at=time.time(),
                       result_version=result_version, detail=detail, error=None, waiting=None)

    def attempt_failed(self, error: str, final: bool) -> Job:
        state = JobState.FAILED if final else JobState.PENDING
        return replace(self, state=state, finished_at=time.time() if final else None, error=error,
                       waiting=None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        data["state"] = self.state.value
        data["duration_s"] = self.duration_s
        return data

    def to_json(self) -> bytes:
        data = asdict(self)
        data["kind"] = self.kind.value
        data["state"] = self.state.value
        return json.dumps(data, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Job:
        """Decode a record; fields a newer agent added are ignored. Raises ValueError."""
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            known = {f.name for f in fields(cls)}
            data = {k: v for k, v in data.items() if k in known}
            data["kind"] = JobKind(data["kind"])
            data["state"] = JobState(data["state"])
            return cls(**data)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a job record: {exc}") from exc
