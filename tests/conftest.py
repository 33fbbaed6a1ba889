"""Shared test set-up: one local Ray cluster, Azurite and the Kafka broker per session."""

import os

# Ray 2.59+ turns token auth on by default; tests, CI and the serve script all turn it off alike.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The service runs behind Serve's HAProxy ingress by default (settings.server.proxy); test that path.
os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")

from tests.support.processes import free_port, serve_ingress_ports  # noqa: E402

# HAProxy's stats and metrics ports are fixed by default: free ones let test sessions coexist.
os.environ.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))
os.environ.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port()))
# So are the replicas' ports, shared by SO_REUSEPORT across clusters: a range of this session's own.
for _name, _value in serve_ingress_ports().items():
    os.environ.setdefault(_name, _value)

pytest_plugins: list[str] = [
    "tests.support.service", "tests.support.local_node", "tests.support.azurite", "tests.support.kafka",
]
