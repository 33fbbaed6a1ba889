"""The indexers on the shared local Ray cluster, against real Lance datasets."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import lance
import lancedb
import numpy as np
import pyarrow as pa
import pytest
import ray
from lance_ray import compact_files, create_scalar_index

from lancedb_ray.errors import AlreadyExists, InvalidInput
from lancedb_ray.execution.plan import vector_index_segments
from lancedb_ray.indexers import (
    RayNotInitialized,
    TableHandle,
    build_scalar_index,
    build_vector_index,
    cleanup,
    cluster_has_gpus,
    compact,
    maintenance,
    optimize_indices,
    resolve_use_gpu,
    retrain_vector_index,
    run_vector_build,
    scalar,
    unindexed_rows,
    vector_index_description,
)
from lancedb_ray.indexers.runtime import METRICS, JobContext
from lancedb_ray.indexers.vector import VectorIndexSpec, split_fragments
from lancedb_ray.resources import TaskResources

os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")  # quiet statistics

DIM = 32
ROWS_PER_FRAGMENT = 1000


def clustered(rows: int, seed: int = 0, start: int = 0) -> pa.Table:
    """Vectors around 40 centres, an id and a text column."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(40, DIM)) * 3
    vectors = (centres[rng.integers(0, 40, rows)] + rng.normal(size=(rows, DIM))).astype(np.float32)
    ids = np.arange(start, start + rows)
    return pa.table({
        "id": ids,
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
        "text": [f"word{i % 50} common {'rare' if i % 97 == 0 else 'usual'}" for i in ids],
    })


def make_table(tmp_path: Path, rows: int = 8000, name: str = "t") -> TableHandle:
    uri = str(tmp_path / f"{name}.lance")
    lance.write_dataset(clustered(rows), uri, max_rows_per_file=ROWS_PER_FRAGMENT)
    return TableHandle("db", name, uri, {})


def append(handle: TableHandle, rows: int, start: int, seed: int = 1) -> None:
    lance.write_dataset(clustered(rows, seed, start), handle.uri, mode="append",
                        max_rows_per_file=ROWS_PER_FRAGMENT)


def recall(handle: TableHandle, queries: np.ndarray, k: int = 10, **nearest: object) -> float:
    """Mean recall@k of the indexed search (4 of 16 partitions, re-ranked) against exact search."""
    dataset = handle.open()
    hits = 0
    for q in queries:
        exact = dataset.scanner(columns=["id"], nearest={"column": "vector", "q": q, "k": k,
                                                        "use_index": False},
                                disable_scoring_autoprojection=True).to_table()["id"].to_pylist()
        found = dataset.scanner(columns=["id"], nearest={"column": "vector", "q": q, "k": k,
                                                        "nprobes": 4, "refine_factor": 5, **nearest},
                                disable_scoring_autoprojection=True).to_table()["id"].to_pylist()
        hits += len(set(exact) & set(found))
    return hits / (k * len(queries))


PQ = {"num_partitions": 16, "num_sub_vectors": 8}


# -- without Ray ---------------------------------------------------------------------------------


def test_split_fragments_gives_contiguous_groups_of_about_equal_rows() -> None:
    assert split_fragments([(i, 10) for i in range(4)], 2) == [[0, 1], [2, 3]]
    assert split_fragments([(0, 100), (1, 1), (2, 1)], 3) == [[0], [1], [2]]
    assert split_fragments([(7, 5)], 4) == [[7]]
    groups = split_fragments([(i, 1000) for i in range(9)] + [(9, 10)], 3)
    assert [fid for group in groups for fid in group] == list(range(10))
    assert len(groups) == 3 and all(groups)


