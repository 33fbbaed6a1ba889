"""Vector indexes built as segments, in parallel on Ray tasks.

A build has three steps:

1. **Train once.** One Ray task trains the IVF centroids (and the PQ codebook,
   or the RaBitQ rotation) on a sample of the whole table. With ``use_gpu`` it
   asks for ``num_gpus=1``, so Ray places it on a GPU worker, and trains the
   IVF k-means there with lance's ``accelerator="cuda"`` (see ``accelerator``
   for the fall-back when the worker has no usable CUDA device).
2. **Build segments in parallel.** The table's fragments are cut into
   ``num_segments`` contiguous groups of about equal row counts; one CPU task
   per group runs ``LanceDataset.create_index_uncommitted(fragment_ids=...)``
   with the shared model, writing one segment under ``_indices/<uuid>/``
   without publishing it.
3. **Commit together.** ``LanceDataset.commit_existing_index_segments`` publishes
   every segment as one logical index in one new dataset version; each segment
   keeps its own entry (uuid, fragment_ids) in ``list_indices()``, which is
   what the plan executors search segment by segment.

This is lance-ray's ``create_index`` workflow, kept here because lance-ray 0.5
cannot do step 1 as the project needs: its ``create_index`` always trains the
IVF centroids and the PQ codebook itself, in the calling process (the agent's
replica or a job's driver, never a GPU worker, and without lance's
``accelerator``), and trains over any ``ivf_centroids`` / ``pq_codebook`` it is
given. Steps 2 and 3 stay with step 1 so that the segments are Ray tasks the
job watches (progress per segment, a stall reported with its reason) and that
Ray runs again when their node dies, which lance-ray's actor pool does not.
``bench/index_build.py`` times both builds.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray

from lancedb_ray.errors import AlreadyExists, InvalidInput, NotFound
from lancedb_ray.indexers.accelerator import AcceleratorChoice, choose_accelerator
from lancedb_ray.indexers.handle import TableHandle
from lancedb_ray.indexers.runtime import (
    METRICS,
    JobContext,
    context,
    gather,
    node_id,
    operation,
    require_ray,
    run_one,
    wait_for_gpus,
    watched,
)

_LOG = logging.getLogger(__name__)

VECTOR_INDEX_TYPES = (
    "IVF_FLAT", "IVF_SQ", "IVF_PQ", "IVF_RQ", "IVF_HNSW_FLAT", "IVF_HNSW_SQ", "IVF_HNSW_PQ",
)
DEFAULT_GPU_WAIT_SECONDS = 300.0  # a GPU node pool scaled to zero takes minutes to come up
_DEFAULT_SAMPLE_RATE = 256
_DEFAULT_MAX_ITERS = 50
_PARAM_NAMES = {
    "metric", "num_partitions", "num_sub_vectors", "num_bits", "sample_rate", "max_iters",
    "m", "ef_construction", "target_partition_size",
}
_PARAM_ALIASES = {"distance_type": "metric", "metric_type": "metric", "max_iterations": "max_iters"}
_METRICS = {"l2": "l2", "euclidean": "l2", "cosine": "cosine", "dot": "dot", "hamming": "hamming"}


@dataclass(frozen=True)
class VectorIndexSpec:
    """What to build: validated before any task starts."""

    column: str
    index_type: str
    name: str
    metric: str = "l2"
    num_partitions: int | None = None
    num_sub_vectors: int | None = None
    num_bits: int | None = None
    sample_rate: int | None = None
    max_iters: int | None = None
    m: int | None = None
    ef_construction: int | None = None
    target_partition_size: int | None = None

    @classmethod
    def parse(cls, column: str, index_type: str, params: dict[str, Any] | None,
              name: str | None = None) -> VectorIndexSpec:
        kind = index_type.upper()
        if kind not in VECTOR_INDEX_TYPES:
            raise InvalidInput(f"unknown vector index type '{index_type}': use one of "
                               f"{list(VECTOR_INDEX_TYPES)}")
        values: dict[str, Any] = {}
        for key, value in (params or {}).items():
            key = _PARAM_ALIASES.get(key, key)
            if key not in _PARAM_NAMES:
                raise InvalidInput(f"unknown vector index parameter '{key}': use one of "
                                   f"{sorted(_PARAM_NAMES | set(_PARAM_ALIASES))}")
            if value is not None:
                values[key] = value
        metric = str(values.pop("metric", "l2")).lower()
        if metric not in _METRICS:
            raise InvalidInput(f"unknown distance type '{metric}': use one of {sorted(_METRICS)}")
        for key, value in values.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInput(f"vector index parameter '{key}' must be a positive integer")
        return cls(column, kind, name or f"{column}_idx", _METRICS[metric], **values)

    @property
    def uses_pq(self) -> bool:
        return self.index_type.endswith("_PQ")

    def partitions_for(self, num_rows: int) -> int:
        if self.num_partitions:
            return self.num_partitions
        if self.target_partition_size:
            return max(1, num_rows // self.target_partition_size)
        return max(1, round(math.sqrt(num_rows)))

    def ivf_sample_rate(self, num_rows: int) -> int:
        return min(self.sample_rate or _DEFAULT_SAMPLE_RATE, num_rows // self.partitions_for(num_rows))

    def pq_sample_rate(self, num_rows: int) -> int:
        return min(self.sample_rate or _DEFAULT_SAMPLE_RATE, num_rows // 2 ** (self.num_bits or 8))

    def trainable_once(self, num_rows: int) -> bool:
        """Whether lance's training helpers accept this table (they need 2 samples per centroid)."""
        if self.ivf_sample_rate(num_rows) < 2:
            return False
        return not self.uses_pq or self.pq_sample_rate(num_rows) >= 2


