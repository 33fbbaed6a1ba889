"""`lancedb-ray serve`: one command starts the service, prints how to connect, and stops on Ctrl-C.

A setting that cannot work ends the command before Ray starts, in one line naming it; a
deployment that fails anyway ends it at once with Serve's message.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lancedb
import pyarrow as pa
import pytest

from lancedb_ray import serve_ports
from lancedb_ray.settings import Settings
from tests.support.processes import serve_ingress_env
from tests.support.service import free_port, wait_healthy


def _isolated_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI run whose local directories live under ``tmp_path``.

    A Ray cluster it starts gets a Serve ingress apart from the session's (``serve_ingress_env``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANCEDB_RAY_", "AZURE"))}
    env.update(serve_ingress_env())
    env.update({"LANCEDB_RAY_EVENTS__EMBEDDED__DIRECTORY": str(tmp_path / "events"),
                "LANCEDB_RAY_EVENTS__OUTBOX_DIRECTORY": str(tmp_path / "outbox"),
                "LANCEDB_RAY_AGENT__JOBS_DIRECTORY": str(tmp_path / "jobs")})
    env.update(extra)
    return env


BAD_SETTINGS = [
    # (extra argv, environment, settings file text, the setting the one line must name)
    ([], {}, "server:\n  read_consistancy_seconds: 1\n", "server.read_consistancy_seconds"),
    ([], {"LANCEDB_RAY_EXECUTORS__CACHE_BYTEZ": "1"}, None, "executors.cache_bytez"),
    ([], {"LANCEDB_RAY_SERVER__PORT": "eighty"}, None, "server.port"),
    (["--storage", "az://lancedb/root"], {}, None, "storage.root"),
    ([], {}, "storage:\n  databases:\n    a: {uri: /tmp/x/a}\n    b: {uri: /tmp/x/a/b}\n",
     "storage.databases"),
    ([], {"LANCEDB_RAY_EVENTS__BACKEND": "eventhub"}, None, "events.eventhub"),
    ([], {"LANCEDB_RAY_EVENTS__BACKEND": "kafka",
          "LANCEDB_RAY_EVENTS__KAFKA__BOOTSTRAP_SERVERS": "broker-without-port"}, None,
     "events.kafka.bootstrap_servers"),
    ([], {}, "server: [unclosed\n", "settings file"),
]


@pytest.mark.parametrize(("argv", "env", "config", "setting"), BAD_SETTINGS)
def test_serve_refuses_bad_settings_before_starting_ray(
    tmp_path: Path, argv: list[str], env: dict[str, str], config: str | None, setting: str
) -> None:
    if config is not None:
        (tmp_path / "settings.yaml").write_text(config)
        argv = [*argv, "--config", str(tmp_path / "settings.yaml")]
    # The bound: within 10 s (it takes well under 1 s; starting Ray alone takes longer).
    result = subprocess.run(
        [sys.executable, "-m", "lancedb_ray.cli", "serve", "--storage", str(tmp_path / "data"), *argv],
        env=_isolated_env(tmp_path, **env), capture_output=True, text=True, timeout=10,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"lancedb-ray: {setting}"), lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_flags_beat_the_environment_which_beats_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "settings.yaml").write_text(
        "server: {port: 7001, host: 0.0.0.0, max_replicas: 7}\nagent: {max_attempts: 9}\n"
    )
    monkeypatch.setenv("LANCEDB_RAY_SERVER__PORT", "7002")
    monkeypatch.setenv("LANCEDB_RAY_SERVER__MAX_REPLICAS", "8")
    settings = Settings.load(tmp_path / "settings.yaml", server={"port": 7003})
    assert settings.server.port == 7003  # flag over environment and file
    assert settings.server.max_replicas == 8  # environment over file
    assert settings.server.host == "0.0.0.0" and settings.agent.max_attempts == 9  # file over defaults
    # A Ray actor given the plain settings sees exactly them, whatever its own environment says.
    assert Settings.from_plain(settings.to_plain()).server.port == 7003


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[str]:
    """A Ray cluster of its own in a child process (the CLI joins it); its GCS address."""
    script = ("import ray, sys\n"
              "ray.init(address='local', num_cpus=4, include_dashboard=False, log_to_driver=False)\n"
              "print(ray.get_runtime_context().gcs_address, flush=True)\n"
              "sys.stdin.read()\n"  # until the test closes stdin
              "ray.shutdown()\n")
    # A Serve ingress of its own (_isolated_env): the cluster's processes run Serve's proxy.
    env = _isolated_env(tmp_path)
    head = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        address = head.stdout.readline().strip()
        assert address, "the Ray head did not start"
        yield address
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()


def test_failed_deployment_ends_the_command_with_serves_message(tmp_path: Path, ray_head: str) -> None:
    # Passes every check before Ray, and fails in the replica: prewarming a table that does not exist.
    env = _isolated_env(tmp_path, LANCEDB_RAY_EXECUTORS__PREWARM='["nodb/missing_table"]',
                        LANCEDB_RAY_EXECUTORS__NUM_EXECUTORS="1", LANCEDB_RAY_AGENT__ENABLED="false")
    result = subprocess.run(
        [sys.executable, "-m", "lancedb_ray.cli", "serve", "--port", str(free_port()),
         "--storage", str(tmp_path / "data"), "--address", ray_head],
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "lancedb-ray: the service failed to start" in result.stderr
    assert "missing_table" in result.stderr, result.stderr  # Serve's message carries the cause
    assert "stopped" in result.stdout
    assert "is serving" not in result.stdout


@contextlib.contextmanager
def _served(env: dict[str, str], *argv: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """``lancedb-ray serve ARGV`` once it printed its prompt (as a person waits for it), and its lines.

    Killed at the end if a test left it running.
    """
    process = subprocess.Popen([sys.executable, "-m", "lancedb_ray.cli", "serve", *argv], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        printed = []
        for line in process.stdout:
            printed.append(line)
            if "Press Ctrl-C to stop." in line:
                break
        yield process, printed
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _stop(process: subprocess.Popen[str], printed: list[str]) -> str:
    """Ctrl-C, then everything the command printed; it must have ended cleanly."""
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=180)
    output = "".join(printed) + rest
    assert process.returncode == 0, f"exit code {process.returncode}: {output[-3000:]}"
    return output


def test_serve_command_serves_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    storage = tmp_path / "storage"
    env = _isolated_env(tmp_path, RAY_ADDRESS="local",  # a Ray instance of its own
                        LANCEDB_RAY_EXECUTORS__NUM_EXECUTORS="1",
                        # the flags below must beat these
                        LANCEDB_RAY_SERVER__PORT=str(free_port()),
                        LANCEDB_RAY_STORAGE__ROOT__URI=str(tmp_path / "not-here"))
    url = f"http://127.0.0.1:{port}"
    with _served(env, "--port", str(port), "--storage", str(storage), "--api-key", "cli-key") as (
            process, printed):
        wait_healthy(url, timeout_s=30)
        db = lancedb.connect("db://clidb", api_key="cli-key", host_override=url)
        db.create_table("t", pa.table({"id": [1, 2, 3]}))
        assert db.open_table("t").count_rows() == 3
        assert (storage / "clidb" / "t.lance").is_dir(), "the database lives under --storage"
        output = _stop(process, printed)
    assert f"lancedb-ray is serving at {url}" in output
    assert "api_key='cli-key'" in output
    assert "stopped" in output
    assert "failed to shut down" not in output, output[-3000:]  # Serve stopped, not given up on


def test_two_services_on_one_machine_answer_each_for_itself(tmp_path: Path) -> None:
    """Two ``lancedb-ray serve`` on one machine, apart only in port, key and directories.

    Serve's machine-wide ports are left to the command (the session's own cluster runs
    beside them too): shared, the second failed to start (HAProxy's stats port), and
    requests to one reached the other's application through the fallback proxy's port.
    """
    served = {}
    with contextlib.ExitStack() as stack:
        for name in ("a", "b"):
            env = {key: value for key, value in _isolated_env(tmp_path / name, RAY_ADDRESS="local",
                                                              LANCEDB_RAY_EXECUTORS__NUM_EXECUTORS="1").items()
                   if key not in serve_ports.SINGLE_PORTS + serve_ports.INGRESS_RANGE}
            port = free_port()
            process, printed = stack.enter_context(_served(
                env, "--port", str(port), "--storage", str(tmp_path / name / "data"),
                "--api-key", f"key-{name}"))
            assert "Press Ctrl-C to stop." in "".join(printed), "".join(printed)[-3000:]
            db = lancedb.connect("db://same-name", api_key=f"key-{name}", host_override=f"http://127.0.0.1:{port}")
            served[name] = (process, printed, db)
        for name, (_, _, db) in served.items():
            db.create_table(f"only-{name}", pa.table({"id": [1]}))
        for _ in range(25):  # the kernel spreads a shared port's connections: ask often
            for name, (_, _, db) in served.items():
                assert db.list_tables().tables == [f"only-{name}"]
        for process, printed, _ in served.values():
            _stop(process, printed)
