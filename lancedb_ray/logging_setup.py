"""One logging configuration for every process of the service (CLI, query node, executors, agent).

The ``lancedb_ray`` loggers write one line per record to the process's real
stderr (Ray keeps it in the worker's log file; Serve's stdout redirection is
bypassed so a line is not wrapped twice): text locally, JSON in production
(``settings.logging.format``). Each line logged while a request is served
carries the request's id, database and table, taken from ``REQUEST``, which the
HTTP layer sets for the request (the context follows it into worker threads).
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from lancedb_ray.settings import LoggingSettings

LOGGER = "lancedb_ray"
_TEXT = ("%(asctime)s %(levelname)s %(name)s "
         "[request=%(request_id)s database=%(database)s table=%(table)s] %(message)s")
_NONE = "-"


@dataclass
class RequestInfo:
    """The request being served; ``table`` is read from the route's parameters once routed."""

    request_id: str
    database: str | None
    scope: dict[str, Any] = field(default_factory=dict)

    @property
    def table(self) -> str | None:
        return self.scope.get("path_params", {}).get("table_id")


REQUEST: ContextVar[RequestInfo | None] = ContextVar("lancedb_ray_request", default=None)


class RequestFilter(logging.Filter):
    """Adds request_id, database and table (``-`` outside a request) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = REQUEST.get()
        record.request_id = info.request_id if info else _NONE
        record.database = (info.database if info else None) or _NONE
        record.table = (info.table if info else None) or _NONE
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request's fields (what log pipelines index)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", _NONE),
            "database": getattr(record, "database", _NONE),
            "table": getattr(record, "table", _NONE),
            "process": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(settings: LoggingSettings, stream: Any = None) -> None:
    """(Re)configure the ``lancedb_ray`` loggers of this process; idempotent."""
    handler = logging.StreamHandler(stream or sys.__stderr__)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else logging.Formatter(_TEXT))
    handler.addFilter(RequestFilter())
    logger = logging.getLogger(LOGGER)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(settings.level)
    logger.propagate = False  # one line per record, not a second copy through Ray's root handlers