def test_vector_params_are_validated_before_any_task() -> None:
    spec = VectorIndexSpec.parse("v", "ivf_pq", {"distance_type": "Cosine", "max_iterations": 20})
    assert (spec.index_type, spec.metric, spec.max_iters, spec.name) == ("IVF_PQ", "cosine", 20, "v_idx")
    with pytest.raises(InvalidInput, match="unknown vector index parameter 'nlist'"):
        VectorIndexSpec.parse("v", "IVF_PQ", {"nlist": 3})
    with pytest.raises(InvalidInput, match="unknown vector index type"):
        VectorIndexSpec.parse("v", "FLAT", {})
    with pytest.raises(InvalidInput, match="positive integer"):
        VectorIndexSpec.parse("v", "IVF_PQ", {"num_partitions": 0})


def test_handle_is_picklable_and_hides_secrets() -> None:
    handle = TableHandle("db", "ns$t", "az://c/db/t.lance", {"azure_storage_account_key": "s3cr3t",
                                                           "azure_storage_account_name": "acct"})
    assert "s3cr3t" not in repr(handle) and "s3cr3t" not in str(handle)
    assert "acct" in repr(handle)
    assert pickle.loads(pickle.dumps(handle)) == handle
    assert hash(handle) == hash(TableHandle("db", "ns$t", "az://c/db/t.lance", {}))


def test_indexers_refuse_to_run_without_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = make_table(tmp_path, rows=1000)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(RayNotInitialized, match="ray.init"):
        build_vector_index(handle, "vector", "IVF_PQ", PQ, num_segments=2, use_gpu=False)
    with pytest.raises(RayNotInitialized):
        optimize_indices(handle)
    with pytest.raises(RayNotInitialized):
        compact(handle, target_rows_per_fragment=10_000, parallelism=2)
    with pytest.raises(RayNotInitialized):
        cleanup(handle, older_than_seconds=0)
    assert unindexed_rows(handle) == {}  # reads the manifest only: no Ray needed


# -- on the local Ray cluster --------------------------------------------------------------------


@pytest.mark.ray
def test_segmented_build_commits_parallel_segments_in_one_version(ray_cluster: None,
                                                                 tmp_path: Path) -> None:
    handle = make_table(tmp_path)
    before = handle.open().version
    build = run_vector_build(handle, "vector", "IVF_PQ", PQ, num_segments=3, use_gpu=False)

    assert build.version == before + 1
    dataset = handle.open()
    assert dataset.version == build.version
    # Each segment is its own list_indices() entry, as the plan executors read them.
    entries = [i for i in dataset.list_indices() if i["name"] == "vector_idx"]
    assert len(entries) == 3 and all(e["type"] == "IVF_PQ" and e["fields"] == ["vector"] for e in entries)
    segments = vector_index_segments(dataset, "vector")
    assert sorted(s["uuid"] for s in segments) == sorted(i.uuid for i in build.segments)
    covered = [fid for s in segments for fid in s["fragment_ids"]]
    assert sorted(covered) == sorted(f.fragment_id for f in dataset.get_fragments())  # disjoint, total
    stats = dataset.stats.index_stats("vector_idx")
    assert (stats["num_indexed_rows"], stats["num_unindexed_rows"], stats["num_segments"]) == (8000, 0, 3)
    # Built as separate Ray tasks (whether two share a reused worker process is Ray's
    # scheduling on a busy 2-core machine), and trained once: every segment shares the model.
    assert len({info.uuid for info in build.segments}) == 3
    assert all(info.pid != os.getpid() for info in build.segments)
    assert build.model is not None and build.model.device == "cpu"
    assert {s["num_partitions"] for s in stats["segments"]} == {16}
    assert {name: type(m).__name__ for name, m in METRICS._metrics.items()
            if name in ("tasks_total", "segments_total", "operation_seconds")} == {
        "tasks_total": "Counter", "segments_total": "Counter", "operation_seconds": "Histogram"}

    # Each segment answers for its own fragments only, as a plan executor asks it.
    query = clustered(1, seed=5)["vector"][0].values.to_numpy()
    for segment in segments:
        rows = dataset.scanner(nearest={"column": "vector", "q": query, "k": 5}, with_row_id=True,
                               index_segments=[segment["uuid"]], fast_search=True).to_table()
        assert rows.num_rows == 5
        assert {rid >> 32 for rid in rows["_rowid"].to_pylist()} <= set(segment["fragment_ids"])


