"""Recipes: one TOML file per named baseline / paper table row, in the repository's ``baselines/`` folder.

A recipe holds the exact filter flags (``[filter]``), optional uid files to unite with the result
(``[union] files``), the paper's reported DataComp-medium numbers (``[paper]``) and the expected subset size
at medium scale (``[medium]``). Values written ``"{name}"`` are placeholders the user fills in
(``--target``, ``--dfn_uids``, ``--hype_uids`` or ``--set name=value``). The value ``"manifest"`` for
``temperature`` or ``negcliploss_batch_size`` takes the teacher's own setting from a mini DataComp world's
``MANIFEST.json`` (``--manifest FILE``; by default the one beside the metadata folder), as the paper takes
τ and B from the teacher's training.
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

from datacomp_plugins.core.errors import PluginError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPE_DIR = Path(__file__).resolve().parents[1] / "baselines"
_PLACEHOLDER = re.compile(r"^\{(\w+)\}$")
FROM_MANIFEST = "manifest"
# filter setting -> the key of MANIFEST.json's teachers.<arch> entry that gives it
MANIFEST_SETTINGS = {"temperature": "temperature", "negcliploss_batch_size": "batch_size"}


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


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Filter settings a recipe may not set (the command's own flags give them).
_NOT_SETTABLE = {"metadata_dir": "--metadata_dir", "save_path": "--save_path", "progress": "--no_progress"}


def load(name_or_path: str, folder: Path = RECIPE_DIR) -> Recipe:
    """A recipe by name (``baselines/<name>.toml``) or by path to a .toml file.

    A name is a plain file stem: one holding a path separator or ``..`` would reach outside ``baselines/``
    (give such a recipe as a path ending in .toml instead).
    """
    if not name_or_path.endswith(".toml") and (not _NAME.match(name_or_path) or ".." in name_or_path):
        raise PluginError(f"recipe {name_or_path!r}: not a recipe name (letters, digits, '_', '-', '.'; no path "
                          f"separator or '..'); give a .toml path for a recipe outside baselines/; available: "
                          f"{', '.join(available(folder)) or 'none'}")
    path = Path(name_or_path) if name_or_path.endswith(".toml") else folder / f"{name_or_path}.toml"
    if not path.is_file():
        raise PluginError(f"recipe {name_or_path}: not found; available: {', '.join(available(folder)) or 'none'}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise PluginError(f"{path}: not a text file (byte {exc.start} is not UTF-8); a recipe is a TOML "
                          "file") from None
    except tomllib.TOMLDecodeError as exc:
        raise PluginError(f"{path}: not valid TOML ({exc})") from None
    if "filter" not in data or "name" not in data["filter"]:
        raise PluginError(f"{path}: a recipe needs a [filter] table with a name")
    from datacomp_plugins.config import ALIASES, FilterConfig

    known = ({f.name for f in dataclasses.fields(FilterConfig)} | set(ALIASES)) - set(_NOT_SETTABLE)
    unknown = sorted(set(data["filter"]) - known)
    if unknown:
        raise PluginError(f"{path}: unknown filter settings {unknown}; known: {sorted(known)}")
    medium = data.get("medium", {}).get("expected_samples", 0)
    if isinstance(medium, bool) or not isinstance(medium, int) or medium < 0:
        raise PluginError(f"{path}: [medium] expected_samples is {medium!r}; expected a count of samples (>= 0)")
    return Recipe(path.stem, data.get("title", path.stem), data.get("notes", ""), dict(data["filter"]),
                  list(data.get("union", {}).get("files", [])), dict(data.get("paper", {})),
                  medium)


def setting_kind(key: str) -> str:
    """The schema type of a filter setting, as written in FilterConfig ("int", "float | None", "bool", ...)."""
    from datacomp_plugins.config import FilterConfig, canonical

    kinds = {f.name: str(f.type) for f in dataclasses.fields(FilterConfig) if f.name not in _NOT_SETTABLE}
    key = canonical(key)
    if key not in kinds:
        hint = f" (give it as {_NOT_SETTABLE[key]})" if key in _NOT_SETTABLE else ""
        raise PluginError(f"--set {key}: unknown setting{hint}; known settings: {', '.join(sorted(kinds))}")
    return kinds[key]


def parse_setting(key: str, text: str):
    """``--set key=text`` typed by the setting's schema: a typo is an error, never a string where a number goes.

    Booleans take ``true``/``false`` only (``bool("false")`` is True); optional settings take ``none``.
    """
    kind = setting_kind(key)
    if key in MANIFEST_SETTINGS and text.strip() == FROM_MANIFEST:
        return FROM_MANIFEST
    if kind.endswith("| None") and text.strip().lower() == "none":
        return None
    base = kind.split("|")[0].strip()
    if base == "bool":
        if text.strip().lower() not in ("true", "false"):
            raise PluginError(f"--set {key}={text}: expected true or false")
        return text.strip().lower() == "true"
    if base in ("int", "float"):
        try:
            return int(text) if base == "int" else float(text)
        except ValueError:
            raise PluginError(f"--set {key}={text}: expected {'an integer' if base == 'int' else 'a number'}"
                              f"{' or none' if kind.endswith('| None') else ''}") from None
    return text


def _fill(value, values: dict[str, str], recipe: Recipe):
    match = _PLACEHOLDER.match(value) if isinstance(value, str) else None
    if not match:
        return value
    if match.group(1) not in values:
        raise PluginError(f"recipe {recipe.name}: needs --{match.group(1)} (or --set {match.group(1)}=...)")
    return values[match.group(1)]


def teacher_settings(manifest_path: str, arch: str) -> dict[str, float | int]:
    """``temperature`` and ``negcliploss_batch_size`` of a world's ``arch`` teacher, from its MANIFEST.json."""
    import json

    import fsspec

    try:
        with fsspec.open(manifest_path, "r", encoding="utf-8") as handle:
            entry = json.load(handle)["teachers"][arch]
        found = {key: entry[name] for key, name in MANIFEST_SETTINGS.items()}
    except FileNotFoundError:
        raise PluginError(f"{manifest_path}: no such MANIFEST.json; a recipe setting \"manifest\" needs a world's "
                          "manifest (--manifest FILE)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PluginError(f"{manifest_path}: cannot read teachers.{arch}.temperature and .batch_size "
                          f"({type(exc).__name__}: {exc})") from None
    if not isinstance(found["negcliploss_batch_size"], int) or isinstance(found["negcliploss_batch_size"], bool) \
            or not isinstance(found["temperature"], (int, float)):
        raise PluginError(f"{manifest_path}: teachers.{arch}: batch_size must be an integer and temperature a "
                          f"number, got {found}")
    return found


