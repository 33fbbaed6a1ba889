"""Logs: one configuration, text or JSON, and every line of a request names its id, database and table.

The request id is the client's ``x-request-id`` or a new one, and comes back in
the response's ``x-request-id`` header.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from lancedb_ray import logging_setup
from lancedb_ray.api.http import create_app
from lancedb_ray.settings import LoggingSettings
from tests.support.service import LiveService


@pytest.fixture
def app_logs() -> Iterator[tuple[TestClient, io.StringIO]]:
    """The query node's HTTP app (no services) with a route that logs, and what it logs."""
    app = create_app()

    @app.get("/v1/table/{table_id}/logs-a-line")
    async def logs_a_line(request: Request, table_id: str) -> dict[str, str]:
        logging.getLogger("lancedb_ray.service.tables").info("something about %s", table_id)
        return {}

    app.router.routes.insert(0, app.router.routes.pop())  # ahead of the unsupported-route catch-all
    yield TestClient(app), io.StringIO()
    logger = logging.getLogger(logging_setup.LOGGER)  # as a process that never configured it
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate, logger.level = True, logging.NOTSET


def test_json_lines_carry_the_generated_request_id_database_and_table(
    app_logs: tuple[TestClient, io.StringIO],
) -> None:
    client, stream = app_logs
    logging_setup.configure(LoggingSettings(format="json"), stream=stream)
    response = client.get("/v1/table/docs/logs-a-line", headers={"x-lancedb-database": "shop"})
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id), "generated when the client sends none"
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["message"] == "something about docs" and entry["level"] == "INFO"
    assert (entry["request_id"], entry["database"], entry["table"]) == (request_id, "shop", "docs")
    assert entry["logger"] == "lancedb_ray.service.tables"
    # Outside a request the fields are there, empty.
    logging.getLogger("lancedb_ray.x").warning("no request")
    entry = json.loads(stream.getvalue().splitlines()[1])
    assert (entry["request_id"], entry["database"], entry["table"]) == ("-", "-", "-")


def test_text_lines_carry_the_clients_request_id(app_logs: tuple[TestClient, io.StringIO]) -> None:
    client, stream = app_logs
    logging_setup.configure(LoggingSettings(format="text"), stream=stream)
    response = client.get("/v1/table/docs/logs-a-line",
                          headers={"x-lancedb-database": "shop", "x-request-id": "client-id-1"})
    assert response.headers["x-request-id"] == "client-id-1"
    (line,) = stream.getvalue().splitlines()
    assert "INFO lancedb_ray.service.tables [request=client-id-1 database=shop table=docs]" in line
    assert line.endswith("something about docs")


def test_every_answer_has_a_request_id(app_logs: tuple[TestClient, io.StringIO]) -> None:
    client, _ = app_logs
    for path in ("/health", "/no/such/route", "/v1/table/docs/count_rows/"):  # 200, 404, 401
        response = client.get(path)
        assert len(response.headers.get_list("x-request-id")) == 1, path


def _session_logs() -> Path:
    import ray

    return Path(ray._private.worker.global_worker.node.get_logs_dir_path())  # noqa: SLF001 - test only


def test_query_node_logs_a_write_with_its_request(live_service: LiveService) -> None:
    database = f"logs{uuid.uuid4().hex[:8]}"
    live_service.connect(database).create_table("audited", pa.table({"id": [1, 2, 3]}))
    request_id = f"req-{uuid.uuid4().hex}"
    request = urllib.request.Request(
        f"{live_service.url}/v1/table/audited/delete/", data=json.dumps({"predicate": "id > 1"}).encode(),
        headers={"x-api-key": live_service.api_key, "x-lancedb-database": database,
                 "x-request-id": request_id, "content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["x-request-id"] == request_id
    deadline = time.monotonic() + 60
    while True:  # the replica's stderr reaches its worker log file
        lines = [line for path in _session_logs().glob("worker-*.err")
                 for line in path.read_text(errors="replace").splitlines() if request_id in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert lines, "the write's log line"
    assert any(f"[request={request_id} database={database} table=audited]" in line
               and "delete committed version" in line for line in lines), lines
