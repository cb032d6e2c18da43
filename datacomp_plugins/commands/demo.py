"""``datacomp-plugins demo OUT``: the baselines side by side on the labelled example pool."""

from __future__ import annotations

import argparse

from datacomp_plugins.commands import DefaultsHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", formatter_class=DefaultsHelpFormatter, help="build the example pool and compare the baselines on it",
        description="Write the example pool under OUT (unless present), run each baseline at the same "
                    "fraction, and print how many samples of each planted kind it kept.")
    parser.add_argument("out", help="folder for the example pool and the uid files")
    parser.add_argument("--fraction", type=float, default=0.3, help="quality fraction of every baseline")
    parser.add_argument("--normsim_fraction", type=float, default=0.2, help="final fraction of the NormSim rows")
    parser.add_argument("--rebuild", action="store_true", help="rewrite the example pool")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from datacomp_plugins.apps.demo_table import default_entries, kept_by_kind, render
    from datacomp_plugins.config import check_stage_fractions
    from datacomp_plugins.select.masks import check_fraction

    check_fraction(args.fraction, "--fraction")
    check_fraction(args.normsim_fraction, "--normsim_fraction")
    # before the pool is built, not after
    check_stage_fractions(args.fraction, args.normsim_fraction, "--normsim_fraction")
    entries = default_entries(args.out, args.fraction, args.normsim_fraction)
    rows, totals, relevant = kept_by_kind(args.out, entries, rebuild=args.rebuild)
    print(render(rows, totals, relevant))
    return 0