def default_manifest(metadata_dir: str) -> str:
    """The MANIFEST.json of the world whose metadata folder this is (a mini DataComp build's layout)."""
    return metadata_dir.rstrip("/").rsplit("/", 1)[0] + "/MANIFEST.json" if "/" in metadata_dir.rstrip("/") \
        else "MANIFEST.json"


def run(recipe: Recipe, metadata_dir: str, save_path: str, values: dict[str, str], overrides: dict) -> str:
    """Run the recipe's filter (and union) and write ``save_path``; returns a summary line."""
    from datacomp_plugins.config import FilterConfig, canonical, refuse_input_as_output, validate
    from datacomp_plugins.core.uids import load_uid_file, save_uid_file
    from datacomp_plugins.pipeline import run_filter

    # older names (normsim_fraction) as their settings, so an override under either name replaces the value
    settings = {canonical(k): _fill(v, values, recipe) for k, v in recipe.filter.items()}
    union = [_fill(v, values, recipe) for v in recipe.union]
    for path in union:
        if not isinstance(path, str):
            raise PluginError(f"recipe {recipe.name}: [union] files holds {path!r}; expected uid file paths")
    settings.update({canonical(k): v for k, v in overrides.items()})
    wanted = [key for key in MANIFEST_SETTINGS if settings.get(key) == FROM_MANIFEST]
    if wanted:
        found = teacher_settings(values.get("manifest") or default_manifest(metadata_dir), settings.get("arch", "l14"))
        settings.update({key: found[key] for key in wanted})
    config = FilterConfig(metadata_dir=metadata_dir, save_path=save_path, **settings)
    validate(config)  # every setting, the output path and its inputs, before any work
    refuse_input_as_output(config, tuple(union))
    if not union:
        return run_filter(config, validated=True).line()
    from datacomp_plugins.core.procs import owned_name, sweep_stale, terminate_as_interrupt

    folder = os.path.dirname(os.path.abspath(save_path))
    sweep_stale(folder, (".recipe-",))  # left by runs killed outright; SIGTERM/Ctrl-C delete their own
    with terminate_as_interrupt(), tempfile.TemporaryDirectory(dir=folder, prefix=owned_name(".recipe-")) as scratch:
        ours = os.path.join(scratch, "filter.npy")
        # the scratch path is ours, in the checked output folder: the settings need no second check
        line = run_filter(dataclasses.replace(config, save_path=ours), validated=True).line()
        parts = [np.asarray(load_uid_file(ours))] + [np.asarray(load_uid_file(path)) for path in union]
        count = save_uid_file(save_path, np.concatenate(parts))
    return f"{line}; united with {len(union)} uid file(s): {count} uids"
