"""A differential state machine: random sequences of client operations, on the service and on
embedded lancedb in lockstep, must give the same answers and leave the same tables.

Hypothesis drives the official Python client against the service in both deployment modes
(plan executors on: the session's Serve app, whose small fragment groups split scans and
searches into buckets; executors off: an in-process query node) and embedded lancedb on a
local directory. After every step both tables must agree (version, schema, every row);
every query must give the same answer (ids and distances for exact search, ordered where
ordering is defined; per query vector when one query has several). Hybrid search and search
through a vector index compare what is determined (see their rules). CI runs a bounded,
derandomized number of examples; set ``LANCEDB_RAY_STATEFUL=long`` for a longer random search.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import tempfile
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from lancedb.index import FTS, Bitmap, BTree, IvfPq, LabelList

from tests.support.local_node import LocalNode
from tests.support.service import STATEFUL_DATABASES, LiveService, wait_for_index_builds

pytestmark = pytest.mark.ray

DIM = 4
SCHEMA = pa.schema([
    pa.field("id", pa.int64(), nullable=False),
    pa.field("vector", pa.list_(pa.float32(), DIM), nullable=False),
    pa.field("text", pa.string()),
    pa.field("price", pa.float64()),
    pa.field("labels", pa.list_(pa.string())),  # for LABEL_LIST indexes and array filters
])
_LONG = os.environ.get("LANCEDB_RAY_STATEFUL") == "long"
PROFILE = settings(
    max_examples=60 if _LONG else 6,
    stateful_step_count=40 if _LONG else 14,
    derandomize=not _LONG,  # CI: the same sequences every run
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
    print_blob=True,
)

# -- data ------------------------------------------------------------------------------------

KEYS = st.integers(0, 12)
VECTORS = st.lists(st.floats(-4, 4, width=32, allow_nan=False), min_size=DIM, max_size=DIM).filter(
    lambda v: any(abs(x) > 1e-2 for x in v))  # no zero vectors: cosine is undefined there
TEXTS = st.one_of(st.none(), st.sampled_from(["a", "b", "kiwi pie", "apple kiwi", "it's"]))
PRICES = st.one_of(st.none(), st.integers(-20, 20).map(lambda i: i / 4))
LABELS = st.one_of(st.none(), st.lists(st.sampled_from(["red", "green", "blue"]), max_size=3))
ROWS = st.lists(st.tuples(KEYS, VECTORS, TEXTS, PRICES, LABELS), max_size=8)
MERGE_COLUMNS = st.sampled_from([
    ("id", "vector", "text", "price", "labels"), ("id", "labels"), ("id", "vector", "price"),
    ("id", "price"), ("id", "text"), ("price", "id", "vector"),
])
FILTERS = st.sampled_from([
    None, "id < 6", "price IS NULL", "price > 0", "text IN ('a', 'kiwi pie')", "id % 2 = 0",
    "text IS NOT NULL AND id > 3", "text LIKE '%kiwi%'", "NOT (price < 1)",
    "array_has_any(labels, ['red'])", "array_has_all(labels, ['red', 'blue'])",
    "array_contains(labels, 'green') AND id > 2",
])
PREDICATES = st.sampled_from([
    "id < 3", "price IS NULL", "text = 'a'", "price > 2.5", "id % 3 = 1", "id > 100",
])
UPDATES = st.sampled_from([
    {"values": {"text": "updated"}}, {"values": {"price": None}},
    {"values_sql": {"price": "price + 1"}}, {"values_sql": {"text": "concat(text, '!')"}},
    {"values_sql": {"price": "id * 2.5", "text": "'x'"}},
])
PROJECTIONS = st.sampled_from([None, ["id"], ["id", "price"], {"id": "id", "p2": "price * 2"}])
INDEXES = {
    "id_btree": ("id", BTree()), "text_bitmap": ("text", Bitmap()), "text_fts": ("text", FTS()),
    "vector_ivf_pq": ("vector", IvfPq(num_partitions=2, num_sub_vectors=2)),
    "labels_label_list": ("labels", LabelList()),
}
# Column changes (lance's alter_columns): casts, renames, nullability, and ones that must fail.
EXTRA_ALTERATIONS = st.sampled_from([
    {"data_type": pa.float32()}, {"rename": "bonus"}, {"nullable": False}, {"data_type": pa.int64()},
])
ALTERATIONS = st.sampled_from([
    {"path": "id", "nullable": True}, {"path": "text", "nullable": False},
    {"path": "price", "data_type": pa.float32()}, {"path": "text", "data_type": pa.int32()},
    {"path": "nope", "rename": "x"}, {"path": "text", "rename": "id"},
])
ORDERINGS = st.one_of(st.none(), st.lists(
    st.fixed_dictionaries({"column_name": st.sampled_from(["id", "price", "text"]),
                           "ascending": st.booleans(), "nulls_first": st.booleans()}),
    min_size=1, max_size=2, unique_by=lambda o: o["column_name"]))


def _table(rows: list[tuple], columns: tuple[str, ...] = tuple(SCHEMA.names)) -> pa.Table:
    full = pa.Table.from_pylist(
        [dict(zip(SCHEMA.names, row, strict=True)) for row in rows], schema=SCHEMA)
    return full.select(list(columns))


class Failure(str):
    """An error's message: shown when outcomes differ, but any two failures compare equal (the
    remote client raises HttpError where embedded raises ValueError, with other wording)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Failure)

    def __hash__(self) -> int:
        return 0


