"""The bulk job entrypoints, run in-process against the shared local Ray cluster."""

from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path
from typing import Any

import lance
import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from lance_ray import LanceFragmentWriter

from lancedb_ray.errors import AlreadyExists, NotFound
from lancedb_ray.events.embedded import read_all
from lancedb_ray.events.model import ChangeEvent
from lancedb_ray.jobs import index as index_job
from lancedb_ray.jobs import ingest as ingest_job

os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")  # quiet statistics

DIM = 16


def rows(start: int, count: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = np.arange(start, start + count)
    vectors = rng.normal(size=(count, DIM)).astype(np.float32)
    return pa.table({
        "id": ids,
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
        "text": [f"item {i} {'blue' if i % 10 == 0 else 'grey'}" for i in ids],
    })


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({
        "storage": {"root": {"uri": str(tmp_path / "data")}},
        "events": {"embedded": {"directory": str(tmp_path / "events")},
                   "outbox_directory": str(tmp_path / "outbox")},
        "agent": {"jobs_directory": str(tmp_path / "jobs"), "index_segments": 2},
    }))
    return path


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """Three parquet files of 1,000 rows each."""
    directory = tmp_path / "source"
    directory.mkdir()
    for part in range(3):
        pq.write_table(rows(1000 * part, 1000, seed=part), directory / f"part-{part}.parquet")
    return directory


def events(tmp_path: Path) -> list[ChangeEvent]:
    return read_all(tmp_path / "events")


def ingest(config: Path, table: str, source: Path | str, mode: str, *extra: str) -> int:
    return ingest_job.main(["--database", "jobs", "--table", table, "--source", str(source),
                            "--mode", mode, "--config", str(config), *extra])


