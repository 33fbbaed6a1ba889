"""Shared test set-up: one local Ray cluster, Azurite and the Kafka broker per session."""

import os
import socket

# Ray 2.59+ turns token auth on by default; tests, CI and the serve script all turn it off alike.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The service runs behind Serve's HAProxy ingress by default (settings.server.proxy); test that path.
os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# HAProxy's stats and metrics ports are fixed by default: free ones let test sessions coexist.
os.environ.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(_free_port()))
os.environ.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(_free_port()))

pytest_plugins: list[str] = ["tests.support.service", "tests.support.azurite", "tests.support.kafka"]
