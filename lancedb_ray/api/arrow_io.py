"""Arrow IPC in and out of HTTP bodies."""

from __future__ import annotations

import pyarrow as pa

from lancedb_ray.api.ipc_guard import IpcLimits, check_stream
from lancedb_ray.errors import InvalidInput

ARROW_STREAM = "application/vnd.apache.arrow.stream"
ARROW_FILE = "application/vnd.apache.arrow.file"


def read_arrow_stream(body: bytes, limits: IpcLimits) -> pa.Table:
    """Decode an IPC stream (LZ4/ZSTD-compressed buffers too) once its claims passed ``limits``.

    Each batch is validated in full: a batch whose buffers hold fewer rows than it
    claims (or offsets pointing outside them) would otherwise be read out of bounds.
    """
    if not body:
        raise InvalidInput("request body is empty: expected an Arrow IPC stream")
    check_stream(body, limits)
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(body))
        batches = []
        for batch in reader:
            batch.validate(full=True)
            batches.append(batch)
        table = pa.Table.from_batches(batches, schema=reader.schema)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise InvalidInput(f"request body is not a valid Arrow IPC stream: {exc}") from exc
    if not table.num_columns:
        raise InvalidInput("the Arrow IPC stream has no columns: at least one is needed")
    return table


def arrow_file_bytes(table: pa.Table) -> bytes:
    """Encode a result as an IPC file, the format the client reads query results in."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
