"""Recipes: one TOML file per named baseline / paper table row, in the repository's ``baselines/`` folder.

A recipe holds the exact filter flags (``[filter]``), optional uid files to unite with the result
(``[union] files``), the paper's reported DataComp-medium numbers (``[paper]``) and the expected subset size
at medium scale (``[medium]``). Values written ``"{name}"`` are placeholders the user fills in
(``--target``, ``--dfn_uids``, ``--hype_uids`` or ``--set name=value``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datacomp_plugins.errors import PluginError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPE_DIR = Path(__file__).resolve().parents[1] / "baselines"
_PLACEHOLDER = re.compile(r"^\{(\w+)\}$")


@dataclass
class Recipe:
    name: str
    title: str
    notes: str
    filter: dict
    union: list[str] = field(default_factory=list)
    paper: dict = field(default_factory=dict)
    expected_samples: int = 0

    def placeholders(self) -> list[str]:
        values = [*self.filter.values(), *self.union]
        return sorted({m.group(1) for v in values if isinstance(v, str) and (m := _PLACEHOLDER.match(v))})


def available(folder: Path = RECIPE_DIR) -> list[str]:
    """Names of the recipes shipped in ``baselines/``."""
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def load(name_or_path: str, folder: Path = RECIPE_DIR) -> Recipe:
    """A recipe by name (``baselines/<name>.toml``) or by path to a .toml file."""
    path = Path(name_or_path) if name_or_path.endswith(".toml") else folder / f"{name_or_path}.toml"
    if not path.is_file():
        raise PluginError(f"recipe {name_or_path}: not found; available: {', '.join(available(folder)) or 'none'}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PluginError(f"{path}: not valid TOML ({exc})") from None
    if "filter" not in data or "name" not in data["filter"]:
        raise PluginError(f"{path}: a recipe needs a [filter] table with a name")
    from datacomp_plugins.filtering import FilterConfig

    known = {f.name for f in dataclasses.fields(FilterConfig)}
    unknown = sorted(set(data["filter"]) - known)
    if unknown:
        raise PluginError(f"{path}: unknown filter settings {unknown}")
    return Recipe(path.stem, data.get("title", path.stem), data.get("notes", ""), dict(data["filter"]),
                  list(data.get("union", {}).get("files", [])), dict(data.get("paper", {})),
                  int(data.get("medium", {}).get("expected_samples", 0)))


def _fill(value, values: dict[str, str], recipe: Recipe):
    match = _PLACEHOLDER.match(value) if isinstance(value, str) else None
    if not match:
        return value
    if match.group(1) not in values:
        raise PluginError(f"recipe {recipe.name}: needs --{match.group(1)} (or --set {match.group(1)}=...)")
    return values[match.group(1)]


def run(recipe: Recipe, metadata_dir: str, save_path: str, values: dict[str, str], overrides: dict) -> str:
    """Run the recipe's filter (and union) and write ``save_path``; returns a summary line."""
    from datacomp_plugins.fileio import check_writable
    from datacomp_plugins.filtering import FilterConfig, run_filter
    from datacomp_plugins.uids import load_uid_file, save_uid_file

    settings = {k: _fill(v, values, recipe) for k, v in recipe.filter.items()}
    union = [_fill(v, values, recipe) for v in recipe.union]
    settings.update(overrides)
    check_writable(save_path)
    if not union:
        return run_filter(FilterConfig(metadata_dir=metadata_dir, save_path=save_path, **settings)).line()
    from datacomp_plugins.procs import owned_name, sweep_stale, terminate_as_interrupt

    folder = os.path.dirname(os.path.abspath(save_path))
    sweep_stale(folder, (".recipe-",))  # left by runs killed outright; SIGTERM/Ctrl-C delete their own
    with terminate_as_interrupt(), tempfile.TemporaryDirectory(dir=folder, prefix=owned_name(".recipe-")) as scratch:
        ours = os.path.join(scratch, "filter.npy")
        line = run_filter(FilterConfig(metadata_dir=metadata_dir, save_path=ours, **settings)).line()
        parts = [np.asarray(load_uid_file(ours))] + [np.asarray(load_uid_file(path)) for path in union]
        count = save_uid_file(save_path, np.concatenate(parts))
    return f"{line}; united with {len(union)} uid file(s): {count} uids"
