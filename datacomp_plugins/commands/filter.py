"""``datacomp-plugins filter``: DataComp's ``baselines.py`` flags with their DataComp meaning, plus ours."""

from __future__ import annotations

import argparse
import dataclasses

from datacomp_plugins.commands import DefaultsHelpFormatter
from datacomp_plugins.config import FilterConfig, baselines
from datacomp_plugins.core.pool import ARCH_DIMS


def add_plugin_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags DataComp's baselines.py does not have (shared with the DataComp patch), built from the
    settings' schema: the run's own settings, then one group per registered score with settings."""
    from datacomp_plugins import config, scores

    group = parser.add_argument_group("negCLIPLoss / NormSim")
    for name, kind, f in config.RUN_SETTINGS:
        _add(group, name, kind, f)
    group.add_argument("--no_progress", action="store_true", help="no progress bar")
    taken = {name for name, _, _ in config.DATACOMP_SETTINGS + config.RUN_SETTINGS}
    for spec in scores.registry().values():
        own = [f for f in spec.settings() if f.name not in taken]
        if own:
            section = parser.add_argument_group(f"{spec.name}: {spec.summary}")
            for f in own:
                _add(section, f.name, config.type_name(f.type), f)
                taken.add(f.name)


def _add(group, name: str, kind: str, f: dataclasses.Field) -> None:
    """One setting as a flag: its type, default, choices and help from the schema."""
    from datacomp_plugins.config import choices_of

    meta = f.metadata
    if not meta.get("flag", True):
        return
    kind = kind.split("|")[0].strip()
    if kind == "bool":
        group.add_argument(f"--{name}", action="store_true", help=meta.get("help"))
        return
    group.add_argument(f"--{name}", type={"int": int, "float": float}.get(kind, str), default=f.default,
                       choices=choices_of(f), help=meta.get("help"))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "filter", help="select a subset of a DataComp pool and write its uid file",
        description="Score a DataComp metadata pool and write the uid file that resharder.py reads.",
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--name", required=True, choices=sorted(baselines()), help="baseline to run")
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
    from datacomp_plugins.pipeline import run_filter

    summary = run_filter(config_from_args(args))
    print(summary.line())
    print(f"wrote {args.save_path}")
    return 0
