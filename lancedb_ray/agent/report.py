"""Job listings for people: fetched from the admin endpoint or read from the job store."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

from lancedb_ray.agent.store import open_job_store, select
from lancedb_ray.settings import Settings

COLUMNS = ("id", "state", "kind", "database", "table", "version", "attempts", "duration", "result",
           "progress", "error/waiting")


def read_jobs(settings: Settings, state: str | None = None, database: str | None = None,
              table: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    jobs = open_job_store(settings).list()
    return [job.to_dict() for job in select(jobs, state, database, table, limit)]


def fetch_jobs(url: str, api_key: str, state: str | None = None, database: str | None = None,
               table: str | None = None, limit: int | None = None,
               timeout_s: float = 30) -> list[dict[str, Any]]:
    params = {k: v for k, v in {"state": state, "database": database, "table": table,
                                "limit": limit}.items() if v is not None}
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    request = urllib.request.Request(f"{url.rstrip('/')}/v1/admin/jobs{query}",
                                     headers={"x-api-key": api_key})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())["jobs"]


def format_jobs(jobs: list[dict[str, Any]]) -> str:
    """A plain text table, one job per line; 'no jobs' when empty."""
    if not jobs:
        return "no jobs"
    rows = [COLUMNS, *(_row(job) for job in jobs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _row(job: dict[str, Any]) -> tuple[str, ...]:
    duration = job.get("duration_s")
    error = (job.get("waiting") or job.get("error") or "").replace("\n", " ")
    fraction = job.get("fraction")
    progress = "-"
    if job["state"] == "running" and job.get("step"):
        progress = job["step"] + ("" if fraction is None else f" {fraction:.0%}")
    return (
        job["id"],
        job["state"],
        job["kind"] + (f"({job['index']})" if job.get("index") else ""),
        job["database"],
        job["table"],
        str(job["trigger_version"]),
        str(job["attempts"]),
        "-" if duration is None else f"{duration:.1f}s",
        "-" if job.get("result_version") is None else str(job["result_version"]),
        progress,
        error[:100] or "-",
    )
