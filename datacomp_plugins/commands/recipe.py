"""``datacomp-plugins recipe NAME``: run a named baseline / paper table row from ``baselines/``."""

from __future__ import annotations

import argparse

from datacomp_plugins.commands import DefaultsHelpFormatter
from datacomp_plugins.flags import add_engine_arguments, engine_setting_names


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recipe", formatter_class=DefaultsHelpFormatter, help="run a named recipe (a paper table row) from baselines/",
        description="Run one recipe of baselines/ (or a .toml path). --list shows them with the paper's "
                    "numbers.")
    parser.add_argument("recipe", nargs="?", help="recipe name or path to a .toml")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    parser.add_argument("--metadata_dir", help="DataComp metadata directory (local path or fsspec URL)")
    parser.add_argument("--save_path", help="output uid file (.npy)")
    parser.add_argument("--target", help="fills {target}: target image embeddings (file or folder)")
    parser.add_argument("--dfn_uids", help="fills {dfn_uids}: DFN's medium uid file")
    parser.add_argument("--hype_uids", help="fills {hype_uids}: HYPE's uid file")
    parser.add_argument("--manifest", help="a mini DataComp world's MANIFEST.json: gives settings written "
                        "\"manifest\" (the teacher's temperature and batch size); default: beside the metadata folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="fill another placeholder or override a filter setting (repeatable)")
    for flag, kind in (("--num_workers", int), ("--num_gpus", int), ("--batch_size", int), ("--cache_dir", str),
                       ("--engine", str)):
        parser.add_argument(flag, type=kind, default=None, help="as for `filter`")
    add_engine_arguments(parser, default_none=True)  # each engine's own settings, from its schema
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from datacomp_plugins import recipes
    from datacomp_plugins.core.errors import PluginError

    if args.list:
        for name in recipes.available():
            recipe = recipes.load(name)
            paper = " / ".join(f"{recipe.paper[k]:.1f}" if k in recipe.paper else "-"
                               for k in ("imagenet", "vtab", "average"))
            needs = "".join(f" --{p}" for p in recipe.placeholders())
            needs = f" (needs{needs})" if needs else ""
            print(f"{name:<32} {paper:<18} {recipe.expected_samples:>11,}  {recipe.title}{needs}")
        print("(paper: DataComp-medium ImageNet / VTAB / Avg-38 in percent; then expected samples at medium scale)")
        return 0
    if not args.recipe or not args.metadata_dir or not args.save_path:
        raise PluginError("recipe: give a recipe name, --metadata_dir and --save_path (or --list)")
    recipe = recipes.load(args.recipe)
    values = {k: getattr(args, k) for k in ("target", "dfn_uids", "hype_uids", "manifest") if getattr(args, k)}
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise PluginError(f"--set {item}: expected KEY=VALUE")
        if key in recipe.placeholders():
            values[key] = value
        else:
            overrides[key] = recipes.parse_setting(key, value)  # typed by the filter settings' schema
    for key in ("num_workers", "num_gpus", "batch_size", "cache_dir", "engine", *engine_setting_names()):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    overrides["progress"] = not args.no_progress
    print(recipes.run(recipe, args.metadata_dir, args.save_path, values, overrides))
    print(f"wrote {args.save_path}")
    return 0
