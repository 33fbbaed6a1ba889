"""Hostile request bodies: honest Arrow streams with lying headers, deep JSON, huge numbers.

The lies are patched into bytes a real writer produced: a distinctive count
(777 rows of an ``arange`` column, whose data never holds 777) is found where the
batch header and its field node declare it and replaced by the claim.
"""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa

_ROWS = 777


def arrow_stream(table: pa.Table, compression: str | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _replace_all(body: bytes, old: int, new: int) -> bytes:
    before, after = struct.pack("<q", old), struct.pack("<q", new)
    assert body.count(before) >= 2, "the declared count was not found in the header"
    return body.replace(before, after)


def claims_rows(rows: int = 10**9) -> bytes:
    """A null column of 777 rows (no buffers at all) whose header claims ``rows``."""
    return _replace_all(arrow_stream(pa.table({"a": pa.nulls(_ROWS)})), _ROWS, rows)


def more_rows_than_buffers(rows: int = 100_000) -> bytes:
    """An int64 column whose header claims more rows than its data buffer holds."""
    table = pa.table({"a": pa.array(np.arange(_ROWS, dtype=np.int64))})
    return _replace_all(arrow_stream(table), _ROWS, rows)


def lz4_claims(size: int = 2**50) -> bytes:
    """An LZ4 buffer whose length prefix claims ``size`` decompressed bytes."""
    table = pa.table({"a": pa.array(np.arange(1000, dtype=np.int64))})
    body = arrow_stream(table, "lz4")
    prefix = struct.pack("<q", 8000)  # the data buffer's honest decompressed size
    at = body.rfind(prefix)
    assert at > 0
    return body[:at] + struct.pack("<q", size) + body[at + 8:]


def lz4_bomb(mib: int = 256, dim: int = 1024) -> bytes:
    """An honest LZ4 stream of zero vectors: about 1 MiB on the wire, ``mib`` MiB decoded."""
    rows = mib * 1024 * 1024 // (4 * dim)
    values = pa.array(np.zeros(rows * dim, dtype=np.float32))
    return arrow_stream(pa.table({"vector": pa.FixedSizeListArray.from_arrays(values, dim)}), "lz4")


def deep_json(depth: int = 50_000) -> bytes:
    return b'{"k": 5, "filter": ' + b"[" * depth + b"]" * depth + b"}"


def huge_integer(digits: int = 4_300) -> bytes:
    return b'{"k": ' + b"9" * digits + b', "vector": []}'


def nested_fts(depth: int = 200) -> dict:
    query: dict = {"match": {"column": "text", "terms": "apple"}}
    for _ in range(depth):
        query = {"boolean": {"must": [query]}}
    return {"vector": [], "k": 5, "full_text_query": {"query": query}}