@dataclass(frozen=True)
class VectorModel:
    """The model every segment shares, and where it was trained."""

    num_partitions: int
    ivf_centroids: pa.FixedSizeListArray
    pq_codebook: pa.FixedSizeListArray | None
    num_sub_vectors: int | None
    rabitq_model: str | None
    accelerator: str | None  # "cuda" when the IVF k-means ran on a GPU
    fallback_reason: str | None  # why a wanted GPU was not used
    node_id: str
    seconds: float

    @property
    def device(self) -> str:
        return "gpu" if self.accelerator else "cpu"


@dataclass(frozen=True)
class SegmentInfo:
    uuid: str
    fragment_ids: tuple[int, ...]
    node_id: str
    pid: int
    started: float  # wall clock, to show the segments overlapped
    finished: float


@dataclass(frozen=True)
class VectorBuild:
    """What a build did: the committed version, the model and the segments."""

    version: int
    name: str
    model: VectorModel | None  # None when the table was too small to train once
    segments: list[SegmentInfo] = field(default_factory=list)


def build_vector_index(handle: TableHandle, column: str, index_type: str, params: dict, *,
                       num_segments: int, use_gpu: bool, name: str | None = None,
                       replace: bool = True, gpu_wait_seconds: float = DEFAULT_GPU_WAIT_SECONDS,
                       ctx: JobContext | None = None) -> int:
    """Build a vector index from ``num_segments`` segments built in parallel; the new version.

    ``params`` takes lancedb's names: ``metric`` (or ``distance_type``),
    ``num_partitions``, ``num_sub_vectors``, ``num_bits``, ``sample_rate``,
    ``max_iterations``, ``m``, ``ef_construction``, ``target_partition_size``.
    With ``use_gpu`` and no GPU in the cluster, the autoscaler is asked for one
    and given ``gpu_wait_seconds``; then the training runs on a CPU.
    """
    return run_vector_build(handle, column, index_type, params, num_segments=num_segments,
                            use_gpu=use_gpu, name=name, replace=replace,
                            gpu_wait_seconds=gpu_wait_seconds, ctx=ctx).version


