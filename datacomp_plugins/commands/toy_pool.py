"""``datacomp-plugins toy-pool OUT``: a small pool in DataComp's layout with planted, labelled structure."""

from __future__ import annotations

import argparse

from datacomp_plugins.commands import DefaultsHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "toy-pool", formatter_class=DefaultsHelpFormatter,
        help="write a small example pool (DataComp layout) with labelled planted structure",
        description="Write OUT/metadata/<stem>.parquet + .npz in DataComp's layout and OUT/labels.parquet "
                    "saying which samples are clean, mismatched or generic captions.")
    parser.add_argument("out", help="output folder (created)")
    parser.add_argument("--shards", type=int, default=6, help="number of metadata shards")
    parser.add_argument("--rows", type=int, default=4000, help="rows per shard (the last one is shorter)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a pool already in OUT (without it, an existing pool is refused)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from datacomp_plugins.apps.toy import write_toy_pool
    from datacomp_plugins.core.ranges import SEED, TOY_ROWS, TOY_SHARDS

    TOY_SHARDS.check(args.shards, "--shards")
    TOY_ROWS.check(args.rows, "--rows")
    SEED.check(args.seed, "--seed")
    summary = write_toy_pool(args.out, shards=args.shards, rows=args.rows, seed=args.seed, overwrite=args.overwrite)
    print(summary)
    return 0
