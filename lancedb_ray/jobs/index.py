"""Bulk index build on the cluster.

    ray job submit -- python -m lancedb_ray.jobs.index --database DB --table T --column C \\
        --index-type IVF_PQ [--num-partitions N] [--num-sub-vectors N] [--metric l2|cosine|dot] \\
        [--segments N] [--gpu/--no-gpu] [--name NAME] [--param key=value ...] [--config settings.yaml]

A vector index type trains once (on a GPU worker with ``--gpu``), builds
``--segments`` segments in parallel Ray tasks and commits them as one version
(``lancedb_ray.indexers.build_vector_index``). BTREE, BITMAP, LABEL_LIST and
FTS build their segments in parallel and merge them into one
(``build_scalar_index``). ``--gpu``/``--no-gpu`` default to the settings'
``agent.use_gpu``, and that to "when the cluster has GPUs".
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from lancedb_ray.errors import InvalidInput
from lancedb_ray.indexers import (
    SCALAR_INDEX_TYPES,
    VECTOR_INDEX_TYPES,
    JobContext,
    build_scalar_index,
    resolve_use_gpu,
    run_vector_build,
    table_handle,
)
from lancedb_ray.jobs.common import (
    add_target_arguments,
    connect_ray,
    locate,
    progress_printer,
    publish_change,
    setup_logging,
)
from lancedb_ray.settings import Settings

_VECTOR_FLAGS = ("metric", "num_partitions", "num_sub_vectors", "num_bits", "sample_rate",
                 "max_iterations", "m", "ef_construction", "target_partition_size")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lancedb_ray.jobs.index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(parser)
    parser.add_argument("--column", required=True)
    parser.add_argument("--index-type", default="IVF_PQ",
                        help=f"one of {[*VECTOR_INDEX_TYPES, *SCALAR_INDEX_TYPES, 'FTS']}")
    parser.add_argument("--name", default=None, help="default: <column>_idx")
    parser.add_argument("--no-replace", dest="replace", action="store_false",
                        help="fail if an index of that name exists")
    parser.add_argument("--metric", default=None, help="l2 (default), cosine, dot or hamming")
    for flag in _VECTOR_FLAGS[1:]:
        parser.add_argument(f"--{flag.replace('_', '-')}", type=int, default=None)
    parser.add_argument("--segments", type=int, default=None,
                        help="segments built in parallel (default: agent.index_segments)")
    parser.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                        help="train on a GPU worker (default: agent.use_gpu)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="another index parameter, e.g. with_position=false (JSON values)")
    return parser.parse_args(argv)


def index_params(args: argparse.Namespace) -> dict[str, Any]:
    params = {flag: getattr(args, flag) for flag in _VECTOR_FLAGS if getattr(args, flag) is not None}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--param takes KEY=VALUE, not '{item}'")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value  # a bare string, such as a language name
    return params


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    settings = Settings.load(args.config)
    connect_ray(settings)
    handle = table_handle(locate(settings, args.database), args.table)
    params = index_params(args)
    segments = args.segments or settings.agent.index_segments
    kind = args.index_type.upper()
    ctx = JobContext.from_settings(settings, progress_printer("index"))
    start = time.monotonic()
    if kind in VECTOR_INDEX_TYPES:
        use_gpu = resolve_use_gpu(settings.agent.use_gpu if args.gpu is None else args.gpu)
        print(f"index: {kind} on {args.table}.{args.column}, {segments} segments, "
              f"training on {'a GPU' if use_gpu else 'a CPU'} worker", flush=True)
        build = run_vector_build(handle, args.column, kind, params, num_segments=segments,
                                 use_gpu=use_gpu, name=args.name, replace=args.replace, ctx=ctx)
        version = build.version
        if build.model is not None:
            print(f"index: trained on {build.model.device} in {build.model.seconds:.1f} s"
                  + (f" (fell back: {build.model.fallback_reason})" if build.model.fallback_reason else ""))
        print(f"index: {max(1, len(build.segments))} segments committed", flush=True)
    else:
        print(f"index: {kind} on {args.table}.{args.column}, {segments} segments", flush=True)
        version = build_scalar_index(handle, args.column, kind, params, num_segments=segments,
                                     name=args.name, replace=args.replace, ctx=ctx)
    print(f"index: committed version {version} of {args.database}/{args.table} "
          f"({time.monotonic() - start:.1f} s)", flush=True)
    if args.event:
        publish_change(settings, args.database, args.table, version, "create_index", 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
