"""Shared test set-up: one local Ray cluster, Azurite and the Kafka broker per session."""

import os

# Ray 2.59+ turns token auth on by default; tests, CI and the serve script all turn it off alike.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The service runs behind Serve's HAProxy ingress by default (settings.server.proxy); test that path.
os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
# As `scripts/serve` on a Ray instance of its own: no outer load balancer has to deregister a stopping
# replica, so Serve's 30 s direct-ingress drain would only make each application's deletion wait.
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")

from tests.support.processes import serve_ingress_env  # noqa: E402

# Serve's ingress ports (replicas', HAProxy's stats and metrics) are shared by every Ray cluster on
# a machine unless each is given its own: this session's, so that sessions and the clusters its
# tests start (CLI runs, benchmarks) coexist.
for _name, _value in serve_ingress_env().items():
    os.environ.setdefault(_name, _value)

pytest_plugins: list[str] = [
    "tests.support.service", "tests.support.local_node", "tests.support.azurite", "tests.support.kafka",
]
