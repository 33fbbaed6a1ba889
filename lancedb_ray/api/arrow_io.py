"""Arrow IPC in and out of HTTP bodies."""

from __future__ import annotations

import pyarrow as pa

from lancedb_ray.errors import InvalidInput

ARROW_STREAM = "application/vnd.apache.arrow.stream"
ARROW_FILE = "application/vnd.apache.arrow.file"


def read_arrow_stream(body: bytes) -> pa.Table:
    """Decode an IPC stream (LZ4-compressed buffers too) without copying the body again."""
    if not body:
        raise InvalidInput("request body is empty: expected an Arrow IPC stream")
    try:
        return pa.ipc.open_stream(pa.py_buffer(body)).read_all()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise InvalidInput(f"request body is not a valid Arrow IPC stream: {exc}") from exc


def arrow_file_bytes(table: pa.Table) -> bytes:
    """Encode a result as an IPC file, the format the client reads query results in."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
