"""Hypothesis over the HTTP API: no input, however malformed, gets a 5xx or harms anything.

Each example sends one hostile request (route, method, table id, headers, body)
to the live service and checks the answer: below 500, and an error body that
names no storage location. Afterwards the service must still be healthy and a
seeded table, in the database every example targets, unchanged byte for byte.

``FUZZ_EXAMPLES`` sets the number of examples (CI default: 120; try 2000 locally).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import hostile
from tests.support.api import ARROW_STREAM, arrow_stream, make_rows
from tests.support.service import INDEXED, LiveService

pytestmark = pytest.mark.ray
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "120"))

TABLE_ROUTES = [
    "create/", "describe/", "drop/", "rename/", "count_rows/", "stats/", "insert/",
    "merge_insert/", "delete/", "update/", "query/", "explain_plan/", "analyze_plan/",
    "create_index/", "index/list/", "index/{name}/stats/", "index/{name}/drop/", "add_columns/",
    "alter_columns/", "drop_columns/", "version/list/", "restore/", "tags/list/",
    "tags/version/", "tags/create/", "tags/update/", "tags/delete/",
]
NAMESPACE_ROUTES = ["create", "list", "describe", "drop", "table/list"]
HOSTILE_NAMES = ["target", "..", ".", "%2E%2E", "a%2Fb", "..%2F..%2Fseed", "a%00b", "a%5Cb",
                 "%C3%A9", "x" * 10_000, "ns$target", "$", "$$", "seed$..", "%252F", " ", "seed%20"]
# The seeded table is only ever the target of reads: a valid random write could change it.
READ_ONLY_ROUTES = {"describe/", "count_rows/", "stats/", "query/", "explain_plan/",
                    "analyze_plan/", "index/list/", "version/list/", "tags/list/"}

numbers = st.sampled_from([-1, 0, 1, 10**12, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 1.5, 1e308])
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=20)
    | st.sampled_from(["..", "/etc/passwd", "a/b", "\x00", "id > 0", "((((", "x" * 5000]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["k", "vector", "filter", "columns", "offset", "version", "predicate", "updates",
          "new_table_name", "column", "index_type", "num_bits", "num_partitions", "alterations",
          "new_columns", "tag", "query", "full_text_query", "distance_type", "nprobes", "mode"]
shaped_json = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5)


def _arrow_bodies() -> list[bytes]:
    honest = arrow_stream(make_rows(5, start=10_000))
    return [
        honest, honest[: len(honest) // 2], honest[:8], b"\xff" * 64, b"",
        arrow_stream(pa.table({"id": ["text"], "other": [1]})),
        arrow_stream(make_rows(2, dim=3)),
        hostile.claims_rows(10**9), hostile.more_rows_than_buffers(), hostile.lz4_claims(2**50),
        hostile.arrow_stream(pa.table({"a": [1]}).drop_columns(["a"])),
    ]


ARROW_BODIES = _arrow_bodies()
RAW_JSON = [hostile.deep_json(50_000), hostile.huge_integer(4_300), b'{"k": NaN}',
            b'{"vector": [Infinity], "k": 5}', b"{not json", b"\xff\xfe", b"[]", b"null", b'"x"',
            b'{"vector": [' + b"0.5," * 999_999 + b"0.5], \"k\": 5}"]


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["json", "shaped", "raw", "arrow", "bytes"]))
    if kind == "json":
        return json.dumps(draw(json_values)).encode(), "application/json"
    if kind == "shaped":
        return json.dumps(draw(shaped_json)).encode(), "application/json"
    if kind == "raw":
        return draw(st.sampled_from(RAW_JSON)), "application/json"
    if kind == "arrow":
        return draw(st.sampled_from(ARROW_BODIES)), draw(st.sampled_from([ARROW_STREAM, "application/json"]))
    return draw(st.binary(max_size=256)), draw(st.sampled_from([ARROW_STREAM, "application/json", ""]))


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    table = draw(st.sampled_from(HOSTILE_NAMES) | st.text(min_size=1, max_size=30).map(
        lambda text: urllib.parse.quote(text, safe="")))
    if draw(st.integers(0, 9)) == 0:
        path = f"/v1/namespace/{table}/{draw(st.sampled_from(NAMESPACE_ROUTES))}"
    elif draw(st.integers(0, 19)) == 0:
        path = draw(st.sampled_from(["/v1/admin/jobs", "/v1/table/", "/v1/admin/../table/"]))
    else:
        route = draw(st.sampled_from(TABLE_ROUTES))
        if route in READ_ONLY_ROUTES and draw(st.booleans()):
            table = "seed"
        path = f"/v1/table/{table}/{route}".replace(
            "{name}", draw(st.sampled_from(["id_idx", "..", "a%2Fb", "%00"])))
    query = draw(st.sampled_from(["", "?mode=overwrite", "?on=id", "?on=..&mode=x", "?limit=-1",
                                  "?version=99999999999999999999", "?page_token=%00"]))
    body, content_type = draw(bodies())
    headers = {"content-type": content_type} if content_type else {}
    headers.update(draw(st.dictionaries(
        st.sampled_from(["x-request-id", "x-lancedb-database", "accept", "content-encoding"]),
        st.sampled_from(["caf\u00e9", "..", "a/b", "x" * 300, "gzip", "\u00ff\u00fe", "db1"]),
        max_size=2)))
    method = draw(st.sampled_from(["POST"] * 8 + ["GET", "PUT", "DELETE", "PATCH"]))
    return {"method": method, "path": path + query, "body": body, "headers": headers}


_STORAGE = re.compile(r"(?<![\w.\-/])/(tmp|root|home|srv|var|work|data)/|[a-z]+://", re.I)


@pytest.fixture(scope="module")
def seeded(live_service: LiveService) -> tuple[str, Path]:
    database = f"fuzz{uuid.uuid4().hex[:8]}"
    table = live_service.connect(database).create_table("seed", make_rows(40))
    table.create_index("id", wait_timeout=INDEXED)
    return database, live_service.root / database / "seed.lance"


def _fingerprint(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_no_request_gets_a_5xx_or_harms_the_service(live_service: LiveService, seeded) -> None:
    database, seed_dir = seeded
    before = _fingerprint(seed_dir)
    client = httpx.Client(base_url=live_service.url, timeout=120)
    base = {"x-api-key": live_service.api_key, "x-lancedb-database": database}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 200,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(request=requests())
    def one_request(request: dict[str, Any]) -> None:
        headers = {**base, **{k: v.encode("utf-8") for k, v in request["headers"].items()}}
        response = client.request(request["method"], request["path"], content=request["body"],
                                  headers=headers)
        assert response.status_code < 500, (request["method"], request["path"],
                                            response.status_code, response.text[:500])
        if response.status_code >= 400:
            assert not _STORAGE.search(response.text), response.text[:500]
            assert str(live_service.root) not in response.text

    try:
        one_request()
    finally:
        client.close()
    assert httpx.get(f"{live_service.url}/health").status_code == 200
    assert _fingerprint(seed_dir) == before
    again = live_service.connect(database).open_table("seed")
    assert again.count_rows() == 40


def _raw_http(service: LiveService, head: bytes, body: bytes) -> bytes:
    """Send bytes as they are (httpx would fix a lying Content-Length) and read the answer."""
    host, port = urllib.parse.urlparse(service.url).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("declared", ["abc", "-5", "99999999999999999999", "5", "100000"])
def test_bad_and_lying_content_length(live_service: LiveService, seeded, declared: str) -> None:
    database, seed_dir = seeded
    body = json.dumps({"k": 5, "vector": []}).encode()
    head = (f"POST /v1/table/seed/query/ HTTP/1.1\r\nHost: x\r\nx-api-key: {live_service.api_key}\r\n"
            f"x-lancedb-database: {database}\r\ncontent-type: application/json\r\n"
            f"content-length: {declared}\r\nconnection: close\r\n\r\n").encode()
    answer = _raw_http(live_service, head, body)
    if answer:  # a proxy may also just close a connection whose body never arrives
        status = int(answer.split(b" ", 2)[1])
        assert status < 500, answer[:300]
    assert httpx.get(f"{live_service.url}/health").status_code == 200
