"""``datacomp-plugins uids compare``: overlap of uid files and, with the pool, the scores of their differences."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable


def register_compare(add: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    """Add ``compare`` to the ``uids`` actions (``add`` is that parser's helper)."""
    from datacomp_plugins.commands.scores import add_score_arguments

    parser = add("compare", "sizes, pairwise intersections and Jaccard; score quantiles of A∖B and B∖A",
                 "Compare uid files: sizes, every pair's intersection, union and Jaccard index; with "
                 "--metadata_dir, the score distributions (quantiles) of the samples only A keeps and only B "
                 "keeps, from the score cache (computed when missing).")
    parser.add_argument("first", metavar="A", help="uid file (.npy)")
    parser.add_argument("others", nargs="+", metavar="B", help="more uid files (.npy)")
    parser.add_argument("--metadata_dir", metavar="POOL", default=None, help="DataComp metadata folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_score_arguments(parser, "scores to compare (None: clip_score,negcliploss)")
    parser.set_defaults(handler=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from datacomp_plugins.apps import subsets

    started = time.perf_counter()
    paths = [args.first, *args.others]
    settings = None
    if args.metadata_dir is not None:
        from datacomp_plugins.commands.scores import settings_from_args

        settings = settings_from_args(args, args.metadata_dir)
    arrays = subsets.load_all(paths, lambda message: print(f"warning: {message}", file=sys.stderr))
    pool_scores = None
    if settings is not None:
        from datacomp_plugins.apps.pool_scores import PoolScores

        pool_scores = PoolScores(settings)
    result = subsets.compare(paths, arrays, pool_scores)
    result["seconds"] = round(time.perf_counter() - started, 3)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print("\n".join(subsets.format_text(result)))
        print(f"seconds: {result['seconds']:.2f}")
    return 0
