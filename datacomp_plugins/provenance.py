"""The provenance sidecar of a uid file: ``<save_path>.json``, saying how the file was made.

A uid file alone cannot say which pool, parameters or cut-offs produced it; the sidecar records the
command line, package version and commit, every parameter after defaults, the pool's fingerprint (shard
list with sizes and content hashes), per-stage counts and cut-off values, and the sha256 of the uid file.
DataComp's resharder reads only the ``.npy``, so the sidecar never changes what it does.

Ordering: a stale sidecar is removed first, then the uid file and then the sidecar are each written
atomically. A crash between the two leaves a uid file without a sidecar, never one with a wrong one; the
recorded sha256 lets ``uids info`` tell a sidecar that no longer matches its file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import fsspec
import numpy as np

from datacomp_plugins import __version__
from datacomp_plugins.core.compute import device_for
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.fileio import is_local, local_path, sha256_file, write_json

FORMAT = "datacomp-plugins provenance 1"
SUFFIX = ".json"


def sidecar_path(uid_path: str) -> str:
    """``out.npy`` -> ``out.npy.json`` (beside the file, whatever its name)."""
    return f"{uid_path}{SUFFIX}"


def package_commit() -> str | None:
    """The git commit of the package's checkout (editable installs), else None."""
    folder = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    if out.returncode != 0 or len(commit) != 40:
        return None
    dirty = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no", "--", "."],
                           capture_output=True, text=True, timeout=5, check=False)
    return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def _remove(path: str) -> None:
    if is_local(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local_path(path))
        return
    fs, _, (remote,) = fsspec.get_fs_token_paths(path)
    with contextlib.suppress(FileNotFoundError):
        if fs.exists(remote):
            fs.rm(remote)


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def pool_record(pool, cache=None) -> dict[str, Any]:
    """The pool's identity: location, shard list with file sizes, stamps and a hash of each shard's uids.

    The uid hash comes from the score cache (already verified by scoring), so it costs no pool read.
    """
    listing = {os.path.basename(e["name"].rstrip("/")): e for e in pool.fs.ls(pool.root, detail=True)}
    shards = []
    for shard in pool.shards:
        entry: dict[str, Any] = {
            "stem": shard.stem,
            "parquet_bytes": listing.get(f"{shard.stem}.parquet", {}).get("size"),
            "npz_bytes": listing.get(f"{shard.stem}.npz", {}).get("size"),
            "fingerprint": shard.fingerprint,
        }
        uids = cache.load_uids(shard, verify=False) if cache is not None else None
        if uids is not None:
            entry["rows"] = len(uids)
            entry["uids_sha256"] = hashlib.sha256(np.ascontiguousarray(uids).tobytes()).hexdigest()
        shards.append(entry)
    whole = hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest()
    # the pool's identity is its shards' (content-keyed, so a moved pool keeps it)
    identity = hashlib.sha256("".join(shard.fingerprint for shard in pool.shards).encode()).hexdigest()[:16]
    return {"metadata_dir": pool.url, "fingerprint": identity, "content_sha256": whole,
            "shards": shards}


def stage_record(stage: str, score: str | None, values: np.ndarray | None, before: np.ndarray,
                 after: np.ndarray, rule: str) -> dict[str, Any]:
    """Counts of a selection stage and where its cut-off fell: the lowest kept and highest dropped score."""
    record: dict[str, Any] = {"stage": stage, "rule": rule, "score": score, "in": int(before.sum()),
                              "kept": int(after.sum())}
    if values is not None:
        kept = values[after]
        dropped = values[before & ~after]
        dropped = dropped[np.isfinite(dropped)]
        kept = kept[np.isfinite(kept)]
        record["lowest_kept"] = _finite(kept.min()) if len(kept) else None
        record["highest_dropped"] = _finite(dropped.max()) if len(dropped) else None
    return record


