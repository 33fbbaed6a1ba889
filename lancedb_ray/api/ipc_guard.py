"""Check an Arrow IPC stream's declared sizes before anything is decoded.

A small body can claim a billion rows (null columns need no buffers), a
compressed buffer can claim to expand to petabytes, and pyarrow believes both
when it materialises the stream. This reads only the flatbuffer headers of each
message (the Arrow format's ``Message``/``RecordBatch`` tables) and the 8-byte
length prefix of each compressed buffer, and refuses a stream whose claims pass
the configured limits, before pyarrow allocates anything for it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pyarrow as pa

from lancedb_ray.errors import InvalidInput, PayloadTooLarge

# Message.header_type values of the Arrow format (Schema.fbs / Message.fbs).
_RECORD_BATCH = 3
_DICTIONARY_BATCH = 2
_RATIO_EXEMPT = 1024 * 1024  # small bodies may compress as well as they like


@dataclass(frozen=True)
class IpcLimits:
    max_rows: int  # rows over all record batches of one body
    max_decoded_bytes: int  # bytes all buffers take once decompressed
    max_compression_ratio: float  # decoded / compressed bytes, past the first MiB

    def check_compression(self, compressed: int, decoded: int) -> None:
        if decoded > _RATIO_EXEMPT and decoded > compressed * self.max_compression_ratio:
            raise PayloadTooLarge(
                f"Arrow IPC stream's compressed buffers expand more than {self.max_compression_ratio:g} "
                "times; send it uncompressed or in smaller requests"
            )


def check_stream(body: bytes, limits: IpcLimits) -> None:
    """Raise a 4xx error if any message of ``body`` claims more than ``limits`` allow."""
    rows = 0
    decoded = 0
    compressed_in = compressed_out = 0
    try:
        reader = pa.ipc.MessageReader.open_stream(pa.py_buffer(body))
        for message in reader:
            batch = _batch_header(message.metadata.to_pybytes())
            if batch is None:
                continue
            length, nodes, buffers, compressed = batch
            if length < 0 or any(n < 0 for n in nodes):
                raise InvalidInput("Arrow IPC stream declares a negative length")
            if message.type == "record batch":
                rows += length
            # A nested column's values may outnumber its rows, but never its decoded bytes.
            if rows > limits.max_rows or any(n > limits.max_decoded_bytes for n in nodes):
                raise PayloadTooLarge(
                    f"Arrow IPC stream declares more than {limits.max_rows} rows; send fewer per request"
                )
            size = _decoded_size(message.body, buffers, compressed)
            decoded += size
            if compressed:
                compressed_in += sum(length for _, length in buffers)
                compressed_out += size
                limits.check_compression(compressed_in, compressed_out)
            if decoded > limits.max_decoded_bytes:
                raise PayloadTooLarge(
                    f"Arrow IPC stream decodes to more than {limits.max_decoded_bytes} bytes; "
                    "send less per request"
                )
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError, struct.error, IndexError) as exc:
        raise InvalidInput(f"request body is not a valid Arrow IPC stream: {exc}") from exc


def _decoded_size(body: pa.Buffer, buffers: list[tuple[int, int]], compressed: bool) -> int:
    """Bytes the buffers take decoded: a compressed buffer says so in its first 8 bytes."""
    total = 0
    for offset, length in buffers:
        if offset < 0 or length < 0 or offset + length > body.size:
            raise InvalidInput("Arrow IPC stream has a buffer outside its message body")
        if not compressed or length == 0:
            total += length
            continue
        if length < 8:
            raise InvalidInput("Arrow IPC stream has a compressed buffer without its length prefix")
        (uncompressed,) = struct.unpack_from("<q", body.slice(offset, 8).to_pybytes())
        total += length - 8 if uncompressed == -1 else uncompressed
        if uncompressed < -1:
            raise InvalidInput("Arrow IPC stream declares a negative buffer length")
    return total


# -- the few flatbuffer tables we need ------------------------------------------------------


def _batch_header(meta: bytes) -> tuple[int, list[int], list[tuple[int, int]], bool] | None:
    """(length, node lengths, buffers, compressed) of a record or dictionary batch, else None."""
    message = _Table.root(meta)
    header_type = message.scalar(1, "<B", 0)
    header = message.table(2)
    if header is None or header_type not in (_RECORD_BATCH, _DICTIONARY_BATCH):
        return None
    batch = header.table(1) if header_type == _DICTIONARY_BATCH else header
    if batch is None:
        return None
    length = batch.scalar(0, "<q", 0)
    nodes = [node[0] for node in batch.structs(1, "<qq")]
    buffers = [(offset, size) for offset, size in batch.structs(2, "<qq")]
    return length, nodes, buffers, batch.table(3) is not None


class _Table:
    """A flatbuffer table: fields found through its vtable, by field index."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        (vtable_size,) = struct.unpack_from("<H", buf, vtable)
        self._vtable = vtable
        self._fields = (vtable_size - 4) // 2

    @classmethod
    def root(cls, buf: bytes) -> _Table:
        return cls(buf, struct.unpack_from("<I", buf, 0)[0])

    def _offset(self, field: int) -> int:
        if field >= self._fields:
            return 0
        return struct.unpack_from("<H", self.buf, self._vtable + 4 + 2 * field)[0]

    def scalar(self, field: int, fmt: str, default: int) -> int:
        offset = self._offset(field)
        return struct.unpack_from(fmt, self.buf, self.pos + offset)[0] if offset else default

    def _target(self, field: int) -> int | None:
        offset = self._offset(field)
        if not offset:
            return None
        at = self.pos + offset
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def table(self, field: int) -> _Table | None:
        target = self._target(field)
        return None if target is None else _Table(self.buf, target)

    def structs(self, field: int, fmt: str) -> list[tuple[int, ...]]:
        """A vector of fixed-size structs; its claimed count is checked against the bytes."""
        target = self._target(field)
        if target is None:
            return []
        (count,) = struct.unpack_from("<I", self.buf, target)
        size = struct.calcsize(fmt)
        if target + 4 + count * size > len(self.buf):
            raise InvalidInput("Arrow IPC stream has a truncated message header")
        return [struct.unpack_from(fmt, self.buf, target + 4 + i * size) for i in range(count)]
