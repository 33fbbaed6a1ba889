"""The query node's FastAPI app without Ray: 500s of our own, the audit log, scrubbed errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lancedb_ray.api.errors import scrub
from lancedb_ray.api.http import create_app
from lancedb_ray.service.container import Services
from lancedb_ray.settings import Settings, key_digest
from tests.support.api import ARROW_STREAM, arrow_stream, make_rows

KEYS = [{"name": "writer", "sha256": key_digest("w-key"), "databases": ["shop"], "role": "write"},
        {"name": "reader", "sha256": key_digest("r-key"), "databases": ["shop"], "role": "read"}]


@pytest.fixture
def services(tmp_path: Path) -> Services:
    settings = Settings.load(None, server={"api_keys": KEYS},
                             storage={"root": {"uri": str(tmp_path / "data")}},
                             events={"embedded": {"directory": str(tmp_path / "events")},
                                     "outbox_directory": str(tmp_path / "outbox")},
                             agent={"jobs_directory": str(tmp_path / "jobs")})
    return Services.build(settings, lambda event: None)


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services), raise_server_exceptions=False) as test_client:
        yield test_client


def _headers(key: str, **extra: str) -> dict[str, str]:
    return {"x-api-key": key, "x-lancedb-database": "shop", **extra}


def test_a_bug_in_our_code_is_a_500_with_request_id_and_logged_traceback(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: object) -> None:
        raise KeyError("bug")  # as a slip in the service's own code would

    monkeypatch.setattr(services.tables, "list_tables", broken)
    with caplog.at_level(logging.ERROR):
        response = client.get("/v1/table/", headers=_headers("r-key", **{"x-request-id": "rq-1"}))
    assert response.status_code == 500
    assert response.json() == {"error": "InternalError", "message": "internal error (request id rq-1)"}
    (record,) = [r for r in caplog.records if "rq-1" in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is KeyError


def test_writes_and_refusals_are_audited_reads_are_not(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="lancedb_ray.audit"):
        created = client.post("/v1/table/items/create/", content=arrow_stream(make_rows(3)),
                              headers=_headers("w-key", **{"content-type": ARROW_STREAM,
                                                           "x-request-id": "rq-create"}))
        assert created.status_code == 200, created.text
        assert client.post("/v1/table/items/count_rows/", content=b"{}",
                           headers=_headers("r-key")).json() == 3
        refused = client.post("/v1/table/items/delete/", content=b'{"predicate": "id > 0"}',
                              headers=_headers("r-key", **{"x-request-id": "rq-delete"}))
        assert refused.status_code == 403
        unnamed = client.post("/v1/table/items/delete/", content=b'{"predicate": "id > 1"}',
                              headers=_headers("w-key"))  # no id sent: the line has the one answered
        assert unnamed.status_code == 200, unnamed.text
    lines = [r.getMessage() for r in caplog.records if r.name == "lancedb_ray.audit"]
    assert lines == [
        "audit key=writer database=shop table=items operation=create_table request_id=rq-create "
        "status=200",
        "audit key=reader database=shop table=items operation=delete request_id=rq-delete "
        "status=403",
        "audit key=writer database=shop table=items operation=delete "
        f"request_id={unnamed.headers['x-request-id']} status=200",
    ]
    assert not any("w-key" in line or "r-key" in line for line in lines)


def test_error_messages_never_name_storage() -> None:
    assert scrub("Dataset at path /srv/data/shop/t.lance was not found") == (
        "Dataset at path <path> was not found")
    assert scrub("az://acme-data/prefix/shop/t.lance: gone") == "<storage> gone"
    assert scrub("https://acct1.blob.core.windows.net/c/x?sv=1 refused") == "<storage> refused"
    assert scrub("http://127.0.0.1:10000/devstoreaccount1/c failed") == "<storage> failed"
    assert scrub("cannot evaluate price / 2 or 'a/b'") == "cannot evaluate price / 2 or 'a/b'"


def test_missing_tables_answer_without_their_path(client: TestClient) -> None:
    response = client.post("/v1/table/ghost/describe/", headers=_headers("r-key"))
    assert response.status_code == 404
    assert "/" not in response.json()["message"].replace("'", "")
