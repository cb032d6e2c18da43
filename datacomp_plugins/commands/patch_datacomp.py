"""``datacomp-plugins patch-datacomp PATH [--check]``: make DataComp's ``baselines.py`` offer our baselines."""

from __future__ import annotations

import argparse

from datacomp_plugins.apps.patch import DATACOMP_COMMIT
from datacomp_plugins.commands import DefaultsHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "patch-datacomp", formatter_class=DefaultsHelpFormatter,
        help="patch a DataComp checkout so its baselines.py runs our baselines",
        description=f"Apply the shipped patch (for DataComp {DATACOMP_COMMIT}) to PATH/baselines.py. Running it "
                    "again is a no-op; a checkout the patch does not fit is refused untouched. Exit status: 0 "
                    "applied, already applied, or (--check) would apply; 2 refused.")
    parser.add_argument("path", metavar="PATH", help="DataComp checkout: the folder holding baselines.py")
    parser.add_argument("--check", action="store_true",
                        help="only report would-apply / already-applied / does-not-apply; change nothing")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from datacomp_plugins.apps.patch import patch_datacomp

    print(patch_datacomp(args.path, check=args.check).message())
    return 0