def _outcome(operation: Callable[[], Any]) -> tuple[str, Any]:
    """The value, or that it failed (with why, for the report)."""
    try:
        return "ok", operation()
    except Exception as exc:  # noqa: BLE001 - that it failed is what is compared
        return "error", Failure(str(exc)[:500])


def _rows(table: pa.Table) -> list[str]:
    return sorted(repr(row) for row in table.to_pylist())


def _merge_counts(result: Any) -> tuple[int, int, int]:
    return (result.num_updated_rows, result.num_inserted_rows, result.num_deleted_rows)


# -- comparing answers ------------------------------------------------------------------------


def same_nearest(remote: pa.Table, local: pa.Table, boundary_tie: bool,
                 ordering: list[dict] | None, offset: int) -> None:
    """Exact search: same distances; same rows unless a tie at the k-th distance leaves the
    choice open; in the requested order (distance, or the order_by keys).

    With ``order_by`` lance sorts the nearest k+offset rows by the keys, then skips ``offset``:
    rows tied on the keys may fall on either side of the offset, so only the key sequence is
    determined there.
    """
    if remote.schema.names != local.schema.names:  # an alias map: the client sorts its keys
        remote, local = remote.select(sorted(remote.schema.names)), local.select(
            sorted(local.schema.names))
    assert remote.schema.names == local.schema.names
    keys = [o["column_name"] for o in ordering or []]
    if boundary_tie:
        assert remote.num_rows == local.num_rows
        return
    if keys and all(k in remote.schema.names for k in keys):
        assert remote.select(keys) == local.select(keys)
    if ordering and offset:
        return
    rd = remote.column("_distance").to_pylist()
    ld = local.column("_distance").to_pylist()
    np.testing.assert_allclose(sorted(rd), sorted(ld), rtol=1e-5, atol=1e-5)
    others = [n for n in remote.schema.names if n != "_distance"]
    assert _rows(remote.select(others)) == _rows(local.select(others))
    if not ordering:
        np.testing.assert_allclose(rd, ld, rtol=1e-5, atol=1e-5)


def has_boundary_tie(all_distances: list[float], n: int) -> bool:
    """Whether the n-th and (n+1)-th nearest are equally near (which one is in is open)."""
    if n <= 0 or n >= len(all_distances):
        return False
    return math.isclose(all_distances[n - 1], all_distances[n], rel_tol=1e-6, abs_tol=1e-6)


def _ties(values: list[float]) -> bool:
    """Whether two neighbours in a ranking are equal (their order is then open)."""
    return any(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in itertools.pairwise(values))


# -- the machine ------------------------------------------------------------------------------


