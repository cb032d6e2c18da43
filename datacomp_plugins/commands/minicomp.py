"""``datacomp-plugins minicomp``: the mini DataComp (a rendered world in DataComp's layout, and runs on it)."""

from __future__ import annotations

import argparse
import sys

from datacomp_plugins.commands import DefaultsHelpFormatter


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``minicomp`` parser and its subcommands."""
    parser = subparsers.add_parser(
        "minicomp", formatter_class=DefaultsHelpFormatter,
        help="the mini DataComp: build a rendered world in DataComp's layout, run filters on it",
        description="A miniature DataComp on a CPU: rendered images and captions, trained teacher CLIPs, "
                    "DataComp's layout (docs/MINICOMP.md). Needs the minicomp extra.",
    )
    sub = parser.add_subparsers(dest="minicomp_command", metavar="SUBCOMMAND")
    sub.required = True
    build = sub.add_parser(
        "build", formatter_class=DefaultsHelpFormatter,
        help="render a world into OUT (shards, metadata, evalsets, targets, truth, teachers)",
        description="Render the world (default: the packaged one) into OUT in DataComp's layout, train its two "
                    "teacher CLIPs with open_clip_train and embed the pool with them. Same world and seed: "
                    "byte-identical shards/, metadata/ and truth/. Rebuilding into an OUT of the same world "
                    "resumes; an OUT of another world is refused.")
    build.add_argument("out", metavar="OUT", help="output folder (new, empty, or an earlier build of this world)")
    build.add_argument("--world", default=None, metavar="FILE",
                       help="world TOML, or the name of a packaged world (default, second); None: default")
    build.add_argument("--quick", action="store_true", help="apply the world's [quick] table (a small world)")
    build.add_argument("--seed", type=_non_negative_int, default=None, help="seed (None: the world file's seed)")
    build.add_argument("--workers", type=_positive_int, default=None, help="rendering processes (None: one per CPU)")
    build.add_argument("--strict", action="store_true",
                       help="exit with status 3 when a gate of the world fails (docs/MINICOMP.md, 'Gates')")
    build.add_argument("--no_progress", action="store_true", help="no progress bars")
    build.set_defaults(handler=run_build)
    from datacomp_plugins.apps.minicomp import run as minicomp_run

    run = sub.add_parser(
        "run", formatter_class=DefaultsHelpFormatter,
        help="train and evaluate a student per filtered subset of OUT; write OUT/report.md",
        description="For each baseline: the package's filter -> DataComp's resharder.py -> a student CLIP by "
                    "open_clip_train with DataComp train.py's arguments -> DataComp's wds_eval -> "
                    "OUT/runs/<baseline>/seed<k>/eval_results.jsonl; then OUT/report.md and report.png with the "
                    "pre-registered claims (docs/MINICOMP.md). Finished pairs are skipped; a killed run resumes. "
                    "Needs DATACOMP_DIR.")
    minicomp_run.add_arguments(run)
    run.set_defaults(handler=minicomp_run.run_command)


def run_build(args: argparse.Namespace) -> int:
    """Handler of ``minicomp build``."""
    from datacomp_plugins.apps.minicomp.build import build

    manifest = build(args.out, world_path=args.world, quick=args.quick, seed=args.seed, workers=args.workers,
                     progress=not args.no_progress)
    failed = [g["name"] for g in manifest["gates"] if not g["passed"]]
    if failed and args.strict:
        print(f"error: {args.out}: {len(failed)} gate(s) failed ({', '.join(failed)}); the world is built, but it "
              "is not an instrument for the claims the failed gates guard", file=sys.stderr)
        return 3
    return 0
