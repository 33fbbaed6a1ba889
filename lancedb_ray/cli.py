"""``lancedb-ray``: serve the query node, and inspect the agent's jobs."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from lancedb_ray import keys, logging_setup, preflight, serve_ports
from lancedb_ray.settings import Settings

APP_NAME = "lancedb"


def _serve_settings(args: argparse.Namespace) -> Settings:
    """The settings: flags beat the environment, which beats the file; PreflightError if unusable."""
    overrides: dict[str, Any] = {"server": {}, "ray": {}}
    if args.host:
        overrides["server"]["host"] = args.host
    if args.port:
        overrides["server"]["port"] = args.port
    if args.api_key:
        overrides["server"]["api_keys"] = [args.api_key]
    if args.storage:
        overrides["storage"] = {"root": {"uri": args.storage}}
    if args.address:
        overrides["ray"]["address"] = args.address
    settings = preflight.load_settings(args.config, **overrides)
    preflight.check(settings)
    return settings


def _or_report(load: Callable[[], Settings]) -> Settings | None:
    """The settings, or None once the reason they are unusable is printed (one line, no traceback)."""
    try:
        return load()
    except preflight.PreflightError as exc:
        print(f"lancedb-ray: {exc}", file=sys.stderr, flush=True)
        return None


def _wait_healthy(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service did not become healthy at {url} in {timeout_s}s")
        time.sleep(0.5)


def _deploy(serve: Any, app: Any, stop: threading.Event, timeout_s: float) -> str | None:
    """Run the app; None once every deployment runs (or a stop was asked), else Serve's reason.

    ``serve.run`` waits until the app runs and raises with Serve's message when a
    deployment fails; it runs in a thread so that Ctrl-C still stops at once.
    """
    failure: list[str] = []
    done = threading.Event()

    def run() -> None:
        try:
            serve.run(app, name=APP_NAME, route_prefix="/")
        except Exception as exc:  # noqa: BLE001 - Serve's message is the report
            failure.append(str(exc))
        finally:
            done.set()

    threading.Thread(target=run, name="serve-run", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not (done.wait(0.5) or stop.is_set()):
        if time.monotonic() > deadline:
            return f"the application did not start in {timeout_s:.0f}s. {_status_messages(serve)}"
    return f"{failure[0]} {_status_messages(serve)}" if failure else None


def _status_messages(serve: Any) -> str:
    """What Serve says about each deployment that is not running: the cause is in there."""
    application = serve.status().applications.get(APP_NAME)
    if application is None:
        return ""
    return "\n".join(f"{name}: {status.message}" for name, status in application.deployments.items()
                     if status.status != "HEALTHY" and status.message)


def _shutdown(serve: Any, ray: Any, joined: bool) -> None:
    """Leave a joined cluster as it was (only this app goes); otherwise stop Serve and Ray."""
    try:
        if joined:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
    finally:
        ray.shutdown()


def serve_command(args: argparse.Namespace) -> int:
    settings = _or_report(lambda: _serve_settings(args))
    if settings is None:
        return 2
    logging_setup.configure(settings.logging)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    if args.config:  # every Ray process then reads the file's secrets itself (Settings.to_plain)
        os.environ["LANCEDB_RAY_CONFIG"] = os.path.abspath(args.config)
    # Ctrl-C (or SIGTERM) at any point, during start-up too, leads to the same clean stop.
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if settings.server.proxy == "haproxy":
        os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    address = settings.ray.address or os.environ.get("RAY_ADDRESS")
    joined = address not in (None, "", "local")
    if not joined:  # no load balancer fronts a Ray instance of our own: Serve's 30 s drain only delays Ctrl-C
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
        # and it must not share Serve's machine-wide ports with another instance on this machine
        os.environ.update(serve_ports.ports_apart(os.environ))
    ray.init(address=address, namespace=settings.ray.namespace, log_to_driver=False)
    code = 0
    try:
        # Imported once Ray's processes are started: lancedb's runtime must not be forked.
        from lancedb_ray.api.app import build_app

        try:
            serve.start(http_options={"host": settings.server.host, "port": settings.server.port})
            failure = _deploy(serve, build_app({"settings": settings.to_plain()}), stop, timeout_s=600)
        except Exception as exc:  # noqa: BLE001 - Serve itself could not start (a port taken, ...)
            failure = f"{type(exc).__name__}: {exc}"
        url = f"http://{settings.server.host}:{settings.server.port}"
        if failure is not None:
            print(f"lancedb-ray: the service failed to start: {failure}", file=sys.stderr, flush=True)
            code = 1
        elif not stop.is_set():
            _wait_healthy(url, timeout_s=120)
            key = args.api_key or (keys.DEV_KEY if keys.accepts(settings, keys.DEV_KEY) else "<your key>")
            print(f"lancedb-ray is serving at {url}", flush=True)
            print(f"  storage: {settings.storage.root.uri or settings.storage.root.container}")
            print(f"  connect: lancedb.connect('db://mydb', api_key='{key}', host_override='{url}')")
            print("Press Ctrl-C to stop.", flush=True)
            stop.wait()
        print("stopping...", flush=True)
    finally:
        _shutdown(serve, ray, joined)
    print("stopped", flush=True)
    return code


def jobs_command(args: argparse.Namespace) -> int:
    """Print the agent's jobs: through the admin endpoint with --url, else from the job store."""
    from lancedb_ray.agent.report import fetch_jobs, format_jobs, read_jobs

    settings = _or_report(lambda: preflight.load_settings(args.config))
    if settings is None:
        return 2
    filters = {"state": args.state, "database": args.database, "table": args.table,
               "limit": args.limit}
    if args.url:
        key = args.api_key or keys.DEV_KEY
        jobs = fetch_jobs(args.url, key, **filters)
    else:
        jobs = read_jobs(settings, **filters)
    print(json.dumps(jobs, indent=1) if args.json else format_jobs(jobs))
    return 0


