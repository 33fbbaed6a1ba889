"""API key management: ``lancedb-ray keys create`` and the start-up checks on keys.

A new key is random, its SHA-256 digest goes into the settings file (never the
key), and the key is printed once, alone on the last line, for the operator to
hand over. Kept apart from the server so the CLI imports nothing heavy.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

import yaml

from lancedb_ray.settings import DEV_KEY, ApiKey, Role, Settings, key_digest

KEY_PREFIX = "lrk_"


def generate() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def check_serving(settings: Settings) -> None:
    """Refuse to serve with no key, or with the documented development key off loopback."""
    keys = settings.server.api_keys
    if not keys:
        raise ValueError("server.api_keys is empty, so no client could connect: add a key with "
                         "'lancedb-ray keys create --config FILE --name NAME --databases \"*\" "
                         "--role admin'")
    if not _is_loopback(settings.server.host) and accepts(settings, DEV_KEY):
        raise ValueError(f"the development key '{DEV_KEY}' is accepted only on loopback, and "
                         f"server.host is {settings.server.host}: configure keys of your own "
                         "('lancedb-ray keys create')")


def accepts(settings: Settings, key: str) -> bool:
    return any(hmac.compare_digest(k.sha256, key_digest(key)) for k in settings.server.api_keys)


def add_key(config: Path, name: str, databases: list[str], role: Role) -> str:
    """Add a new key's entry to the YAML settings file ``config``; return the key itself."""
    data: dict[str, Any] = (yaml.safe_load(config.read_text()) or {}) if config.exists() else {}
    server = data.setdefault("server", {})
    entries = server.setdefault("api_keys", [])
    if any(isinstance(e, dict) and e.get("name") == name for e in entries):
        raise ValueError(f"{config} already has a key named '{name}'")
    key = generate()
    entry = ApiKey(name=name, sha256=key_digest(key), databases=databases, role=role)
    entries.append(entry.model_dump(mode="json", exclude_none=True))
    _replace(config, yaml.safe_dump(data, sort_keys=False))
    return key


def create_command(args: argparse.Namespace) -> int:
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    try:
        key = add_key(Path(args.config), args.name, databases, Role(args.role))
    except ValueError as exc:  # pydantic's ValidationError included: a bad name or pattern
        print(f"lancedb-ray keys create: {exc}")
        return 2
    print(f"added key '{args.name}' (role {args.role}, databases {', '.join(databases)}) to "
          f"{args.config}; only its SHA-256 digest is stored. The key, shown this once:")
    print(key, flush=True)
    return 0


def add_parser(commands: Any) -> None:
    """Register ``keys create`` on the CLI's subcommands."""
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command",
                                                                             required=True)
    create = keys.add_parser("create", help="generate a key and add its digest to a settings file")
    create.add_argument("--config", required=True, help="settings YAML file to add the key to")
    create.add_argument("--name", required=True, help="the key's name (shown in logs, never the key)")
    create.add_argument("--databases", required=True,
                        help="comma-separated database names or prefix* patterns ('*': all)")
    create.add_argument("--role", choices=[r.value for r in Role], default=Role.READ.value)
    create.set_defaults(handler=create_command)


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, keeping the file's permissions."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
