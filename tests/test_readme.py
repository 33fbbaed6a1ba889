"""The README's Python examples run as written against the live service, and match embedded lancedb.

Each ```python block of README.md is executed with only the connection changed:
the README's URL and key become the live service's, and its database a fresh one.
The quickstart then runs a second time on embedded lancedb, and both leave the same rows.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import lancedb
import pytest

from tests.support.service import LiveService

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_URL = 'host_override="http://127.0.0.1:8000"'
_KEY = 'api_key="lancedb-ray-dev-key"'
_DATABASE = '"db://mydb"'


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of every Python block of the README."""
    text = README.read_text()
    return [(text.count("\n", 0, match.start()) + 2, match.group(1)) for match in _BLOCK.finditer(text)]


def _for_service(code: str, live_service: LiveService, database: str) -> str:
    for old, new in ((_URL, f'host_override="{live_service.url}"'),
                     (_KEY, f'api_key="{live_service.api_key}"'), (_DATABASE, f'"db://{database}"')):
        code = code.replace(old, new)
    return code


def _run(code: str, line: int) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102 - the README's own code
    return namespace


def _rows(table: Any) -> list[tuple[Any, ...]]:
    columns = [name for name in ("id", "text", "double") if name in table.schema.names]
    data = table.search().select(columns).limit(table.count_rows()).to_arrow().sort_by("id")
    return list(zip(*(data.column(name).to_pylist() for name in data.column_names), strict=True))


def test_readme_has_the_examples_this_test_relies_on() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 2, "the connect example and the quickstart"
    for _line, code in blocks:
        assert _URL in code and _KEY in code and _DATABASE in code, "each example connects as documented"


@pytest.mark.parametrize(("line", "code"), python_blocks(),
                         ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_readme_example_runs_against_the_service(
    live_service: LiveService, tmp_path: Path, line: int, code: str
) -> None:
    database = f"readme{uuid.uuid4().hex[:8]}"
    remote = _run(_for_service(code, live_service, database), line)
    if "table" not in remote:
        assert isinstance(remote["db"], lancedb.DBConnection)
        remote["db"].table_names()  # the connection answers
        return
    # The same block on embedded lancedb, the oracle: the same rows survive every step.
    local = _run(code.replace(_DATABASE, repr(str(tmp_path / "embedded")))
                 .replace(f", {_KEY}", "").replace(_KEY, "")
                 .replace(_URL, ""), line)
    assert remote["table"].count_rows() == local["table"].count_rows()
    assert remote["table"].schema == local["table"].schema
    assert _rows(remote["table"]) == _rows(local["table"])
    assert [v["version"] for v in remote["table"].list_versions()] == [
        v["version"] for v in local["table"].list_versions()
    ]
