"""Secrets reach the test cluster's processes as a deployment gives them: from a file of their own.

The session's ``ray.init`` runs with ``LANCEDB_RAY_SECRETS`` naming a file (as a Kubernetes
Secret mounted on every pod), so every Ray process reads the secrets a test shares there;
``Settings.to_plain`` refuses secrets given in code only. Environment variables would do as
well, but they apply to every settings object of the session (a database named in one would
appear in every test's catalog); the file fills only the sections a test's settings have.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from lancedb_ray.settings import Settings

ENV = "LANCEDB_RAY_SECRETS"


@contextmanager
def secrets_file(path: Path) -> Iterator[Path]:
    """``$LANCEDB_RAY_SECRETS`` names ``path`` (empty) while the block runs: start Ray inside it."""
    path.write_text("{}\n")
    previous = os.environ.get(ENV)
    os.environ[ENV] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = previous


@contextmanager
def shared(settings: Settings) -> Iterator[None]:
    """Every secret of ``settings`` in the session's secrets file while the block runs."""
    path = Path(os.environ[ENV])
    before = path.read_text()
    _write(path, _merge(yaml.safe_load(before) or {}, _secrets(settings.model_dump())))
    try:
        yield
    finally:
        _write(path, yaml.safe_load(before) or {})


def _secrets(value: Any) -> Any:
    """The secret leaves of a settings dump, revealed, in their places."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        found = {k: _secrets(v) for k, v in value.items()}
        return {k: v for k, v in found.items() if v not in (None, {})}
    return None


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        merged[key] = _merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def _write(path: Path, data: dict[str, Any]) -> None:
    """Atomically: Ray processes may read the file at any moment."""
    partial = path.with_suffix(".partial")
    partial.write_text(yaml.safe_dump(data))
    partial.replace(path)
