"""Once a write has committed, the client hears success, whatever fails afterwards.

A 5xx after a commit would make the client retry (with a new request id) and
apply the write twice, so the change event and the bookkeeping after the
commit must never fail the request. The fault is injected into the change sink
of an in-process query node; embedded lancedb, given the same operations, says
what the table must hold (each write applied exactly once).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lancedb.index import BTree

from tests.support.api import all_rows, make_rows
from tests.support.local_node import LocalNode
from tests.support.service import INDEXED

pytestmark = pytest.mark.ray


@pytest.fixture
def failing_sink(local_node: LocalNode) -> Iterator[LocalNode]:
    local_node.sink.fail = True
    local_node.sink.failures = 0
    yield local_node
    local_node.sink.fail = False


def test_writes_succeed_once_when_the_change_event_fails(failing_sink: LocalNode, embedded) -> None:
    db = failing_sink.service.connect(client_config={"retry_config": {"retries": 3}})
    tables = [db.create_table("items", make_rows(20)), embedded.create_table("items", make_rows(20))]
    source = make_rows(10, start=15, seed=1)
    for table in tables:
        table.add(make_rows(5, start=100, seed=2))
        table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(
            source)
        table.delete("id < 3")
        table.update(where="id = 5", values_sql={"price": "price + 1"})
        table.add_columns({"twice": "price * 2"})
        table.alter_columns({"path": "twice", "rename": "double"})
        table.drop_columns(["double"])
        table.create_index("id", config=BTree(), wait_timeout=INDEXED)
        table.drop_index("id_idx")
        table.restore(2)
        table.add(make_rows(3, start=200, seed=3), mode="overwrite")
    remote, local = tables
    assert failing_sink.sink.failures >= 12  # every write above hit the failing sink
    assert remote.version == local.version
    assert [v["version"] for v in remote.list_versions()] == [
        v["version"] for v in local.list_versions()]
    assert all_rows(remote) == all_rows(local)
    db.drop_table("items")
    assert db.list_tables().tables == []
