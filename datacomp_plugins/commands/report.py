"""``datacomp-plugins report``: compare DataComp evaluation runs with each other and with the paper."""

from __future__ import annotations

import argparse
import sys

from datacomp_plugins.commands import DefaultsHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand."""
    parser = subparsers.add_parser(
        "report", formatter_class=DefaultsHelpFormatter,
        help="compare eval_results.jsonl of DataComp runs (ImageNet, dist. shifts, VTAB, retrieval, avg-38)",
        description=(
            "Read eval_results.jsonl (written by DataComp's evaluate.py) of each run and print one row per "
            "run, grouped as DataComp's aggregate_scores.py does. When a task appears on several lines, the "
            "last line is used. The paper's reported DataComp-medium numbers are shown beside the runs."
        ),
    )
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR",
        help="evaluation output folder holding eval_results.jsonl, the path of that file, or a folder of "
             "such folders (minicomp run's runs/ folder: one row per <baseline>/seed<k>)",
    )
    parser.add_argument(
        "--out", metavar="DIR", default=None,
        help="also write report.md, report.csv and report.png (bar chart) into DIR, created if needed",
    )
    parser.add_argument(
        "--partial", action="store_true",
        help="accept runs missing some of the 38 tasks: average over the tasks present, mark the row partial",
    )
    parser.add_argument(
        "--no-paper", dest="paper", action="store_false", default=argparse.SUPPRESS,
        help="leave out the paper's reference rows (they are shown unless this is given)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Validate every run before writing anything, so bad input leaves no output files."""
    from datacomp_plugins.apps import report

    rows = report.build_rows(args.runs, allow_partial=args.partial, with_paper=getattr(args, "paper", True))
    print(report.render_markdown(rows), end="")
    if args.out is not None:
        for path in report.write_report(rows, args.out):
            print(f"wrote {path}", file=sys.stderr)
    return 0
