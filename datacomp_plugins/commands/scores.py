"""``datacomp-plugins scores``: every pool sample's scores as a parquet table (uid + one column per score)."""

from __future__ import annotations

import argparse
import time

from datacomp_plugins.commands import DefaultsHelpFormatter
from datacomp_plugins.core.pool import ARCH_DIMS


def add_score_arguments(parser: argparse.ArgumentParser, scores_help: str) -> None:
    """Flags that define the scores: the run's compute settings and every registered score's own settings,
    with the names and defaults of ``filter`` (so the cache is shared)."""
    from datacomp_plugins import flags

    parser.add_argument("--arch", choices=sorted(ARCH_DIMS), default="l14", help="which CLIP embeddings to use")
    parser.add_argument("--scores", default=None, help=scores_help)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="dtype of the matrix products")
    parser.add_argument("--num_workers", type=int, default=1, help="worker processes scoring shards")
    parser.add_argument("--num_gpus", type=int, default=0, help="GPUs to score on (0 = CPU)")
    parser.add_argument("--batch_size", type=int, default=0, help="logit rows held at once (0: automatic)")
    parser.add_argument("--cache_dir", default=None, help="score cache (None: as for filter)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    flags.add_score_arguments(parser)


def score_params(args: argparse.Namespace) -> dict:
    """The registered scores' settings from parsed flags, by name."""
    from datacomp_plugins import scores

    return {f.name: getattr(args, f.name) for spec in scores.registry().values() if spec.provides("shard_score")
            for f in spec.settings() if hasattr(args, f.name)}


def settings_from_args(args: argparse.Namespace, metadata_dir: str):
    """ScoreSettings from parsed flags (``--scores`` checked here, before any work)."""
    from datacomp_plugins.apps.pool_scores import ScoreSettings, parse_score_names

    params = score_params(args)
    return ScoreSettings(
        metadata_dir=metadata_dir, arch=args.arch, scores=parse_score_names(args.scores, params),
        precision=args.precision, num_workers=args.num_workers, num_gpus=args.num_gpus,
        batch_size=args.batch_size, cache_dir=args.cache_dir, progress=not args.no_progress, params=params)


def refuse_overwriting_inputs(out: str, flag: str, settings, inputs: list[tuple[str, str | None]] = ()) -> None:
    """The shared input-is-output check for the commands built on the score cache: the pool's shards, the
    target, the score cache and the command's own ``inputs`` are never an output."""
    from datacomp_plugins.config import score_inputs
    from datacomp_plugins.core.cache import default_cache_dir
    from datacomp_plugins.core.fileio import refuse_input_as_output

    refuse_input_as_output(out, flag, [*inputs, *score_inputs(settings.params)],
                           [("--metadata_dir", settings.metadata_dir)],
                           [("--cache_dir", settings.cache_dir or default_cache_dir())])


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scores", formatter_class=DefaultsHelpFormatter,
        help="write every pool sample's scores (uid + one column per score) to parquet",
        description="One row per pool row: the hex uid as in DataComp's metadata and one float32 column per "
                    "score, read from the score cache (computed there first when missing), shard by shard.")
    parser.add_argument("--metadata_dir", required=True, metavar="POOL",
                        help="DataComp metadata folder (<stem>.parquet + <stem>.npz), path or fsspec URL")
    parser.add_argument("--out", required=True, help="parquet file to write (path or fsspec URL)")
    add_score_arguments(parser, "comma-separated from clip_score, negcliploss, normsim2, normsiminf "
                                "(None: clip_score,negcliploss, plus both NormSims with --target)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from datacomp_plugins.apps.pool_scores import PoolScores, write_parquet
    from datacomp_plugins.core.fileio import check_writable

    started = time.perf_counter()
    settings = settings_from_args(args, args.metadata_dir)
    refuse_overwriting_inputs(args.out, "--out", settings)
    check_writable(args.out, "--out")
    scores = PoolScores(settings)
    rows = write_parquet(scores, args.out, settings.progress)
    print(f"scores: {rows:,} rows x {len(scores.names)} scores ({', '.join(scores.names)}) from "
          f"{len(scores.pool.shards)} shards ({scores.shards_scored} scored, "
          f"{len(scores.pool.shards) - scores.shards_scored} from cache) -> {args.out} in "
          f"{time.perf_counter() - started:.1f} s")
    return 0
