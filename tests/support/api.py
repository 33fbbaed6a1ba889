"""Helpers shared by the API tests: small deterministic data and raw HTTP access.

The official client covers what it can send; ``RawClient`` sends what it
cannot (malformed bodies, hostile names, repeated request ids) straight to
the live service over HTTP.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from tests.support.service import LiveService

ARROW_STREAM = "application/vnd.apache.arrow.stream"
DIM = 8
WORDS = ["apple", "banana", "cherry", "date", "elder", "fig", "grape", "honey", "kiwi", "lemon"]
CATEGORIES = ["red", "green", "blue", "yellow"]


def make_rows(n: int, start: int = 0, seed: int = 0, dim: int = DIM) -> pa.Table:
    """``n`` rows with ids ``start..start+n``: vectors, text, a category, tags and a price."""
    rng = np.random.default_rng(seed)
    ids = np.arange(start, start + n, dtype=np.int64)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    text = [f"{WORDS[i % 10]} {WORDS[(i * 7 + 3) % 10]} {WORDS[(i // 10) % 10]}" for i in ids]
    return pa.table(
        {
            "id": pa.array(ids),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
            "text": pa.array(text),
            "category": pa.array([CATEGORIES[i % 4] for i in ids]),
            "tags": pa.array([[WORDS[i % 10], WORDS[(i // 3) % 10]] for i in ids],
                             pa.list_(pa.string())),
            "price": pa.array((ids % 97).astype(np.float64) / 4.0),
        }
    )


def query_vector(seed: int = 99, dim: int = DIM) -> list[float]:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32).tolist()


def arrow_stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def read_arrow_file(body: bytes) -> pa.Table:
    return pa.ipc.open_file(pa.py_buffer(body)).read_all()


def ids_of(table: pa.Table) -> list[int]:
    return table.column("id").to_pylist()


class RawClient:
    """Plain HTTP to the service with the headers the official client sends."""

    def __init__(self, service: LiveService, database: str, api_key: str | None = None) -> None:
        self.database = database
        self._http = httpx.Client(base_url=service.url, timeout=60)
        self.headers: dict[str, str] = {"x-lancedb-database": database}
        key = service.api_key if api_key is None else api_key
        if key:
            self.headers["x-api-key"] = key

    def post(self, path: str, *, json_body: Any = None, content: bytes | None = None,
             headers: dict[str, str] | None = None, params: dict[str, Any] | None = None,
             ) -> httpx.Response:
        sent = {**self.headers, "x-request-id": str(uuid.uuid4()), **(headers or {})}
        if json_body is not None:
            content = json.dumps(json_body).encode()
            sent.setdefault("content-type", "application/json")
        return self._http.post(path, content=content, headers=sent, params=params)

    def get(self, path: str, *, params: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None) -> httpx.Response:
        return self._http.get(path, params=params, headers={**self.headers, **(headers or {})})

    def insert(self, table: str, data: pa.Table, request_id: str | None = None,
               mode: str | None = None) -> httpx.Response:
        headers = {"content-type": ARROW_STREAM}
        if request_id:
            headers["x-request-id"] = request_id
        return self.post(f"/v1/table/{table}/insert/", content=arrow_stream(data),
                         headers=headers, params={"mode": mode} if mode else None)

    def create(self, table: str, data: pa.Table, mode: str = "create") -> httpx.Response:
        return self.post(f"/v1/table/{table}/create/", content=arrow_stream(data),
                         headers={"content-type": ARROW_STREAM}, params={"mode": mode})

    def query(self, table: str, body: dict[str, Any]) -> httpx.Response:
        return self.post(f"/v1/table/{table}/query/", json_body={"vector": [], **body})

    def close(self) -> None:
        self._http.close()


@pytest.fixture(name="raw")
def raw_fixture(live_service: LiveService, db: Any) -> Iterator[RawClient]:
    """Raw HTTP to the same database as this test's ``db`` connection.

    Test modules import ``raw_fixture`` to use the ``raw`` fixture.
    """
    client = RawClient(live_service, db.db_name)
    yield client
    client.close()


def all_rows(table: Any, sort_key: str = "id") -> pa.Table:
    """Every row of a remote or embedded table, in ``sort_key`` order (remote has no to_arrow)."""
    return table.search().limit(None).to_arrow().sort_by(sort_key)