@pytest.mark.ray
def test_ingest_commits_one_version_per_run(ray_cluster: None, tmp_path: Path, config: Path,
                                            source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = tmp_path / "data" / "jobs" / "items.lance"
    assert ingest(config, "items", source, "create", "--rows-per-fragment", "500") == 0
    dataset = lance.dataset(str(uri))
    assert dataset.version == 1
    assert dataset.count_rows() == 3000
    assert len(dataset.get_fragments()) == 6  # 3 files x 1,000 rows, 500 rows per fragment
    assert sorted(dataset.to_table(columns=["id"])["id"].to_pylist()) == list(range(3000))
    assert dataset.schema.field("vector").type == pa.list_(pa.float32(), DIM)
    out = capsys.readouterr().out
    assert "ingest: committed 3,000 rows in 6 fragments as version 1" in out

    assert ingest(config, "items", source, "append") == 0
    dataset = lance.dataset(str(uri))
    assert (dataset.version, dataset.count_rows()) == (2, 6000)
    assert [v["version"] for v in dataset.versions()] == [1, 2]

    assert ingest(config, "items", source / "part-0.parquet", "overwrite") == 0
    dataset = lance.dataset(str(uri))
    assert (dataset.version, dataset.count_rows()) == (3, 1000)

    # The table is an ordinary lancedb table, and the agent heard of every commit.
    table = lancedb.connect(tmp_path / "data" / "jobs").open_table("items")
    assert table.count_rows() == 1000
    assert [(e.table, e.version, e.operation, e.rows) for e in events(tmp_path)] == [
        ("items", 1, "create", 3000), ("items", 2, "insert", 3000), ("items", 3, "overwrite", 1000)]


class RecordingWriter(LanceFragmentWriter):
    """lance-ray's fragment writer, noting each call's process and fragments in a directory."""

    def __init__(self, *args: Any, log: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = log

    def __call__(self, batch: Any) -> pa.Table:
        written = super().__call__(batch)
        (self.log / uuid.uuid4().hex).write_text(f"{os.getpid()} {written.num_rows}")
        return written


@pytest.mark.ray
def test_ingest_fragments_are_written_by_lance_ray_tasks_and_committed_once(
        ray_cluster: None, tmp_path: Path, config: Path, source: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "writes"
    log.mkdir()
    monkeypatch.setattr(ingest_job, "LanceFragmentWriter", functools.partial(RecordingWriter, log=log))
    assert ingest(config, "items", source, "create", "--rows-per-fragment", "500", "--no-event") == 0

    calls = [tuple(map(int, path.read_text().split())) for path in log.iterdir()]
    assert len(calls) == 6 and sum(n for _, n in calls) == 6  # one writer call per 500-row batch
    assert os.getpid() not in {pid for pid, _ in calls}  # all in Ray worker processes
    dataset = lance.dataset(str(tmp_path / "data" / "jobs" / "items.lance"))
    assert [v["version"] for v in dataset.versions()] == [1]  # one commit of every fragment
    assert len(dataset.get_fragments()) == 6 and dataset.count_rows() == 3000


@pytest.mark.ray
def test_ingest_modes_refuse_what_they_cannot_do(ray_cluster: None, config: Path, source: Path) -> None:
    with pytest.raises(NotFound, match="--mode create"):
        ingest(config, "missing", source, "append")
    ingest(config, "once", source / "part-1.parquet", "create", "--no-event")
    with pytest.raises(AlreadyExists):
        ingest(config, "once", source / "part-1.parquet", "create")


@pytest.mark.ray
def test_ingest_conforms_the_source_as_lancedb_add_does(ray_cluster: None, tmp_path: Path, config: Path,
                                                         source: Path) -> None:
    """A missing nullable column is filled with nulls; a column the table lacks fails the job."""
    ingest(config, "items", source / "part-0.parquet", "create", "--no-event")
    oracle = lancedb.connect(tmp_path / "oracle").create_table("items", rows(0, 1000, seed=0))
    partial = rows(1000, 10, seed=5).drop_columns(["text"])
    pq.write_table(partial, tmp_path / "partial.parquet")
    ingest(config, "items", tmp_path / "partial.parquet", "append", "--no-event")
    oracle.add(partial)
    table = lancedb.connect(tmp_path / "data" / "jobs").open_table("items")
    assert table.to_arrow().sort_by("id").equals(oracle.to_arrow().sort_by("id"))

    pq.write_table(rows(2000, 10, seed=6).append_column("extra", pa.array(range(10))),
                   tmp_path / "extra.parquet")
    with pytest.raises(Exception, match=r"unexpected columns \['extra'\]"):
        ingest(config, "items", tmp_path / "extra.parquet", "append", "--no-event")
    with pytest.raises(ValueError, match="extra"):
        oracle.add(pq.read_table(tmp_path / "extra.parquet"))
    assert lance.dataset(str(tmp_path / "data" / "jobs" / "items.lance")).count_rows() == 1010


@pytest.mark.ray
def test_ingest_csv_and_lance_sources(ray_cluster: None, tmp_path: Path, config: Path) -> None:
    table = pa.table({"id": np.arange(2000), "name": [f"n{i}" for i in range(2000)]})
    pacsv.write_csv(table, tmp_path / "people.csv")
    ingest(config, "people", tmp_path / "people.csv", "create", "--no-event")
    dataset = lance.dataset(str(tmp_path / "data" / "jobs" / "people.lance"))
    assert dataset.count_rows() == 2000

    lance.write_dataset(table.slice(0, 700), str(tmp_path / "more.lance"))
    ingest(config, "people", tmp_path / "more.lance", "append", "--no-event")
    dataset = lance.dataset(str(tmp_path / "data" / "jobs" / "people.lance"))
    assert (dataset.version, dataset.count_rows()) == (2, 2700)


@pytest.mark.ray
def test_ingest_into_a_namespaced_table(ray_cluster: None, tmp_path: Path, config: Path,
                                        source: Path) -> None:
    db = lancedb.connect(tmp_path / "data" / "jobs")
    db.create_namespace(["team"])
    ingest(config, "team$docs", source, "create", "--no-event")
    table = db.open_table("docs", namespace_path=["team"])
    assert table.count_rows() == 3000
    ingest(config, "team$docs", source / "part-2.parquet", "append", "--no-event")
    assert db.open_table("docs", namespace_path=["team"]).count_rows() == 4000


@pytest.mark.ray
def test_index_job_builds_vector_scalar_and_fts_indexes(ray_cluster: None, tmp_path: Path,
                                                        config: Path, source: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    ingest(config, "docs", source, "create", "--rows-per-fragment", "500")
    uri = str(tmp_path / "data" / "jobs" / "docs.lance")
    common = ["--database", "jobs", "--table", "docs", "--config", str(config)]

    assert index_job.main([*common, "--column", "vector", "--index-type", "IVF_PQ",
                           "--num-partitions", "8", "--num-sub-vectors", "4", "--metric", "cosine",
                           "--no-gpu"]) == 0
    dataset = lance.dataset(uri)
    assert dataset.version == 2
    described = {d.name: d for d in dataset.describe_indices()}
    assert len(described["vector_idx"].segments) == 2  # agent.index_segments from the settings
    stats = dataset.stats.index_stats("vector_idx")
    assert (stats["num_indexed_rows"], stats["segments"][0]["metric_type"]) == (3000, "cosine")
    printed = capsys.readouterr().out
    assert "index: 2 segments committed" in printed
    # Progress while it works (as `ray job logs` shows it), not only at the start and the end.
    assert "index: training on a CPU (0% done)" in printed
    for done in ("0%", "50%", "100%"):
        assert f"index: building 2 segments ({done} done)" in printed

    assert index_job.main([*common, "--column", "id", "--index-type", "BTREE", "--segments", "3"]) == 0
    assert index_job.main([*common, "--column", "text", "--index-type", "FTS",
                           "--param", "with_position=false", "--name", "text_fts"]) == 0
    dataset = lance.dataset(uri)
    assert dataset.version == 4
    assert {d.name for d in dataset.describe_indices()} == {"vector_idx", "id_idx", "text_fts"}
    assert dataset.stats.index_stats("text_fts")["num_indexed_rows"] == 3000
    assert dataset.to_table(full_text_query="blue", columns=["id"]).num_rows == 300
    hits = dataset.to_table(nearest={"column": "vector", "q": np.ones(DIM, dtype=np.float32), "k": 5})
    assert hits.num_rows == 5
    assert [e.operation for e in events(tmp_path)][-3:] == ["create_index"] * 3