@pytest.mark.ray
def test_segmented_recall_matches_a_single_segment_build(ray_cluster: None, tmp_path: Path) -> None:
    queries = np.stack([clustered(1, seed=100 + i)["vector"][0].values.to_numpy() for i in range(40)])
    single = make_table(tmp_path, name="single")
    build_vector_index(single, "vector", "IVF_PQ", PQ, num_segments=1, use_gpu=False)
    segmented = make_table(tmp_path, name="segmented")
    build_vector_index(segmented, "vector", "IVF_PQ", PQ, num_segments=4, use_gpu=False)
    assert len(vector_index_segments(single.open(), "vector")) == 1
    assert len(vector_index_segments(segmented.open(), "vector")) == 4

    single_recall = recall(single, queries)
    segmented_recall = recall(segmented, queries)
    print(f"recall@10: single segment {single_recall:.3f}, 4 segments {segmented_recall:.3f}")
    assert single_recall > 0.5  # the comparison means something
    assert segmented_recall >= 0.9 * single_recall


@pytest.mark.ray
def test_build_other_vector_types_and_refuse_a_duplicate(ray_cluster: None, tmp_path: Path) -> None:
    handle = make_table(tmp_path, rows=4000)
    version = build_vector_index(handle, "vector", "IVF_HNSW_SQ", {"num_partitions": 4, "metric": "cosine"},
                                 num_segments=2, use_gpu=False, name="hnsw")
    stats = handle.open().stats.index_stats("hnsw")
    assert stats["index_type"] == "IVF_HNSW_SQ" and stats["num_segments"] == 2
    assert stats["segments"][0]["metric_type"] == "cosine"
    with pytest.raises(AlreadyExists):
        build_vector_index(handle, "vector", "IVF_HNSW_SQ", {"num_partitions": 4}, num_segments=2,
                           use_gpu=False, name="hnsw", replace=False)
    with pytest.raises(InvalidInput, match="not a fixed-size vector column"):
        build_vector_index(handle, "text", "IVF_PQ", {}, num_segments=2, use_gpu=False)
    assert handle.open().version == version


@pytest.mark.ray
def test_tiny_table_falls_back_to_one_lance_build(ray_cluster: None, tmp_path: Path) -> None:
    handle = make_table(tmp_path, rows=300)  # too few rows to train a PQ codebook once and share it
    build = run_vector_build(handle, "vector", "IVF_PQ", {"num_sub_vectors": 4}, num_segments=2,
                             use_gpu=False)
    assert build.model is None
    assert handle.open().stats.index_stats("vector_idx")["num_indexed_rows"] == 300


