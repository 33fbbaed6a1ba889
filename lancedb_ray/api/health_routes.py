"""Liveness and readiness, without an API key (probes carry none).

``GET /health``: the process serves HTTP (cheap, for liveness probes and the CLI).
``GET /ready``: 200 when the node can answer queries and reach storage, else 503
naming what is missing (for readiness probes and load balancers).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from lancedb_ray.api.context import services
from lancedb_ray.service.health import readiness_problems

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    problems = await run_in_threadpool(readiness_problems, services(request))
    if problems:
        return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready"})
