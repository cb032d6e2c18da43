"""``datacomp-plugins filter``: DataComp's ``baselines.py`` flags with their DataComp meaning, plus ours."""

from __future__ import annotations

import argparse
import dataclasses

from datacomp_plugins.commands import DefaultsHelpFormatter
from datacomp_plugins.core.pool import ARCH_DIMS
from datacomp_plugins.filtering import BASELINES, ENGINES, MISSING_SCORE, PRECISIONS, QUALITY_SCORES, FilterConfig
from datacomp_plugins.scoring import CACHE_ENV


def add_plugin_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags DataComp's baselines.py does not have (shared with the DataComp patch)."""
    group = parser.add_argument_group("negCLIPLoss / NormSim")
    group.add_argument("--num_batches", type=int, default=10,
                       help="negCLIPLoss: random batches averaged per sample (K; paper: 10)")
    group.add_argument("--negcliploss_batch_size", type=int, default=32768,
                       help="negCLIPLoss: batch size B (the teacher's training batch; paper: 32768); "
                            ">= the shard size means one batch = the whole shard")
    group.add_argument("--temperature", type=float, default=0.01,
                       help="negCLIPLoss: teacher temperature τ (0.01 for OpenAI CLIP)")
    group.add_argument("--seed", type=int, default=0,
                       help="seed of the random batches (one generator per shard from seed and shard name)")
    group.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="dtype of the matrix products (sums and logs in fp32). fp32 (default) gives the same "
                            "uid file on every machine. bf16 was 2.5x faster end to end on a CPU with AMX, but "
                            "2.3-3.2x slower on CPUs without bf16 units (no amx_bf16/avx512_bf16), where it "
                            "warns; auto times a short product in fp32 and bf16 here and uses the faster "
                            "(printed in the summary). See docs/PERFORMANCE.md")
    group.add_argument("--quality_score", choices=QUALITY_SCORES, default="negcliploss",
                       help="normsim baselines: the quality stage's score (--fraction/--threshold); "
                            "--fraction 1.0 means no quality stage")
    group.add_argument("--normsim_fraction", type=float, default=None,
                       help="normsim baselines: keep floor(N*F2) of the pool (N samples) by NormSim among the "
                            "quality stage's survivors (paper: --fraction 0.3 --normsim_fraction 0.2)")
    group.add_argument("--normsim_threshold", type=float, default=None,
                       help="normsim2/normsiminf: keep survivors with NormSim >= this instead")
    group.add_argument("--target", default=None,
                       help="normsim2/normsiminf: 'in1k' (DataComp's ImageNet-1k L/14 features) or a .npy/.npz/"
                            ".pt file or folder of target image embeddings")
    group.add_argument("--target_key", default=None, help="array name inside a .npz target")
    group.add_argument("--normsim_d_iters", type=int, default=500,
                       help="normsim_d: iterations (capped so each drops at least one sample; paper: 500)")
    group.add_argument("--cache_dir", default=None,
                       help=f"score cache; unset: ${CACHE_ENV} or ~/.cache/datacomp_plugins/scores")
    group.add_argument("--given_uids", default=None,
                       help="restrict the pool to these uid files first (A.npy::B.npy = their intersection), "
                            "e.g. DFN's datacomp_medium_dfn_20m_inds.npy; fractions are then of the restricted pool")
    group.add_argument("--external_scores", default=None,
                       help="parquet with a hex 'uid' column and a score column (e.g. HYPE scores you computed)")
    group.add_argument("--external_column", default=None, help="score column of --external_scores")
    group.add_argument("--external_fraction", type=float, default=None,
                       help="keep the top share of the (restricted) pool by --external_column first")
    group.add_argument("--missing_score", choices=MISSING_SCORE, default="drop",
                       help="pool samples --external_scores has no score for: drop them (counted in the "
                            "summary) or stop with an error naming the first one")
    group.add_argument("--allow_empty", action="store_true",
                       help="write an empty uid file when nothing passes, instead of stopping with an error")
    group.add_argument("--streaming", action="store_true",
                       help="select in passes over the cached scores, holding only the kept uids (for pools "
                            "whose ~22 bytes/sample of scores do not fit in memory; quality stage alone)")
    group.add_argument("--engine", choices=ENGINES, default="local",
                       help="local: this machine's processes; ray: Ray tasks on a cluster (extra 'ray')")
    group.add_argument("--ray_address", default=None,
                       help="Ray cluster to join; unset: $RAY_ADDRESS, else start a local one")
    group.add_argument("--no_progress", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "filter", help="select a subset of a DataComp pool and write its uid file",
        description="Score a DataComp metadata pool and write the uid file that resharder.py reads.",
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--name", required=True, choices=sorted(BASELINES), help="baseline to run")
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


def config_from_args(args: argparse.Namespace) -> FilterConfig:
    """Take the FilterConfig fields from parsed arguments (unknown attributes are ignored)."""
    fields = {f.name: f for f in dataclasses.fields(FilterConfig)}
    # a flag left unset (None) by another parser, e.g. DataComp's --arch, keeps our default
    values = {k: v for k, v in vars(args).items()
              if k in fields and not (v is None and fields[k].default is not None)}
    values["progress"] = not getattr(args, "no_progress", False)
    return FilterConfig(**values)


def run(args: argparse.Namespace) -> int:
    from datacomp_plugins.filtering import run_filter

    summary = run_filter(config_from_args(args))
    print(summary.line())
    print(f"wrote {args.save_path}")
    return 0