def run_vector_build(handle: TableHandle, column: str, index_type: str, params: dict | None, *,
                     num_segments: int, use_gpu: bool, name: str | None = None,
                     replace: bool = True, gpu_wait_seconds: float = DEFAULT_GPU_WAIT_SECONDS,
                     ctx: JobContext | None = None) -> VectorBuild:
    """``build_vector_index``, reporting the model and the segments as well as the version."""
    spec = VectorIndexSpec.parse(column, index_type, params, name)
    require_ray("build_vector_index")
    ctx = context(ctx)
    with operation("vector_index"):
        dataset = handle.open()
        _check_target(dataset, spec, replace)
        version = dataset.version
        num_rows = dataset.count_rows()
        fragments = [(f.fragment_id, f.count_rows()) for f in dataset.get_fragments()]
        if not spec.trainable_once(num_rows):
            # Too few rows to be worth a GPU or a second segment.
            _LOG.info("%s: %d rows are too few to train once and share; one lance create_index",
                      handle.table, num_rows)
            new_version = run_one(lambda: _whole_build.options(**ctx.resources.options()).remote(
                handle, version, spec), "whole_build", ctx, step="building the index")
            return VectorBuild(new_version, spec.name, None)
        model = _train_model(handle, version, spec, use_gpu, gpu_wait_seconds, ctx)
        METRICS.inc("tasks_total", kind="train", device=model.device)
        if model.fallback_reason:
            METRICS.inc("gpu_fallbacks_total", reason="no_cuda")
            _LOG.warning("%s: GPU training fell back to the CPU: %s", handle.table, model.fallback_reason)
        groups = split_fragments(fragments, num_segments)
        _LOG.info("%s: trained %d partitions on %s in %.1f s; building %d segments in parallel",
                  handle.table, model.num_partitions, model.device, model.seconds, len(groups))
        model_ref = ray.put(model)
        options = ctx.resources.options()
        calls = [functools.partial(_build_segment.options(**options).remote, handle, version, spec,
                                   model_ref, group) for group in groups]
        built = gather(calls, "vector_segment", ctx, step=f"building {len(calls)} segments",
                       limit=ctx.resources.parallelism)
        METRICS.inc("tasks_total", len(built), kind="vector_segment", device="cpu")
        ctx.note("committing the segments", 1.0)
        committed = handle.open(version).commit_existing_index_segments(
            spec.name, spec.column, [segment for segment, _ in built])
        METRICS.inc("segments_total", len(built), kind="vector")
        _LOG.info("%s: committed index '%s' (%d segments) as version %d",
                  handle.table, spec.name, len(built), committed.version)
        return VectorBuild(committed.version, spec.name, model, [info for _, info in built])


def train_vector_model(handle: TableHandle, column: str, index_type: str, params: dict | None, *,
                       use_gpu: bool, gpu_wait_seconds: float = DEFAULT_GPU_WAIT_SECONDS,
                       ctx: JobContext | None = None) -> VectorModel:
    """Only the training step, placed as a build places it (on a GPU worker with ``use_gpu``)."""
    spec = VectorIndexSpec.parse(column, index_type, params)
    require_ray("train_vector_model")
    return _train_model(handle, handle.open().version, spec, use_gpu, gpu_wait_seconds, context(ctx))


def retrain_vector_index(handle: TableHandle, index_name: str, *, num_segments: int, use_gpu: bool,
                         gpu_wait_seconds: float = DEFAULT_GPU_WAIT_SECONDS,
                         ctx: JobContext | None = None) -> int:
    """Rebuild ``index_name`` from scratch with the type and parameters it was built with."""
    require_ray("retrain_vector_index")
    column, index_type, params = vector_index_description(handle, index_name)
    return build_vector_index(handle, column, index_type, params, num_segments=num_segments,
                              use_gpu=use_gpu, name=index_name, replace=True,
                              gpu_wait_seconds=gpu_wait_seconds, ctx=ctx)