class DifferentialMachine(RuleBasedStateMachine):
    """One table on the service and its twin in embedded lancedb."""

    SERVICE: LiveService  # set by the subclass for a deployment mode

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="stateful-embedded-")
        self.database = f"{STATEFUL_DATABASES[:-1]}{uuid.uuid4().hex[:10]}"  # no agent maintenance
        self.remote_db = self.SERVICE.connect(self.database)
        self.local_db = lancedb.connect(self.directory)
        self.remote: Any = None
        self.local: Any = None
        self.extra: str | None = None  # the added column's name, while there is one

    def teardown(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def both(self, operation: Callable[[Any], Any]) -> tuple[Any, Any]:
        return operation(self.remote), operation(self.local)

    def same_outcome(self, operation: Callable[[Any], Any]) -> Any:
        remote, local = self.both(lambda t: _outcome(lambda: operation(t)))
        assert remote == local, (remote, local)
        return remote

    # -- lifecycle ---------------------------------------------------------------------------

    @initialize(rows=ROWS, empty=st.booleans())
    def create(self, rows: list[tuple], empty: bool) -> None:
        if empty:
            self.remote = self.remote_db.create_table("t", schema=SCHEMA)
            self.local = self.local_db.create_table("t", schema=SCHEMA)
        else:
            self.remote = self.remote_db.create_table("t", _table(rows))
            self.local = self.local_db.create_table("t", _table(rows))

    @rule(rows=ROWS, mode=st.sampled_from(["overwrite", "exist_ok", "create"]))
    def create_again(self, rows: list[tuple], mode: str) -> None:
        kwargs = {"mode": "overwrite"} if mode == "overwrite" else {"exist_ok": mode == "exist_ok"}
        remote, local = (_outcome(lambda db=db: db.create_table("t", _table(rows), **kwargs))
                         for db in (self.remote_db, self.local_db))
        assert remote[0] == local[0]
        if mode == "overwrite" and remote[0] == "ok":
            self.extra = None
        # Re-open: a handle's view of a re-created table is not what the test is about.
        self.remote, self.local = self.remote_db.open_table("t"), self.local_db.open_table("t")

    # -- writes ------------------------------------------------------------------------------

    @rule(rows=ROWS)
    def add(self, rows: list[tuple]) -> None:
        self.same_outcome(lambda t: t.add(_table(rows)).version)

    @rule(rows=ROWS)
    def overwrite(self, rows: list[tuple]) -> None:
        self.same_outcome(lambda t: t.add(_table(rows), mode="overwrite").version)
        self.extra = None

    @rule(rows=ROWS, columns=MERGE_COLUMNS, update=st.booleans(), insert=st.booleans(),
          delete=st.booleans(), update_filter=st.sampled_from([None, "target.price > 0"]),
          delete_filter=st.sampled_from([None, "id > 8"]))
    def merge_insert(self, rows: list[tuple], columns: tuple[str, ...], update: bool,
                     insert: bool, delete: bool, update_filter: str | None,
                     delete_filter: str | None) -> None:
        if not rows:
            return  # the remote client refuses an empty source itself ("Cannot scan an empty
            # Vec<RecordBatch>") before sending; embedded commits it: a client difference
        source = _table(rows, columns)

        def merge(t: Any, use_index: bool = True) -> tuple[int, int, int]:
            builder = t.merge_insert("id")
            if not use_index:
                builder = builder.use_index(False)
            if update:
                builder = builder.when_matched_update_all(where=update_filter)
            if insert:
                builder = builder.when_not_matched_insert_all()
            if delete:
                builder = builder.when_not_matched_by_source_delete(delete_filter)
            return _merge_counts(builder.execute(source))

        remote, local = self.both(lambda t: _outcome(lambda: merge(t)))
        if local[0] == "error" and "rust future panicked" in local[1]:
            # lancedb 0.40's index-assisted merge panics on a partial-column source with a
            # when_matched filter ("Incorrect number of arrays for StructArray fields"); pylance
            # 14, which the service uses, does not. The same merge without the index (whose
            # answer an index must not change) is the oracle then.
            local = _outcome(lambda: merge(self.local, use_index=False))
        assert remote == local, (remote, local)

    @rule(predicate=PREDICATES)
    def delete(self, predicate: str) -> None:
        self.same_outcome(lambda t: t.delete(predicate).num_deleted_rows)

    @rule(where=st.one_of(st.none(), PREDICATES), update=UPDATES)
    def update(self, where: str | None, update: dict[str, Any]) -> None:
        self.same_outcome(lambda t: t.update(where=where, **update).rows_updated)

    @precondition(lambda self: self.extra is None)
    @rule()
    def add_column(self) -> None:
        self.same_outcome(lambda t: t.add_columns({"extra": "price * 2"}).version)
        self.extra = "extra"

    @precondition(lambda self: self.extra is not None)
    @rule()
    def drop_column(self) -> None:
        self.same_outcome(lambda t: t.drop_columns([self.extra]).version)
        self.extra = None

    @precondition(lambda self: self.extra is not None)
    @rule(change=EXTRA_ALTERATIONS)
    def alter_extra_column(self, change: dict[str, Any]) -> None:
        """The added column: cast (also to a type its values do not fit), rename, nullability."""
        self.same_outcome(lambda t: t.alter_columns({"path": self.extra, **change}).version)
        self._find_extra()

    @rule(change=ALTERATIONS)
    def alter_column(self, change: dict[str, Any]) -> None:
        """Columns other rules use: only changes that keep them usable, or that must fail."""
        self.same_outcome(lambda t: t.alter_columns(change).version)
        self._find_extra()

    def _find_extra(self) -> None:
        self.extra = next((n for n in ("extra", "bonus") if n in self.local.schema.names), None)

    @rule(back=st.integers(1, 3))
    def restore(self, back: int) -> None:
        version = max(1, self.local.version - back)
        self.same_outcome(lambda t: t.restore(version))
        self._find_extra()

    @rule(rows=st.integers(200, 300), seed=st.integers(0, 3))
    def add_many(self, rows: int, seed: int) -> None:
        """Enough rows to train a vector index (IVF_PQ needs a few hundred)."""
        rng = np.random.default_rng(seed)
        data = [(int(i % 40), rng.uniform(-4, 4, DIM).astype(np.float32).tolist(),
                 ["a", "b", "kiwi pie", None][i % 4], float(i % 9) / 2,
                 [None, [], ["red"], ["green", "blue"], ["red", "blue"]][i % 5]) for i in range(rows)]
        self.same_outcome(lambda t: t.add(_table(data)).version)

    @rule(kind=st.sampled_from(sorted(INDEXES)))
    def create_index(self, kind: str) -> None:
        column, config = INDEXES[kind]
        self.same_outcome(lambda t: t.create_index(column, config=config))
        wait_for_index_builds(self.SERVICE, self.database, "t")  # wait_timeout: not for a tiny IVF_PQ
        self.same_outcome(lambda t: sorted((i.name, i.index_type, tuple(i.columns))
                                           for i in t.list_indices()))

    @rule(data=st.data())
    def drop_index(self, data: st.DataObject) -> None:
        names = sorted(i.name for i in self.local.list_indices())
        if names:
            name = data.draw(st.sampled_from(names))
            self.same_outcome(lambda t: t.drop_index(name))

    @rule(tag=st.sampled_from(["one", "two"]), back=st.integers(0, 2))
    def tag_and_checkout(self, tag: str, back: int) -> None:
        version = max(1, self.local.version - back)
        outcome = self.same_outcome(lambda t: t.tags.create(tag, version))
        if outcome[0] == "error":
            self.same_outcome(lambda t: t.tags.update(tag, version))
        assert self.remote.tags.list()[tag]["version"] == self.local.tags.list()[tag]["version"]
        self.both(lambda t: t.checkout(tag))
        self.same_outcome(lambda t: t.version)
        remote, local = self.both(lambda t: t.search().limit(None).to_arrow())
        assert _rows(remote) == _rows(local)
        self.both(lambda t: t.checkout_latest())

    # -- reads -------------------------------------------------------------------------------

    def _has_index(self, kind: str) -> bool:
        return any(i.index_type.upper().replace("_", "") == kind.replace("_", "")
                   for i in self.local.list_indices())  # lancedb says "IvfPq", "FTS", "BTree"

    @rule(term=st.sampled_from(["kiwi", "pie", "apple", "a"]), k=st.integers(1, 20),
          where=FILTERS)
    def full_text_search(self, term: str, k: int, where: str | None) -> None:
        if not self._has_index("FTS"):
            return

        def search(t: Any) -> pa.Table:
            builder = t.search(term, query_type="fts")
            if where:
                builder = builder.where(where)
            return builder.limit(k).to_arrow()

        remote, local = self.both(lambda t: _outcome(lambda: search(t)))
        assert remote[0] == local[0]
        if remote[0] == "ok":
            r, lo = remote[1], local[1]
            assert r.num_rows == lo.num_rows
            np.testing.assert_allclose(sorted(r.column("_score").to_pylist()),
                                       sorted(lo.column("_score").to_pylist()), rtol=1e-5)

    @rule(q=VECTORS, k=st.integers(1, 12), where=FILTERS, prefilter=st.booleans(),
          columns=PROJECTIONS, offset=st.integers(0, 3), ordering=ORDERINGS,
          metric=st.sampled_from(["l2", "cosine", "dot"]))
    def vector_search(self, q: list[float], k: int, where: str | None, prefilter: bool,
                      columns: Any, offset: int, ordering: list[dict] | None,
                      metric: str) -> None:
        exact = self._has_index("IVF_PQ")  # the invariant is about exact search

        def search(t: Any) -> pa.Table:
            builder = t.search(q).distance_type(metric)
            if exact:
                builder = builder.bypass_vector_index()
            if where:
                builder = builder.where(where, prefilter=prefilter)
            if columns is not None:
                builder = builder.select(columns)
            if ordering:
                builder = builder.order_by(ordering)
            return builder.limit(k).offset(offset).to_arrow()

        remote, local = self.both(lambda t: _outcome(lambda: search(t)))
        assert remote[0] == local[0], (remote, local)
        if remote[0] == "error":
            return
        population = self.local.count_rows(where if where and prefilter else None)
        distances = sorted(self.local.search(q).distance_type(metric)
                           .where(where if where and prefilter else None, prefilter=True)
                           .select([]).limit(max(1, population)).to_arrow()
                           .column("_distance").to_pylist()) if population else []
        same_nearest(remote[1], local[1], has_boundary_tie(distances, k + offset), ordering, offset)

    def _exact_distances(self, q: list[float], metric: str, where: str | None) -> list[float]:
        """Every (pre-filtered) row's exact distance to q, nearest first, from embedded."""
        population = self.local.count_rows(where)
        if not population:
            return []
        return sorted(self.local.search(q).distance_type(metric).bypass_vector_index()
                      .where(where, prefilter=True).select([]).limit(population).to_arrow()
                      .column("_distance").to_pylist())

    @rule(queries=st.lists(VECTORS, min_size=2, max_size=3), k=st.integers(1, 8), where=FILTERS,
          prefilter=st.booleans(), metric=st.sampled_from(["l2", "cosine", "dot"]))
    def multi_vector_search(self, queries: list[list[float]], k: int, where: str | None,
                            prefilter: bool, metric: str) -> None:
        """Several query vectors in one query: lancedb answers each, tagged with query_index."""

        def search(t: Any) -> pa.Table:
            builder = t.search(queries).distance_type(metric).bypass_vector_index()
            if where:
                builder = builder.where(where, prefilter=prefilter)
            return builder.select(["id", "price"]).limit(k).to_arrow()

        remote, local = self.both(lambda t: _outcome(lambda: search(t)))
        assert remote[0] == local[0], (remote, local)
        if remote[0] == "error":
            return
        r, lo = remote[1], local[1]
        assert r.schema == lo.schema
        for index, q in enumerate(queries):
            mine = [pc.equal(table.column("query_index"), index) for table in (r, lo)]
            distances = self._exact_distances(q, metric, where if where and prefilter else None)
            same_nearest(r.filter(mine[0]), lo.filter(mine[1]), has_boundary_tie(distances, k),
                         None, 0)

    @rule(q=VECTORS, term=st.sampled_from(["kiwi", "pie", "apple"]), k=st.integers(1, 10),
          where=st.sampled_from([None, "id < 6", "price > 0"]))
    def hybrid_search(self, q: list[float], term: str, k: int, where: str | None) -> None:
        """Vector + full-text, fused by the default reranker (RRF) on the client.

        RRF scores ranks: they are determined only where the vector and full-text rankings
        have no ties (equal texts score equally in BM25, so that is often not so). Then ids and
        scores must agree (rows tied on the fused score may come in any order, and which of
        them the limit cuts is open); otherwise every answered id must at least be among the
        k nearest or the k best-scoring rows (determined unless a tie at the k-th), and the
        number of rows must agree.
        """
        if not self._has_index("FTS"):
            return

        def search(t: Any) -> pa.Table:
            builder = t.search(query_type="hybrid").vector(q).text(term).bypass_vector_index()
            if where:
                builder = builder.where(where, prefilter=True)
            return builder.limit(k).to_arrow()

        remote, local = self.both(lambda t: _outcome(lambda: search(t)))
        assert remote[0] == local[0], (remote, local)
        if remote[0] == "error":
            return
        r, lo = remote[1], local[1]
        assert r.num_rows == lo.num_rows
        nearest = self.local.search(q).bypass_vector_index().where(where).limit(k + 1).to_arrow()
        best = self.local.search(term, query_type="fts").where(where).limit(k + 1).to_arrow()
        vector_ties = _ties(nearest.column("_distance").to_pylist())
        text_ties = _ties(best.column("_score").to_pylist())
        if not vector_ties and not text_ties:
            scores = [t.column("_relevance_score").to_pylist() for t in (r, lo)]
            np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5)
            cut = scores[1][-1] + 1e-7 if lo.num_rows == k else -1.0  # ties at the cut: open
            above = [sorted(i for i, s in zip(t.column("id").to_pylist(), ss, strict=True) if s > cut)
                     for t, ss in zip((r, lo), scores, strict=True)]
            assert above[0] == above[1]
        elif not _ties(nearest.column("_distance").to_pylist()[-2:]) and not _ties(
                best.column("_score").to_pylist()[-2:]):
            candidates = {*nearest.column("id").to_pylist()[:k], *best.column("id").to_pylist()[:k]}
            assert set(r.column("id").to_pylist()) <= candidates

    @precondition(lambda self: self._has_index("IVF_PQ"))
    @rule(q=VECTORS, k=st.integers(1, 10), where=st.sampled_from([None, "id < 6", "price > 0"]),
          thorough=st.booleans(), nprobes=st.integers(1, 2), refine=st.sampled_from([None, 1, 3]))
    def ann_search(self, q: list[float], k: int, where: str | None, thorough: bool, nprobes: int,
                   refine: int | None) -> None:
        """Search through the IVF_PQ index (lance's default metric, l2).

        Each side trains its own index (k-means and PQ codebooks from samples), so approximate
        answers may differ between two correct implementations. What is determined: probing
        every partition and refining at least every indexed row's worth of candidates is exact search,
        so then both must give embedded's exact answer. Otherwise only that each answered row is
        a row of the table, nearest first, at its exact distance when refined (the PQ distance
        is the index's own), and no more than k rows.
        """
        if thorough:  # IVF_PQ(num_partitions=2); the index may still hold deleted rows, so the
            # refine covers more rows than a run writes (add_many: <= 300 a step, <= 40 steps)
            nprobes, refine = 2, math.ceil(20_000 / k)

        def search(t: Any) -> pa.Table:
            builder = t.search(q).nprobes(nprobes).select(["id", "vector"])
            if refine:
                builder = builder.refine_factor(refine)
            if where:
                builder = builder.where(where, prefilter=True)
            return builder.limit(k).to_arrow()

        remote, local = self.both(lambda t: _outcome(lambda: search(t)))
        assert remote[0] == local[0], (remote, local)
        if remote[0] == "error":
            return
        r = remote[1]
        if thorough:
            exact = self.local.search(q).bypass_vector_index().select(["id", "vector"]).where(
                where, prefilter=True).limit(k).to_arrow()
            boundary = has_boundary_tie(self._exact_distances(q, "l2", where), k)
            same_nearest(r, exact, boundary, None, 0)
            return
        assert r.num_rows <= k
        distances = r.column("_distance").to_pylist()
        assert distances == sorted(distances)
        stored = {(row["id"], tuple(row["vector"]))
                  for row in self.local.search().where(where).select(["id", "vector"])
                  .limit(None).to_arrow().to_pylist()}
        for row in r.to_pylist():
            assert (row["id"], tuple(row["vector"])) in stored
            if refine:
                exact = float(np.sum((np.asarray(row["vector"]) - np.asarray(q, np.float32)) ** 2))
                assert math.isclose(row["_distance"], exact, rel_tol=1e-4, abs_tol=1e-4)

    @rule(where=FILTERS, limit=st.one_of(st.none(), st.integers(1, 10)),
          offset=st.integers(0, 3), ordering=ORDERINGS, columns=PROJECTIONS)
    def scan(self, where: str | None, limit: int | None, offset: int,
             ordering: list[dict] | None, columns: Any) -> None:
        if ordering and columns is not None:  # embedded cannot order by a column not selected
            keys = [o["column_name"] for o in ordering]
            columns = (list(dict.fromkeys([*columns, *keys])) if isinstance(columns, list)
                       else {**columns, **{key: key for key in keys}})

        def scan(t: Any) -> pa.Table:
            builder = t.search()
            if where:
                builder = builder.where(where)
            if columns is not None:
                builder = builder.select(columns)
            if ordering:
                builder = builder.order_by(ordering)
            return builder.limit(limit).offset(offset).to_arrow()

        remote, local = self.both(lambda t: _outcome(lambda: scan(t)))
        assert remote[0] == local[0], (remote, local)
        if remote[0] == "error":
            return
        r, lo = remote[1], local[1]
        if isinstance(columns, dict):  # the client sends an alias map with its keys sorted
            r, lo = r.select(sorted(r.schema.names)), lo.select(sorted(lo.schema.names))
        assert r.schema == lo.schema
        if ordering:
            keys = [o["column_name"] for o in ordering]
            assert r.select(keys) == lo.select(keys)  # rows tied on the keys: order open
            if limit is None and not offset:  # with an offset, which tied rows it skips is open
                assert _rows(r) == _rows(lo)
        elif limit is None:
            assert _rows(r) == _rows(lo)  # a scan's order is storage order: not compared
        else:
            assert r.num_rows == lo.num_rows

    @rule(where=FILTERS)
    def count(self, where: str | None) -> None:
        self.same_outcome(lambda t: t.count_rows(where))

    def _agent_jobs(self) -> list[tuple]:
        """The agent's jobs on the table (kind, state, version): to tell its maintenance commits
        (compaction, index optimisation) apart from a write applied twice."""
        url = f"{self.SERVICE.url}/v1/admin/jobs?database={self.database}&table=t&limit=1000"
        request = urllib.request.Request(url, headers={"x-api-key": self.SERVICE.api_key})
        with urllib.request.urlopen(request, timeout=30) as response:
            jobs = json.loads(response.read())["jobs"]
        return [(job["kind"], job["state"], job.get("result_version")) for job in jobs]

    # -- the tables agree after every step ----------------------------------------------------

    @invariant()
    def same_tables(self) -> None:
        if self.remote is None:
            return
        assert self.remote.version == self.local.version, self._agent_jobs()
        assert self.remote.schema == self.local.schema
        remote, local = self.both(lambda t: t.search().limit(None).to_arrow())
        assert _rows(remote) == _rows(local)


