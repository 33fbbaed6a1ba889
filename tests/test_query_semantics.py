"""Query semantics lance decides for the whole query, checked on the service's split plans.

The service runs a query as sub-plans (index segments, buckets of unindexed fragments,
cached bucket copies); these tests compare with embedded lancedb where a sub-plan could
decide differently from lance: the distance metric, and how a filter names its columns.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from lancedb.index import IvfPq

from tests.support.api import (
    DIM,
    RawClient,
    make_rows,
    query_vector,
    raw_fixture,  # noqa: F401
    read_arrow_file,
)
from tests.support.service import INDEXED

pytestmark = pytest.mark.ray

QUERY = query_vector(7)


def _same(remote: pa.Table, local: pa.Table) -> None:
    assert remote.column("id").to_pylist() == local.column("id").to_pylist()
    np.testing.assert_allclose(remote.column("_distance").to_numpy(), local.column("_distance").to_numpy(),
                               rtol=1e-5, atol=1e-6)


def _near_the_query(n: int, start: int) -> pa.Table:
    """Rows pointing the query's way but far from it: first by cosine distance, last by l2."""
    rows = make_rows(n, start=start, seed=5)
    noise = np.random.default_rng(5).standard_normal((n, DIM)) * 0.05
    vectors = (np.outer(np.linspace(4, 9, n), QUERY) + noise).astype(np.float32)
    return rows.set_column(1, "vector", pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM))


def test_a_query_without_metric_uses_the_index_metric_for_unindexed_rows_too(db, embedded) -> None:
    """No distance_type: lance ranks every row, indexed or not, by the vector index's metric."""
    tables = []
    for conn in (db, embedded):
        table = conn.create_table("items", make_rows(300))
        table.create_index("vector", config=IvfPq(distance_type="cosine", num_partitions=2,
                                                   num_sub_vectors=2), wait_timeout=INDEXED)
        for batch in range(3):  # three unindexed fragments: two buckets with fragments_per_group=2
            table.add(_near_the_query(6, start=1000 + 6 * batch))
        tables.append(table)
    remote, local = tables

    def exact(t, k: int = 12):  # every partition probed and every candidate re-ranked: exact on both
        return t.search(QUERY).nprobes(2).refine_factor(300).limit(k)

    remote_top, local_top = exact(remote).to_arrow(), exact(local).to_arrow()
    assert sum(i >= 1000 for i in local_top.column("id").to_pylist()) >= 6  # unindexed rows rank
    _same(remote_top, local_top)
    _same(exact(remote, 40).to_arrow(), exact(local, 40).to_arrow())
    for build in (lambda t: exact(t).distance_type("cosine"),
                  lambda t: exact(t).distance_type("l2"),  # not the index's metric: brute force in lance
                  lambda t: exact(t).distance_type("dot"),
                  lambda t: t.search(QUERY).bypass_vector_index().limit(12),  # no index: l2, as lance
                  lambda t: t.search(QUERY).where("id >= 1000").bypass_vector_index().limit(12)):
        _same(build(remote).to_arrow(), build(local).to_arrow())


@pytest.mark.parametrize("where", [
    "\"tag\" = 't2'",
    "\"Tag Name\" = 'b' AND \"id\" > 5",
    "`Tag Name` = 'a' OR tag = 'say \"t1\"'",
    "\"tag\" IN ('t0', 't1') AND \"Tag Name\" <> 'a'",
])
def test_double_quoted_column_names_in_filters(db, embedded, raw: RawClient, where: str) -> None:
    """A double-quoted name is a column, as in embedded lancedb, on cached bucket copies too.

    The official Python client rewrites such names in backticks before sending; the SQL text
    the protocol carries may still hold double quotes (raw HTTP, other clients), and pylance
    would read them as string literals.
    """
    data = pa.table({"id": pa.array(range(40), pa.int64()),
                     "vector": pa.FixedSizeListArray.from_arrays(
                         pa.array(np.random.default_rng(3).standard_normal(40 * DIM), pa.float32()), DIM),
                     "tag": [f"t{i % 3}" for i in range(40)],
                     "Tag Name": ["ab"[i % 2] for i in range(40)]})
    tables = []
    for conn in (db, embedded):
        table = conn.create_table("quoted", data.slice(0, 10))
        for start in (10, 20, 30):  # four fragments: two buckets with fragments_per_group=2
            table.add(data.slice(start, 10))
        tables.append(table)
    remote, local = tables
    expected = local.search().where(where).select(["id"]).limit(None).to_arrow().sort_by("id")
    assert 0 < expected.num_rows < 40

    # The filter text as sent, double quotes included.
    counted = raw.post("/v1/table/quoted/count_rows/", json_body={"predicate": where})
    assert counted.json() == expected.num_rows
    for columns in (["id"], None):  # a copy pruned to the named columns, and one of every column
        sent = raw.query("quoted", {"filter": where, "k": 100, "columns": columns})
        assert sent.status_code == 200, sent.text
        assert read_arrow_file(sent.content).select(["id"]).sort_by("id") == expected
    for prefilter in (True, False):
        sent = raw.query("quoted", {"vector": QUERY, "k": 5, "filter": where, "prefilter": prefilter})
        assert sent.status_code == 200, sent.text
        _same(read_arrow_file(sent.content),
              local.search(QUERY).where(where, prefilter=prefilter).limit(5).to_arrow())

    # Through the official client.
    assert remote.count_rows(where) == expected.num_rows
    for build in (lambda t: t.search().where(where).select(["id"]).limit(None),
                  lambda t: t.search().where(where).limit(None),
                  # a double-quoted token in a projection is a string literal in embedded lancedb
                  lambda t: t.search().where(where).select({"id": "id", "name": '"Tag Name"'}).limit(None)):
        assert build(remote).to_arrow().sort_by("id") == build(local).to_arrow().sort_by("id")