def vector_index_description(handle: TableHandle, index_name: str) -> tuple[str, str, dict[str, Any]]:
    """(column, index type, params) of an existing vector index, read from its statistics."""
    dataset = handle.open()
    description = next((d for d in dataset.describe_indices() if d.name == index_name), None)
    if description is None:
        raise NotFound(f"index '{index_name}' was not found on table '{handle.table}'")
    # Centroids are left out of the statistics (and lance's warning about them with them).
    os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")
    stats = dataset.stats.index_stats(index_name)
    index_type = str(stats.get("index_type", "")).upper()
    if index_type not in VECTOR_INDEX_TYPES:
        raise InvalidInput(f"index '{index_name}' is a {index_type or 'non-vector'} index, not a "
                           "vector index")
    segment = (stats.get("segments") or stats["indices"])[0]
    sub = segment.get("sub_index") or {}
    params: dict[str, Any] = {"metric": segment["metric_type"], "num_partitions": segment["num_partitions"]}
    if index_type.endswith("_PQ"):
        params.update(num_sub_vectors=sub["num_sub_vectors"], num_bits=sub["nbits"])
    elif index_type.endswith("_SQ") and "num_bits" in sub:
        params["num_bits"] = sub["num_bits"]
    elif index_type == "IVF_RQ" and "num_bits" in sub:
        params["num_bits"] = sub["num_bits"]
    hnsw = sub.get("params") or {}
    for key in ("m", "ef_construction"):
        if key in hnsw:
            params[key] = hnsw[key]
    return description.field_names[0], index_type, params


def split_fragments(fragments: list[tuple[int, int]], num_segments: int) -> list[list[int]]:
    """Cut (fragment id, rows) pairs, in id order, into contiguous groups of about equal rows.

    Every group gets at least one fragment, so there are ``min(num_segments,
    len(fragments))`` groups.
    """
    ordered = sorted(fragments)
    n = len(ordered)
    count = max(1, min(num_segments, n))
    total = sum(rows for _, rows in ordered)
    groups: list[list[int]] = [[] for _ in range(count)]
    seen, previous = 0, 0
    for i, (fid, rows) in enumerate(ordered):
        # The group whose share of rows holds this fragment's middle row, but never
        # skipping a group, and leaving a fragment for every group still to come.
        middle = (seen + rows / 2) * count / total if total else (i + 0.5) * count / n
        group = min(int(middle), previous + 1 if i else 0)
        group = min(max(group, previous, count - (n - i)), count - 1)
        groups[group].append(fid)
        seen, previous = seen + rows, group
    return groups


def _check_target(dataset: Any, spec: VectorIndexSpec, replace: bool) -> None:
    if spec.column not in dataset.schema.names:
        raise InvalidInput(f"cannot index column '{spec.column}': the table's columns are "
                           f"{dataset.schema.names}")
    column_type = dataset.schema.field(spec.column).type
    if not (pa.types.is_fixed_size_list(column_type) or isinstance(column_type, pa.FixedShapeTensorType)):
        raise InvalidInput(f"column '{spec.column}' is {column_type}, not a fixed-size vector column")
    if dataset.count_rows() == 0:
        raise InvalidInput("cannot build a vector index on an empty table")
    if not replace and any(index.name == spec.name for index in dataset.describe_indices()):
        raise AlreadyExists(f"index '{spec.name}' already exists")


def _train_model(handle: TableHandle, version: int, spec: VectorIndexSpec, use_gpu: bool,
                 gpu_wait_seconds: float, ctx: JobContext) -> VectorModel:
    """One training task, on a GPU worker when wanted and one comes in time, else on a CPU."""
    num_gpus = 0
    if use_gpu:
        ctx.note("waiting for a GPU worker")
        if wait_for_gpus(gpu_wait_seconds):
            num_gpus = 1
        else:
            METRICS.inc("gpu_fallbacks_total", reason="no_gpu_node")
            _LOG.warning("use_gpu is set but the cluster has no GPU (none came within %.0f s): "
                         "training on a CPU", gpu_wait_seconds)
    options = ctx.resources.options(**({"num_gpus": num_gpus} if num_gpus else {}))
    return run_one(lambda: _train.options(**options).remote(handle, version, spec, bool(num_gpus)),
                   "train", ctx, step=f"training on a {'GPU' if num_gpus else 'CPU'}", num_gpus=num_gpus)


