"""Routes under ``/v1/admin/``: operators' views, for keys with the admin role.

An admin key sees only the jobs of the databases it may use (all of them with ``*``).

``GET /v1/admin/jobs?state=&database=&table=&limit=`` lists the agent's jobs,
newest first, read from the job store on storage: it answers the same from
any query node, and while the agent itself is restarting.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from lancedb_ray.agent.jobs import JobState
from lancedb_ray.agent.store import JobStore, open_job_store, select
from lancedb_ray.api.auth import authorize
from lancedb_ray.api.context import authenticate, services
from lancedb_ray.errors import InvalidInput
from lancedb_ray.settings import Role, Settings

router = APIRouter(prefix="/v1/admin", dependencies=[Depends(authenticate)])
MAX_LIMIT = 10_000

_stores: dict[int, tuple[Settings, JobStore]] = {}
_lock = threading.Lock()


def _store(settings: Settings) -> JobStore:
    with _lock:
        cached = _stores.get(id(settings))
        if cached is None or cached[0] is not settings:
            cached = _stores[id(settings)] = (settings, open_job_store(settings))
        return cached[1]


@router.get("/jobs")
async def list_jobs(
    request: Request,
    state: str | None = None,
    database: str | None = None,
    table: str | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    if state and state not in {s.value for s in JobState}:
        raise InvalidInput(f"unknown job state '{state}': use one of {[s.value for s in JobState]}")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    key = request.state.api_key
    if database:
        authorize(key, Role.ADMIN, database)
    store = _store(services(request).settings)
    jobs = [job for job in await run_in_threadpool(store.list) if key.allows(job.database)]
    chosen = select(jobs, state or None, database or None, table or None, limit)
    return {"jobs": [job.to_dict() for job in chosen]}
