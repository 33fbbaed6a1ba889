"""Serve's machine-wide ports, moved apart for a Ray instance the service starts itself.

Ray Serve 2.60 behind HAProxy listens on ports fixed per machine: HAProxy's stats (8404) and
metrics (9101) pages, a fallback proxy on the head node (8500 HTTP, 9500 gRPC) that HAProxy
sends requests to while it has no replica for them, and the replicas' own ingress ports, taken
in order from 30000 (HTTP) and 40000 (gRPC). The fallback proxy and the replicas bind with
SO_REUSEPORT, so a second Ray instance on the machine shares those ports silently and the
kernel hands some of its requests to the other instance's applications (another database's
answers; a 401 for a key only this instance knows); HAProxy's stats port is not shared, so the
second instance fails to start instead. A Ray instance of our own gets ports nothing on the
machine listens on when it starts; a joined cluster keeps what its operator configured.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Collection, Mapping

SINGLE_PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
                "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")
INGRESS_RANGE = ("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT",
                 "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT", "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT")
INGRESS_PORTS = 100  # replicas with an ingress one node runs at once, with room
GRPC_OFFSET = 10_000  # as Serve's defaults
# HTTP blocks from Serve's default start up to Linux's ephemeral ports (32768), so that no
# outgoing connection holds one; gRPC blocks lie GRPC_OFFSET above, as Serve's do.
_BLOCK_STARTS = range(30_000, 32_768 - INGRESS_PORTS + 1, INGRESS_PORTS)


def ports_apart(environ: Mapping[str, str], first_ingress_port: int | None = None) -> dict[str, str]:
    """Environment variables giving a new Ray instance Serve ports no other instance uses now.

    Names already in ``environ`` are left out: an operator's choice wins (the ingress range
    as a whole). ``first_ingress_port`` fixes where the replicas' block starts (the tests
    hand out blocks of their own); otherwise a block whose ports are all free is drawn.
    """
    chosen: dict[str, str] = {}
    taken: set[int] = set()
    if not any(name in environ for name in INGRESS_RANGE):
        first = first_ingress_port if first_ingress_port is not None else _free_block()
        if first is not None:
            last = first + INGRESS_PORTS - 1
            chosen.update(zip(INGRESS_RANGE, map(str, (first, last, first + GRPC_OFFSET, last + GRPC_OFFSET)),
                              strict=True))
            taken.update(_block_ports(first))
    for name in SINGLE_PORTS:
        if name not in environ:
            port = free_port(avoid=taken)  # an ephemeral port: never one of the replicas' block
            taken.add(port)
            chosen[name] = str(port)
    return chosen


def _block_ports(first: int) -> list[int]:
    """The HTTP and gRPC ports of the ingress block starting at ``first``."""
    grpc = first + GRPC_OFFSET
    return [*range(first, first + INGRESS_PORTS), *range(grpc, grpc + INGRESS_PORTS)]


def free_port(avoid: Collection[int] = ()) -> int:
    """A port nothing listens on (one the kernel would give), none of ``avoid``."""
    while True:
        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port


def _free_block() -> int | None:
    """The start of an ingress block none of whose ports is taken; None leaves Serve's default."""
    starts = list(_BLOCK_STARTS)
    random.shuffle(starts)  # two instances starting at once most likely draw different blocks
    for start in starts:
        if all(_is_free(port) for port in _block_ports(start)):
            return start
    return None


def _is_free(port: int) -> bool:
    """Whether nothing listens on ``port`` (an outgoing connection using it as its own is no
    obstacle: Serve binds with SO_REUSEADDR too)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return False
        return True