@watched
def _train(handle: TableHandle, version: int, spec: VectorIndexSpec, want_gpu: bool) -> VectorModel:
    from lance.indices import IndicesBuilder

    start = time.monotonic()
    dataset = handle.open(version)
    num_rows = dataset.count_rows()
    builder = IndicesBuilder(dataset, spec.column)
    choice = choose_accelerator(want_gpu)

    def train_ivf(accelerator: str | None) -> Any:
        return builder.train_ivf(spec.partitions_for(num_rows), distance_type=spec.metric,
                                 accelerator=accelerator, sample_rate=spec.ivf_sample_rate(num_rows),
                                 max_iters=spec.max_iters or _DEFAULT_MAX_ITERS)

    try:
        ivf = train_ivf(choice.accelerator)
    except Exception as exc:
        if choice.accelerator is None:
            raise
        _LOG.warning("lance failed to train on CUDA (%s); training on the CPU instead", exc)
        choice = AcceleratorChoice(None, f"lance failed on CUDA: {exc}")
        ivf = train_ivf(None)
    pq_codebook = num_sub_vectors = rabitq_model = None
    if spec.uses_pq:
        pq = builder.train_pq(ivf, spec.num_sub_vectors, sample_rate=spec.pq_sample_rate(num_rows),
                              max_iters=spec.max_iters or _DEFAULT_MAX_ITERS, num_bits=spec.num_bits or 8)
        pq_codebook, num_sub_vectors = pq.codebook, pq.num_subvectors
    if spec.index_type == "IVF_RQ":
        from lance.lance import indices

        rabitq_model = indices.build_rq_model(builder.dimension, spec.num_bits or 5)
    return VectorModel(ivf.num_partitions, ivf.centroids, pq_codebook, num_sub_vectors, rabitq_model,
                       choice.accelerator, choice.fallback_reason, node_id(), time.monotonic() - start)


@watched
def _build_segment(handle: TableHandle, version: int, spec: VectorIndexSpec, model: VectorModel,
                   fragment_ids: list[int]) -> tuple[Any, SegmentInfo]:
    started = time.time()
    kwargs: dict[str, Any] = {"num_partitions": model.num_partitions, "ivf_centroids": model.ivf_centroids}
    if model.pq_codebook is not None:
        kwargs.update(pq_codebook=model.pq_codebook, num_sub_vectors=model.num_sub_vectors,
                      num_bits=spec.num_bits or 8)
    if model.rabitq_model is not None:
        kwargs.update(rabitq_model=model.rabitq_model, num_bits=spec.num_bits or 5)
    if spec.index_type.endswith("_SQ") and spec.num_bits:
        kwargs["num_bits"] = spec.num_bits
    for key in ("m", "ef_construction", "sample_rate", "max_iters"):
        if getattr(spec, key) is not None:
            kwargs[key] = getattr(spec, key)
    segment = handle.open(version).create_index_uncommitted(
        spec.column, spec.index_type, name=spec.name, metric=spec.metric, replace=True,
        fragment_ids=fragment_ids, **kwargs)
    info = SegmentInfo(str(segment.uuid), tuple(fragment_ids), node_id(), os.getpid(), started, time.time())
    return segment, info


@watched
def _whole_build(handle: TableHandle, version: int, spec: VectorIndexSpec) -> int:
    """A table too small to share a model: lance's own create_index, which samples what there is."""
    kwargs = {key: getattr(spec, key) for key in ("num_sub_vectors", "num_bits", "m", "ef_construction",
                                                  "sample_rate", "max_iters")
              if getattr(spec, key) is not None}
    dataset = handle.open(version)
    num_rows = dataset.count_rows()
    num_partitions = min(spec.partitions_for(num_rows), max(1, num_rows // 2))
    dataset = dataset.create_index(spec.column, spec.index_type, name=spec.name, metric=spec.metric,
                                   replace=True, num_partitions=num_partitions, **kwargs)
    return dataset.version
