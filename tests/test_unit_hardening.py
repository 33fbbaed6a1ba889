"""Bounded decoding and error attribution, without Ray: the rules behind the hostile-request tests."""

from __future__ import annotations

import pyarrow as pa
import pytest

from lancedb_ray.api.arrow_io import read_arrow_stream
from lancedb_ray.api.ipc_guard import IpcLimits
from lancedb_ray.api.json_io import parse_object
from lancedb_ray.errors import InvalidInput, PayloadTooLarge
from lancedb_ray.storage.lance_errors import translate
from tests.support import hostile
from tests.support.api import make_rows

LIMITS = IpcLimits(max_rows=1_000_000, max_decoded_bytes=64 * 1024 * 1024, max_compression_ratio=32)


@pytest.mark.parametrize("codec", [None, "lz4", "zstd"])
def test_honest_streams_decode_unchanged(codec: str | None) -> None:
    rows = make_rows(100)
    assert read_arrow_stream(hostile.arrow_stream(rows, codec), LIMITS).equals(rows)


@pytest.mark.parametrize("body, error, problem", [
    (hostile.claims_rows(10**9), PayloadTooLarge, "rows"),
    (hostile.claims_rows(2_000_000), PayloadTooLarge, "rows"),
    (hostile.more_rows_than_buffers(), InvalidInput, "not a valid Arrow IPC stream"),
    (hostile.lz4_claims(2**50), PayloadTooLarge, "expand"),
    (hostile.lz4_claims(-5), InvalidInput, "negative"),
    (hostile.lz4_bomb(256), PayloadTooLarge, "expand"),
    (hostile.arrow_stream(make_rows(5))[:-30], InvalidInput, "not a valid Arrow IPC stream"),
    (b"\xff\xff\xff\xff\xff\xff\xff\x7f" + b"\x00" * 16, InvalidInput, "not a valid Arrow IPC stream"),
])
def test_lying_streams_are_refused(body: bytes, error: type, problem: str) -> None:
    with pytest.raises(error, match=problem):
        read_arrow_stream(body, LIMITS)


def test_decoded_size_limit_counts_uncompressed_bodies_too() -> None:
    body = hostile.arrow_stream(pa.table({"a": pa.array(range(200_000), pa.int64())}))
    tight = IpcLimits(max_rows=1_000_000, max_decoded_bytes=1024 * 1024, max_compression_ratio=32)
    with pytest.raises(PayloadTooLarge, match="decodes to more than"):
        read_arrow_stream(body, tight)


def test_json_bounds() -> None:
    assert parse_object(b"", 8) == {}
    assert parse_object(b'{"a": [[1, 2.5]], "k": 9223372036854775807}', 8)["k"] == 2**63 - 1
    for raw, problem in [(b"[" * 50_000 + b"]" * 50_000, "nests deeper"),
                         (b'{"a": ' + b"[" * 9 + b"]" * 9 + b"}", "nests deeper"),
                         (hostile.huge_integer(4_300), "out of range"),
                         (b'{"k": 18446744073709551616}', "out of range"),
                         (b'{"v": [NaN]}', "not a JSON number"),
                         (b'{"v": -Infinity}', "not a JSON number"),
                         (b"[1]", "must be a JSON object"),
                         (b"\xff", "not valid JSON")]:
        with pytest.raises(InvalidInput, match=problem):
            parse_object(raw, 8)


def test_bugs_of_our_own_are_500_and_lance_input_errors_400() -> None:
    from lancedb_ray.api.limits import check_query
    from lancedb_ray.protocol import QueryRequest

    try:
        check_query(QueryRequest(), "10", 1)  # type: ignore[arg-type] - a bug of ours: str < int
    except TypeError as exc:
        assert translate(exc, "query on 't'", "db").status_code == 500
    else:
        raise AssertionError("expected a TypeError")
    import lance

    try:
        lance.dataset("/nonexistent/x.lance").to_table(filter="(((")
    except Exception as exc:  # noqa: BLE001 - whatever lance raises for input it cannot open
        assert translate(exc, "query on 't'", "db").status_code != 500
    assert translate(RuntimeError("lance error: LanceError(Index): num_bits 3 not supported"),
                     "create_index", "db").status_code == 400
    assert translate(OverflowError("out of range integral type conversion attempted"),
                     "query", "db").status_code == 400