def status_command(args: argparse.Namespace) -> int:
    """One screen: nodes, deployments, executors' caches, the agent's lag, jobs and unindexed tables."""
    settings = _or_report(lambda: preflight.load_settings(args.config))
    if settings is None:
        return 2
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from lancedb_ray.status import collect, format_status

    address = args.address or settings.ray.address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        ray.init(address=address, namespace=settings.ray.namespace, log_to_driver=False,
                 logging_level="ERROR")
    except ConnectionError as exc:
        print(f"lancedb-ray: no Ray cluster at {address}: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        status = collect(settings)
    finally:
        ray.shutdown()
    print(json.dumps(status, indent=1, default=str) if args.json else format_status(status))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lancedb-ray", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="start the service and block")
    serve_parser.add_argument("--host", help="HTTP host (default 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, help="HTTP port (default 8000)")
    serve_parser.add_argument("--storage", help="storage root URI: a path, az:// or abfss://")
    serve_parser.add_argument("--api-key", help="the API key clients must send")
    serve_parser.add_argument("--config", help="settings YAML file")
    serve_parser.add_argument("--address", help="join this Ray cluster instead of starting one")
    serve_parser.set_defaults(handler=serve_command)

    jobs_parser = commands.add_parser("jobs", help="list the agent's jobs")
    jobs_parser.add_argument("--config", help="settings YAML file (where the job store is)")
    jobs_parser.add_argument("--url", help="ask this service's admin endpoint instead of storage")
    jobs_parser.add_argument("--api-key", help="API key for --url (default: the first configured)")
    jobs_parser.add_argument("--state", choices=["pending", "running", "succeeded", "failed"])
    jobs_parser.add_argument("--database")
    jobs_parser.add_argument("--table")
    jobs_parser.add_argument("--limit", type=int, default=50)
    jobs_parser.add_argument("--json", action="store_true", help="print JSON records")
    jobs_parser.set_defaults(handler=jobs_command)

    status_parser = commands.add_parser("status", help="one screen on the running service")
    status_parser.add_argument("--address", help="the Ray cluster (default: RAY_ADDRESS, else auto)")
    status_parser.add_argument("--config", help="settings YAML file (the executors' namespace)")
    status_parser.add_argument("--json", action="store_true", help="print JSON")
    status_parser.set_defaults(handler=status_command)

    keys.add_parser(commands)

    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
