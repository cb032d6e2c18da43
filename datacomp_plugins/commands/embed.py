"""``datacomp-plugins embed``: image embeddings of a target set (NormSim's targets) with an open_clip model."""

from __future__ import annotations

import argparse

from datacomp_plugins.commands import DefaultsHelpFormatter
from datacomp_plugins.core.procs import available_cpus
from datacomp_plugins.core.registry import EXTRAS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``embed`` parser."""
    parser = subparsers.add_parser(
        "embed", formatter_class=DefaultsHelpFormatter,
        help="embed target images (folder or webdataset tars) with an open_clip model, for NormSim",
        description=(
            "Compute L2-normalised image embeddings of a target set with any open_clip model and write them "
            "as a float32 .npy of shape (n_images, embed_dim). Rows follow the input order: folder files "
            "sorted by path, tar shards in the given order and their members in tar order (the first image "
            "of each webdataset sample). Unreadable images are skipped and counted. "
            f"{EXTRAS.hint('embed').capitalize()}."
        ),
    )
    parser.add_argument("--model", required=True,
                        help="open_clip architecture, e.g. ViT-L-14 (or hf-hub:org/repo, local-dir:PATH)")
    parser.add_argument("--pretrained", default=None,
                        help="open_clip pretrained tag (e.g. openai) or a local checkpoint file; omitted: "
                             "random weights. Checkpoints are loaded with weights_only=True")
    parser.add_argument("--images", required=True, nargs="+", metavar="SPEC",
                        help="image folder (recursive), tar shard(s) or a brace pattern such as "
                             "'train/{000..009}.tar'; several may be given; local paths or fsspec URLs")
    parser.add_argument("--out", required=True, help="output .npy path (written atomically)")
    parser.add_argument("--batch_size", type=int, default=256, help="images encoded at once")
    parser.add_argument("--num_workers", type=int, default=min(8, available_cpus()),
                        help="image decoding processes (0: decode in the main process); does not change "
                             "the output order")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available, else cpu")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="model precision; rows are always written as float32")
    parser.add_argument("--model_config", default=None, metavar="JSON",
                        help="extra open_clip model config JSON (or folder of them); the file name without "
                             ".json is the --model name it defines")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler: all checks and the work live in :mod:`datacomp_plugins.apps.embed`."""
    from datacomp_plugins.apps.embed import run_embed

    run_embed(
        model=args.model, pretrained=args.pretrained, images=args.images, out=args.out,
        batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
        precision=args.precision, model_config=args.model_config, progress=not args.no_progress,
    )
    return 0