def _run(service: LiveService) -> None:
    machine = type("Machine", (DifferentialMachine,), {"SERVICE": service})
    run_state_machine_as_test(machine, settings=PROFILE)


def test_executors_on(live_service: LiveService) -> None:
    _run(live_service)


def test_executors_off(local_node: LocalNode) -> None:
    _run(local_node.service)


def _replay(service: LiveService) -> None:
    """A fixed sequence through the index, tag and full-text rules (and the regressions the
    machine found: merges of partial column sets, ordering with nulls), on every run."""
    machine = type("Machine", (DifferentialMachine,), {"SERVICE": service})()
    try:
        machine.create(rows=[(1, [1.0, 0.5, 0.0, 0.0], "a", None, ["red"])], empty=False)
        machine.add_many(rows=250, seed=1)
        machine.same_tables()
        machine.merge_insert(rows=[(1, [0.0, 1.0, 0.0, 0.0], None, 2.5, None),
                                   (1, [1.0] * 4, "b", None, ["blue"])],
                             columns=("id", "price"), update=True, insert=False, delete=False,
                             update_filter=None, delete_filter=None)
        machine.same_tables()
        for kind in ("text_fts", "id_btree", "vector_ivf_pq", "labels_label_list"):
            machine.create_index(kind=kind)
            machine.same_tables()
        # Seeds from LANCEDB_RAY_STATEFUL=long (executors on): embedded panics on an
        # index-assisted partial-column merge with a filter (the oracle then merges without the
        # index); an ordered scan with an offset skips any of the rows tied at the offset.
        machine.merge_insert(rows=[(0, [-2.2e-16, 0.2, -0.51, 1.38], None, None, ["red", "red"]),
                                   (8, [-3.27, 0.0, 2.61, 0.31], "a", None, ["red"])],
                             columns=("id", "vector", "price"), update=True, insert=True,
                             delete=False, update_filter="target.price > 0", delete_filter=None)
        machine.same_tables()
        machine.scan(where="array_contains(labels, 'green') AND id > 2", limit=None, offset=3,
                     ordering=[{"column_name": "price", "ascending": False, "nulls_first": False}],
                     columns=None)
        machine.full_text_search(term="kiwi", k=15, where="id < 20")
        machine.multi_vector_search(queries=[[0.5, -1.0, 2.0, 0.25], [-3.0, 0.1, 0.0, 1.0]], k=5,
                                    where="price > 1", prefilter=True, metric="cosine")
        machine.hybrid_search(q=[0.5, -1.0, 2.0, 0.25], term="kiwi", k=6, where=None)
        machine.ann_search(q=[1.0, 2.0, -0.5, 0.0], k=5, where="id < 6", thorough=True, nprobes=1,
                           refine=None)
        machine.ann_search(q=[1.0, 2.0, -0.5, 0.0], k=8, where=None, thorough=False, nprobes=1,
                           refine=3)
        machine.vector_search(q=[0.5, -1.0, 2.0, 0.25], k=7, where="price > 1", prefilter=False,
                              columns=["id", "price"], offset=2,
                              ordering=[{"column_name": "price", "ascending": False,
                                         "nulls_first": True}], metric="l2")
        machine.scan(where="price IS NULL OR id < 3", limit=9, offset=1,
                     ordering=[{"column_name": "text", "ascending": True, "nulls_first": True},
                               {"column_name": "price", "ascending": False, "nulls_first": False}],
                     columns=None)
        machine.scan(where="array_has_any(labels, ['red'])", limit=None, offset=0, ordering=None,
                     columns=["id", "labels"])
        machine.count(where="array_has_all(labels, ['red', 'blue'])")
        machine.add_column()
        machine.alter_extra_column(change={"rename": "bonus"})
        machine.alter_extra_column(change={"data_type": pa.float32()})
        machine.alter_column(change={"path": "id", "nullable": True})
        machine.same_tables()
        machine.tag_and_checkout(tag="one", back=2)
        machine.delete(predicate="price IS NULL")
        machine.count(where="text = 'a'")
        machine.same_tables()
        # Seed from LANCEDB_RAY_STATEFUL=long (executors off): a merge source with a null in a
        # non-nullable column is refused only where the null would be written (the service
        # refused the whole source).
        machine.update(where=None, update={"values": {"text": "updated"}})
        machine.alter_column(change={"path": "text", "nullable": False})
        for update, insert in ((True, False), (False, True)):
            machine.merge_insert(rows=[(99, [0.0, -1.0, 0.0, 0.0], None, None, [])],
                                 columns=("id", "vector", "text", "price", "labels"), update=update,
                                 insert=insert, delete=False, update_filter=None, delete_filter=None)
            machine.same_tables()
    finally:
        machine.teardown()


def test_replay_executors_on(live_service: LiveService) -> None:
    _replay(live_service)


def test_replay_executors_off(local_node: LocalNode) -> None:
    _replay(local_node.service)
