"""``datacomp-plugins inspect``: one self-contained HTML page of what one or two uid files kept and dropped."""

from __future__ import annotations

import argparse

from datacomp_plugins.commands import DefaultsHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    from datacomp_plugins.commands.scores import add_score_arguments

    parser = subparsers.add_parser(
        "inspect", formatter_class=DefaultsHelpFormatter,
        help="an HTML page of the samples a filter kept and dropped (histograms, thumbnails)",
        description="Write one self-contained HTML page (thumbnails embedded, no network): per uid file a "
                    "histogram of each score with the cut-off marked and samples just above and below it, at "
                    "both extremes and at random; for two files the samples only one keeps; with --truth the "
                    "share of each component kept. Without --shards the page shows scores only.")
    parser.add_argument("files", nargs="+", metavar="A.npy", help="one or two uid files")
    parser.add_argument("--metadata_dir", required=True, metavar="POOL", help="DataComp metadata folder")
    parser.add_argument("--shards", default=None, metavar="SHARDS",
                        help="folder of the pool's webdataset tars (img2dataset's or the resharder's layout)")
    parser.add_argument("--truth", default=None, metavar="PATH",
                        help="truth labels: a .parquet file (the toy pool's labels.parquet) or a folder of them, "
                             "with columns uid (hex) and component (string)")
    parser.add_argument("--out", required=True, help="HTML file to write")
    parser.add_argument("--per_group", type=int, default=12, help="samples per grid")
    parser.add_argument("--page_seed", type=int, default=0, help="seed of the random samples on the page")
    add_score_arguments(parser, "scores to show (None: clip_score,negcliploss, plus NormSims with --target)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from datacomp_plugins.apps.inspect_page import build_page
    from datacomp_plugins.apps.pool_scores import PoolScores
    from datacomp_plugins.commands.scores import refuse_overwriting_inputs, settings_from_args
    from datacomp_plugins.core import ranges
    from datacomp_plugins.core.errors import PluginError
    from datacomp_plugins.core.fileio import check_writable

    if not 1 <= len(args.files) <= 2:
        raise PluginError(f"inspect: expected one or two uid files, got {len(args.files)}")
    ranges.PER_GROUP.check(args.per_group, "--per_group")
    ranges.SEED.check(args.page_seed, "--page_seed")
    settings = settings_from_args(args, args.metadata_dir)
    refuse_overwriting_inputs(args.out, "--out", settings, [*(("uid file", f) for f in args.files),
                                                            ("--shards", args.shards), ("--truth", args.truth)])
    check_writable(args.out, "--out")
    summary = build_page(args.files, PoolScores(settings), args.out, shards=args.shards, truth=args.truth,
                         seed=args.page_seed, group=args.per_group, progress=settings.progress)
    for note in summary.notes:
        print(f"note: {note}")
    files = "; ".join(f"{f['path']}: {f['count']:,} uids, cut-off by {f['primary']} "
                      f"{'-' if f['cutoff'] is None else format(f['cutoff'], '.6g')}" for f in summary.files)
    print(f"inspect: {summary.pool_samples:,} pool samples; {files}; {summary.shown} samples shown, "
          f"{summary.images} thumbnails, {summary.bytes / 1e6:.2f} MB -> {args.out} in {summary.seconds:.1f} s")
    return 0