def save_with_sidecar(path: str, save: Callable[[], int], record: dict[str, Any]) -> int:
    """Write the uid file with ``save()`` (atomic), then its sidecar (atomic) holding ``record`` and the sha256.

    Returns what ``save`` returns (the count written).
    """
    sidecar = sidecar_path(path)
    _remove(sidecar)
    count = save()
    if "counts" in record:
        record["counts"]["kept"] = int(count)
    full = {
        "format": FORMAT,
        "uid_file": path,
        "uid_count": int(count),
        "uid_sha256": sha256_file(path),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command_line": list(sys.argv),
        "package": {"name": "datacomp-plugins", "version": __version__, "commit": package_commit()},
        **record,
    }
    write_json(sidecar, full, indent=1, sort_keys=False, default=_jsonable)
    return count


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)


def filter_record(config, pool, cache, summary, stages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The sidecar body of a ``filter`` run (also reached through DataComp's patched baselines.py)."""
    return {
        "operation": "filter",
        "parameters": dataclasses.asdict(config),
        "precision": config.precision,
        "engine": config.engine,
        "device": device_for(config.num_gpus),
        "pool": pool_record(pool, cache),
        "counts": {"pool_rows": summary.pool_rows, "duplicates": summary.duplicates,
                   "pool_samples": summary.pool_samples, "unscorable": summary.unscorable,
                   "after_quality": summary.after_quality, "kept": summary.kept},
        "stages": list(stages),
        "notes": list(summary.notes),
        "wall_seconds": round(summary.seconds, 3),
    }


def inputs_record(paths: Sequence[str], counts: Sequence[int]) -> list[dict[str, Any]]:
    """Input uid files of a set operation: path, count, sha256 and the operation that made each (if known)."""
    out = []
    for path, count in zip(paths, counts, strict=True):
        entry: dict[str, Any] = {"path": path, "count": int(count), "sha256": sha256_file(path)}
        parent = read_sidecar(path)
        if parent is not None:
            entry["made_by"] = parent.get("operation")
            entry["sidecar_matches"] = parent.get("uid_sha256") == entry["sha256"]
        out.append(entry)
    return out


def read_sidecar(uid_path: str) -> dict[str, Any] | None:
    """The sidecar of ``uid_path`` as a dict, None when there is none; a malformed one is an error."""
    path = sidecar_path(uid_path)
    try:
        with fsspec.open(path, "r") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PluginError(f"{path}: unreadable provenance sidecar ({exc}); expected the JSON written "
                          "beside the uid file") from None
    except RecursionError:
        raise PluginError(f"{path}: unreadable provenance sidecar (nested too deeply); expected the JSON "
                          "written beside the uid file") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PluginError(f"{path}: not a provenance sidecar (expected \"format\": {FORMAT!r})")
    for key, kind in _FIELD_TYPES.items():
        if key in data and data[key] is not None and not isinstance(data[key], kind[0]):
            raise PluginError(f"{path}: provenance field {key!r} is a {type(data[key]).__name__}, expected "
                              f"{kind[1]}")
    for key in ("stages", "inputs"):
        for index, entry in enumerate(data.get(key) or []):
            if not isinstance(entry, dict):
                raise PluginError(f"{path}: provenance field {key!r}[{index}] is a {type(entry).__name__}, "
                                  "expected an object")
    return data


# The sidecar's fields as ``uids info`` reads them: (type, words for the message).
_FIELD_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "uid_sha256": (str, "a string"), "operation": (str, "a string"), "created_utc": (str, "a string"),
    "package": (dict, "an object"), "command_line": (list, "a list of strings"),
    "parameters": (dict, "an object"), "pool": (dict, "an object"), "stages": (list, "a list of objects"),
    "inputs": (list, "a list of objects"),
}


def describe(data: dict[str, Any], uid_path: str) -> list[str]:
    """Human-readable lines for ``uids info``; a sidecar whose nested fields have the wrong shape is one
    clear error, not a traceback."""
    try:
        return _describe(data, uid_path)
    except (AttributeError, TypeError, KeyError, ValueError) as exc:
        raise PluginError(f"{sidecar_path(uid_path)}: provenance sidecar has a field of the wrong shape "
                          f"({type(exc).__name__}: {exc}); expected the JSON written beside the uid "
                          "file") from None


def _describe(data: dict[str, Any], uid_path: str) -> list[str]:
    lines = [f"provenance: {sidecar_path(uid_path)}"]
    actual = sha256_file(uid_path)
    match = "matches the file" if actual == data.get("uid_sha256") else "DOES NOT match the file (stale sidecar)"
    lines.append(f"  sha256: {data.get('uid_sha256')} ({match})")
    package = data.get("package", {})
    lines.append(f"  made by: {data.get('operation')} with datacomp-plugins {package.get('version')} "
                 f"(commit {package.get('commit') or 'unknown'}) at {data.get('created_utc')}")
    lines.append(f"  command: {' '.join(data.get('command_line', []))}")
    params = data.get("parameters")
    if params:
        lines.append("  parameters: " + ", ".join(f"{k}={v}" for k, v in params.items() if v is not None))
    pool = data.get("pool")
    if pool:
        rows = sum(s.get("rows", 0) for s in pool["shards"])
        lines.append(f"  pool: {pool['metadata_dir']} ({len(pool['shards'])} shards, {rows:,} rows, "
                     f"content {pool['content_sha256'][:16]})")
    for stage in data.get("stages", []):
        cut = ""
        if stage.get("lowest_kept") is not None or stage.get("highest_dropped") is not None:
            cut = (f"; lowest kept {_fmt(stage.get('lowest_kept'))}, "
                   f"highest dropped {_fmt(stage.get('highest_dropped'))}")
        lines.append(f"  stage {stage['stage']} ({stage['rule']}, {stage.get('score')}): kept {stage['kept']:,} "
                     f"of {stage['in']:,}{cut}")
    for entry in data.get("inputs", []):
        lines.append(f"  input: {entry['path']} ({entry['count']:,} uids, sha256 {entry['sha256'][:16]})")
    for key in ("precision", "engine", "device"):
        if key in data:
            lines.append(f"  {key}: {data[key]}")
    if "wall_seconds" in data:
        lines.append(f"  wall time: {data['wall_seconds']} s")
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def filter_stages(config, quality: np.ndarray | None, relevance: np.ndarray | None, eligible: np.ndarray,
                  quality_keep: np.ndarray, keep: np.ndarray, relevance_rule: str | None = None
                  ) -> list[dict[str, Any]]:
    """Per-stage counts and cut-offs of a filter run, from the masks the pipeline computed.

    ``quality`` None: no quality stage (--fraction 1.0); ``relevance`` None with a relevance stage: a stage
    without one value per sample (normsim_d), described by ``relevance_rule``.
    """
    stages = []
    if quality is not None:
        rule = (f"top fraction {config.fraction:g} of {int(eligible.sum())}" if config.fraction is not None
                else f"score >= {config.threshold:g}")
        stages.append(stage_record("quality", config.quality, quality, eligible, quality_keep, rule))
    if config.relevance is not None:
        if relevance_rule is None:
            relevance_rule = (f"top fraction {config.relevance_fraction:g} of the pool"
                              if config.relevance_fraction is not None else f"score >= {config.relevance_threshold:g}")
        stages.append(stage_record("relevance", config.relevance, relevance, quality_keep, keep, relevance_rule))
    return stages


def save_uid_array(path: str, uids: np.ndarray, operation: str, inputs: Sequence[str],
                   input_counts: Sequence[int], seconds: float) -> int:
    """Write an already sorted, unique uid array (set algebra, from-hex) with its sidecar."""
    from datacomp_plugins.core.fileio import atomic_save_npy

    def save() -> int:
        atomic_save_npy(path, uids)
        return len(uids)

    record = {"operation": operation, "inputs": inputs_record(inputs, input_counts),
              "wall_seconds": round(seconds, 3)}
    return save_with_sidecar(path, save, record)