@pytest.mark.ray
def test_scalar_indexes_are_built_in_segments_by_lance_ray_and_search_as_lancedb_s(
        ray_cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = make_table(tmp_path, rows=6000)
    shutil.copytree(handle.uri, tmp_path / "oracle.lance")
    calls: list[dict[str, Any]] = []

    def recorded(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return create_scalar_index(*args, **kwargs)

    monkeypatch.setattr(scalar.lance_ray, "create_scalar_index", recorded)
    ctx = JobContext(TaskResources(0.1, parallelism=2))
    build_scalar_index(handle, "text", "FTS", {"with_position": False}, num_segments=3, ctx=ctx)
    build_scalar_index(handle, "id", "BTREE", num_segments=2, ctx=ctx)
    build_scalar_index(handle, "id", "BITMAP", name="labels", ctx=ctx)

    assert [(c["index_type"], c["num_segments"], c["num_workers"], c["ray_remote_args"]["num_cpus"])
            for c in calls] == [("INVERTED", 3, 2, 0.1), ("BTREE", 2, 2, 0.1), ("BITMAP", 1, 1, 0.1)]
    dataset = handle.open()
    indexes = {index.name: index for index in dataset.describe_indices()}
    assert {name: len(index.segments) for name, index in indexes.items()} == {
        "text_idx": 3, "id_idx": 2, "labels": 1}
    assert sorted(f for s in indexes["text_idx"].segments for f in s.fragment_ids) == list(range(6))
    assert unindexed_rows(handle) == {"text_idx": 0, "id_idx": 0, "labels": 0}

    # Embedded lancedb, its own index on the same rows, is the oracle: same hits, same BM25 scores.
    ours = lancedb.connect(tmp_path).open_table("t")
    oracle = lancedb.connect(tmp_path).open_table("oracle")
    oracle.create_fts_index("text", with_position=False)
    oracle.create_scalar_index("id")
    for query in ("rare", "word3 rare", "common word7"):
        found = [ours.search(query, query_type="fts").limit(10_000).to_arrow(),  # all hits: no ties cut
                 oracle.search(query, query_type="fts").limit(10_000).to_arrow()]
        ranked = [sorted(zip(t["id"].to_pylist(), np.round(t["_score"].to_numpy(), 4).tolist(),
                             strict=True)) for t in found]
        assert ranked[0] == ranked[1], query
    assert ours.search().where("id >= 5990").to_arrow()["id"].to_pylist() == list(range(5990, 6000))


@pytest.mark.ray
def test_a_label_list_index_is_one_lance_build(ray_cluster: None, tmp_path: Path) -> None:
    """lance-ray does not distribute LABEL_LIST: one build on one task, still on every fragment."""
    uri = str(tmp_path / "tags.lance")
    tags = pa.table({"id": range(3000), "tags": [[f"t{i % 7}", f"u{i % 3}"] for i in range(3000)]})
    lance.write_dataset(tags, uri, max_rows_per_file=1000)
    handle = TableHandle("db", "tags", uri, {})
    version = build_scalar_index(handle, "tags", "LABEL_LIST", num_segments=2)
    dataset = handle.open()
    assert dataset.version == version
    (index,) = dataset.describe_indices()
    assert (index.name, len(index.segments)) == ("tags_idx", 1)
    assert unindexed_rows(handle) == {"tags_idx": 0}
    found = dataset.to_table(filter="array_has_any(tags, ['t3'])", columns=["id"])["id"].to_pylist()
    assert sorted(found) == [i for i in range(3000) if i % 7 == 3]


@pytest.mark.ray
def test_optimize_indexes_appended_rows_into_every_index(ray_cluster: None, tmp_path: Path) -> None:
    handle = make_table(tmp_path)
    build_vector_index(handle, "vector", "IVF_PQ", PQ, num_segments=2, use_gpu=False)
    build_scalar_index(handle, "id", "BTREE", num_segments=2)
    build_scalar_index(handle, "text", "FTS", {"with_position": False}, num_segments=2)
    assert unindexed_rows(handle) == {"vector_idx": 0, "id_idx": 0, "text_idx": 0}

    append(handle, 2000, start=8000)
    assert unindexed_rows(handle) == {"vector_idx": 2000, "id_idx": 2000, "text_idx": 2000}
    before = handle.open().version
    version = optimize_indices(handle)
    assert version > before
    dataset = handle.open()
    for name in ("vector_idx", "id_idx", "text_idx"):
        assert dataset.stats.index_stats(name)["num_unindexed_rows"] == 0, name
    assert unindexed_rows(handle) == {"vector_idx": 0, "id_idx": 0, "text_idx": 0}
    # The vector index keeps its two segments and gains a delta segment for the new fragments.
    assert len(vector_index_segments(dataset, "vector")) == 3
    # The new rows are found through the indexes.
    assert dataset.to_table(filter="id = 9500", columns=["id"]).num_rows == 1
    assert dataset.scanner(filter="id = 9500").explain_plan().count("ScalarIndexQuery") == 1
    rare = dataset.to_table(full_text_query="rare", columns=["id"])["id"].to_pylist()
    assert sorted(rare) == [i for i in range(10_000) if i % 97 == 0]

    # Idempotent: nothing new, nothing changes.
    assert optimize_indices(handle) == version
    assert handle.open().version == version


@pytest.mark.ray
def test_retrain_rebuilds_with_the_same_type_and_params(ray_cluster: None, tmp_path: Path) -> None:
    handle = make_table(tmp_path)
    build_vector_index(handle, "vector", "IVF_PQ", {**PQ, "metric": "cosine"}, num_segments=2,
                       use_gpu=False, name="vec")
    old = {i["uuid"] for i in handle.open().list_indices()}
    append(handle, 3000, start=8000)
    assert vector_index_description(handle, "vec") == (
        "vector", "IVF_PQ", {"metric": "cosine", "num_partitions": 16, "num_sub_vectors": 8, "num_bits": 8})

    retrain_vector_index(handle, "vec", num_segments=3, use_gpu=False)
    dataset = handle.open()
    stats = dataset.stats.index_stats("vec")
    assert (stats["num_indexed_rows"], stats["num_unindexed_rows"], stats["num_segments"]) == (11_000, 0, 3)
    assert stats["segments"][0]["metric_type"] == "cosine"
    assert stats["segments"][0]["sub_index"]["num_sub_vectors"] == 8
    assert not old & {i["uuid"] for i in dataset.list_indices()}


@pytest.mark.ray
def test_parallel_compaction_keeps_rows_and_indexes(ray_cluster: None, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    uri = str(tmp_path / "small.lance")
    for i in range(12):
        lance.write_dataset(clustered(500, seed=i, start=500 * i), uri, mode="append" if i else "create")
    handle = TableHandle("db", "small", uri, {})
    build_scalar_index(handle, "id", "BTREE")
    before = handle.open()
    content = before.to_table().sort_by("id")
    assert len(before.get_fragments()) == 12

    calls: list[dict[str, Any]] = []

    def recorded(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return compact_files(*args, **kwargs)

    monkeypatch.setattr(maintenance.lance_ray, "compact_files", recorded)
    ctx = JobContext(TaskResources(0.1, parallelism=2))
    version = compact(handle, target_rows_per_fragment=2000, parallelism=3, ctx=ctx)
    assert version is not None and version > before.version
    # lance-ray did the work, on at most `parallelism` pool workers asking for the derived request.
    (call,) = calls
    assert call["num_workers"] == 2 and call["ray_remote_args"]["num_cpus"] == 0.1
    after = handle.open()
    assert after.version == version
    assert len(after.get_fragments()) == 3
    assert after.to_table().sort_by("id").equals(content)
    assert unindexed_rows(handle) == {"id_idx": 0}
    assert after.to_table(filter="id = 4321", columns=["id"])["id"].to_pylist() == [4321]

    assert compact(handle, target_rows_per_fragment=2000, parallelism=3) is None  # nothing left to do


@pytest.mark.ray
def test_cleanup_removes_old_versions(ray_cluster: None, tmp_path: Path) -> None:
    handle = make_table(tmp_path, rows=2000)
    for i in range(3):
        append(handle, 500, start=2000 + 500 * i)
    latest = handle.open()
    assert len(latest.versions()) == 4
    stats = cleanup(handle, older_than_seconds=0)
    assert stats["old_versions"] == 3
    assert stats["bytes_removed"] > 0
    after = handle.open()
    assert [v["version"] for v in after.versions()] == [latest.version]
    assert after.count_rows() == 3500
    assert cleanup(handle, older_than_seconds=0)["old_versions"] == 0


@pytest.mark.ray
def test_local_cluster_has_no_gpu(ray_cluster: None) -> None:
    assert cluster_has_gpus() is False
    assert resolve_use_gpu(None) is False
    assert resolve_use_gpu(True) is True
