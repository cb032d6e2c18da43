"""``datacomp-plugins filter``: DataComp's ``baselines.py`` flags with their DataComp meaning, plus ours."""

from __future__ import annotations

import argparse

from datacomp_plugins.commands import DefaultsHelpFormatter
from datacomp_plugins.core.pool import ARCH_DIMS
from datacomp_plugins.flags import add_plugin_arguments, baseline_choices, config_from_args

__all__ = ["add_plugin_arguments", "config_from_args", "register", "run"]  # the first two: older DataComp patches


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "filter", help="select a subset of a DataComp pool and write its uid file",
        description="Score a DataComp metadata pool and write the uid file that resharder.py reads.",
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--name", required=True, choices=baseline_choices(), help="baseline to run")
    parser.add_argument("--metadata_dir", required=True,
                        help="directory (local path or fsspec URL) of <stem>.parquet + <stem>.npz files")
    parser.add_argument("--save_path", required=True, help="output uid file (.npy)")
    parser.add_argument("--arch", choices=sorted(ARCH_DIMS), default="l14",
                        help="which OpenAI CLIP embeddings of the cache to use")
    parser.add_argument("--fraction", type=float, default=None,
                        help="keep this share of the pool (exactly floor(N*F) samples)")
    parser.add_argument("--threshold", type=float, default=None, help="keep samples with score >= this")
    parser.add_argument("--num_workers", type=int, default=1, help="worker processes scoring shards")
    parser.add_argument("--num_gpus", type=int, default=0, help="GPUs to score on (0 = CPU)")
    parser.add_argument("--batch_size", type=int, default=0,
                        help="compute batch: rows of the logit matrix held at once (0: 64 MiB of logits)")
    add_plugin_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from datacomp_plugins.pipeline import run_filter

    summary = run_filter(config_from_args(args))
    print(summary.line())
    print(f"wrote {args.save_path}")
    return 0
