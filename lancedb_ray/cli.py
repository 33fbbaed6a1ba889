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
from typing import Any

from lancedb_ray import keys
from lancedb_ray.settings import Settings

APP_NAME = "lancedb"


def _serve_settings(args: argparse.Namespace) -> Settings:
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
    return Settings.load(args.config, **overrides)


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


def _wait_running(serve: Any, stop: threading.Event, timeout_s: float) -> None:
    """Until every deployment of the app runs (the ingress reconfigures until then)."""
    deadline = time.monotonic() + timeout_s
    while not stop.is_set():
        application = serve.status().applications.get(APP_NAME)
        if application is not None and application.status == "RUNNING":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the application did not start in {timeout_s}s")
        time.sleep(0.5)


def serve_command(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    settings = _serve_settings(args)
    try:
        keys.check_serving(settings)
    except ValueError as exc:
        print(f"lancedb-ray: {exc}", file=sys.stderr)
        return 2
    if args.config:  # every Ray process then reads the file's secrets itself (Settings.to_plain)
        os.environ["LANCEDB_RAY_CONFIG"] = os.path.abspath(args.config)
    # Ctrl-C (or SIGTERM) at any point, during start-up too, leads to the same clean stop.
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if settings.server.proxy == "haproxy":
        os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    address = settings.ray.address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, namespace=settings.ray.namespace, log_to_driver=False)
    # Imported once Ray's processes are started: lancedb's runtime must not be forked.
    from lancedb_ray.api.app import build_app

    serve.start(http_options={"host": settings.server.host, "port": settings.server.port})
    serve.run(
        build_app({"settings": settings.to_plain()}),
        name=APP_NAME,
        route_prefix="/",
        blocking=False,
    )
    url = f"http://{settings.server.host}:{settings.server.port}"
    if not stop.is_set():
        _wait_running(serve, stop, timeout_s=300)
        _wait_healthy(url, timeout_s=120)
        key = args.api_key or (keys.DEV_KEY if keys.accepts(settings, keys.DEV_KEY) else "<your key>")
        print(f"lancedb-ray is serving at {url}", flush=True)
        print(f"  storage: {settings.storage.root.uri or settings.storage.root.container}")
        print(f"  connect: lancedb.connect('db://mydb', api_key='{key}', host_override='{url}')")
        print("Press Ctrl-C to stop.", flush=True)
    stop.wait()
    print("stopping...", flush=True)
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
    print("stopped", flush=True)
    return 0


def jobs_command(args: argparse.Namespace) -> int:
    """Print the agent's jobs: through the admin endpoint with --url, else from the job store."""
    from lancedb_ray.agent.report import fetch_jobs, format_jobs, read_jobs

    settings = Settings.load(args.config)
    filters = {"state": args.state, "database": args.database, "table": args.table,
               "limit": args.limit}
    if args.url:
        key = args.api_key or keys.DEV_KEY
        jobs = fetch_jobs(args.url, key, **filters)
    else:
        jobs = read_jobs(settings, **filters)
    print(json.dumps(jobs, indent=1) if args.json else format_jobs(jobs))
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

    keys.add_parser(commands)

    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
