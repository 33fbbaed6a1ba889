"""Serve's machine-wide ports for a Ray instance of our own (``lancedb_ray.serve_ports``)."""

from __future__ import annotations

import socket

from lancedb_ray import serve_ports
from lancedb_ray.serve_ports import INGRESS_PORTS, INGRESS_RANGE, SINGLE_PORTS, ports_apart


def test_every_port_is_chosen_free_and_apart() -> None:
    chosen = ports_apart({})
    assert set(chosen) == {*SINGLE_PORTS, *INGRESS_RANGE}
    singles = [int(chosen[name]) for name in SINGLE_PORTS]
    assert len(set(singles)) == len(singles)
    first, last, grpc_first, grpc_last = (int(chosen[name]) for name in INGRESS_RANGE)
    assert last - first + 1 == INGRESS_PORTS and grpc_last - grpc_first + 1 == INGRESS_PORTS
    assert last < 32_768, "the HTTP block lies below Linux's ephemeral ports"
    assert not set(singles) & {*range(first, last + 1), *range(grpc_first, grpc_last + 1)}


def test_an_operators_choice_wins() -> None:
    environ = {"RAY_SERVE_HAPROXY_STATS_PORT": "8404", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": "30000"}
    chosen = ports_apart(environ)
    assert "RAY_SERVE_HAPROXY_STATS_PORT" not in chosen
    assert not set(chosen) & set(INGRESS_RANGE), "the ingress range is the operator's as a whole"
    assert set(chosen) == set(SINGLE_PORTS) - {"RAY_SERVE_HAPROXY_STATS_PORT"}


def test_an_ingress_block_with_a_port_taken_is_not_drawn(monkeypatch) -> None:
    taken, other = serve_ports._BLOCK_STARTS[0], serve_ports._BLOCK_STARTS[1]
    monkeypatch.setattr(serve_ports, "_BLOCK_STARTS", [taken, other])
    with socket.socket() as held:  # another instance's replica listens in the first block
        held.bind(("", taken + 5))
        held.listen()
        for _ in range(5):  # drawn in random order: never the block with the port taken
            assert ports_apart({}).get(INGRESS_RANGE[0]) in (str(other), None)
