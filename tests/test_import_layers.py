"""Imports flow one way: api -> service -> execution -> storage.

Read from the source with ``ast`` (imports inside functions included), so a
cycle cannot hide behind a lazy import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lancedb_ray"
LAYERS = ["storage", "execution", "service", "api"]  # bottom to top
# Shared by every layer; they may lean on storage's leaf helpers (names), never on a layer above.
BOTTOM = ["errors", "types", "protocol", "settings", "metrics"]


def _imported(path: Path) -> set[str]:
    """The ``lancedb_ray`` sub-packages or modules that ``path`` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "lancedb_ray":
                names = [f"lancedb_ray.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "lancedb_ray" and len(parts) > 1:
                found.add(parts[1])
    return found


def _modules(top: str) -> list[Path]:
    root = PACKAGE / top
    return sorted(root.rglob("*.py")) if root.is_dir() else [PACKAGE / f"{top}.py"]


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_nothing_above_it(layer: str) -> None:
    above = set(LAYERS[LAYERS.index(layer) + 1:])
    wrong = {str(p.relative_to(PACKAGE)): sorted(_imported(p) & above) for p in _modules(layer)}
    assert {path: names for path, names in wrong.items() if names} == {}


@pytest.mark.parametrize("module", BOTTOM)
def test_shared_modules_import_no_layer(module: str) -> None:
    wrong = {str(p.relative_to(PACKAGE)): sorted(_imported(p) & set(LAYERS[1:])) for p in _modules(module)}
    assert {path: names for path, names in wrong.items() if names} == {}


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from lancedb_ray.service.tables import X\n    import lancedb_ray.api\n")
    assert _imported(source) == {"service", "api"}
