"""Another method's scores (HYPE's, an aesthetic score, ...) keyed by uid: a restriction of the pool.

``--external_scores`` names a parquet file with a hex ``uid`` column and a score column; the pool is cut to
the top ``--external_fraction`` of its (already restricted) samples by that column before our stages, as in
the official code. Samples the file has no score for are dropped, or refused with ``--missing_score error``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from datacomp_plugins.core import ranges
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.uids import to_hex
from datacomp_plugins.scores.base import RunContext, ScoreSpec, setting
from datacomp_plugins.select.masks import index_in, top_k_mask

MISSING_SCORE = ("drop", "error")


@dataclass(frozen=True)
class Params:
    external_scores: str | None = setting(
        None, "parquet with a hex 'uid' column and a score column (e.g. HYPE scores you computed)")
    external_column: str | None = setting(None, "score column of --external_scores")
    external_fraction: float | None = setting(
        None, "keep the top share of the (restricted) pool by --external_column first", ranges.FRACTION)
    missing_score: str = setting(
        "drop", "pool samples --external_scores has no score for: drop them (counted in the summary) or stop "
        "with an error naming the first one", choices=MISSING_SCORE)


class ExternalSpec(ScoreSpec):
    def check(self, params: Params) -> None:
        external = (params.external_scores, params.external_column, params.external_fraction)
        if any(v is not None for v in external) and any(v is None for v in external):
            raise PluginError("--external_scores, --external_column and --external_fraction go together")
        if params.missing_score != "drop" and params.external_scores is None:
            raise PluginError(f"--missing_score {params.missing_score}: only with --external_scores (it says what "
                              "to do with pool samples that file has no score for)")

    def active(self, params: Params) -> bool:
        return params.external_scores is not None

    def restrict(self, params: Params, run: RunContext, uids: np.ndarray, eligible: np.ndarray,
                 notes: list[str]) -> tuple[np.ndarray, int]:
        """Keep the top ``--external_fraction`` of the eligible samples by the file's column; returns the new
        eligible mask and how many eligible samples the file had no score for."""
        values = external_scores(params.external_scores, params.external_column, uids)
        missing = eligible & np.isnan(values)  # the file's own values are all finite
        if missing.any() and params.missing_score == "error":
            first = to_hex(uids[np.flatnonzero(missing)[:1]])[0].decode()
            raise PluginError(f"--external_scores {params.external_scores}: no score for {int(missing.sum())} of "
                              f"{int(eligible.sum())} pool samples (first: uid {first}); expected one per sample "
                              "with --missing_score error (--missing_score drop leaves them out)")
        notes.append(f"{params.external_scores}: no score for {int(missing.sum())} pool samples"
                     + (" (dropped)" if missing.any() else ""))
        want = math.floor(int(eligible.sum()) * params.external_fraction)
        eligible = top_k_mask(values, uids, want, eligible)
        notes.append(f"{params.external_column} top {params.external_fraction:g}: {int(eligible.sum())}")
        return eligible, int(missing.sum())


def external_scores(path: str, column: str, uids: np.ndarray) -> np.ndarray:
    """A score per pool sample from a parquet file keyed by hex ``uid``; NaN where the file has none."""
    import fsspec
    import pyarrow.parquet as pq

    from datacomp_plugins.core.uids import parse_hex

    try:
        with fsspec.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            missing = [c for c in ("uid", column) if c not in names]
            if missing:
                raise PluginError(f"--external_scores {path}: no column(s) {missing}; it has {names}")
            table = parquet.read(columns=["uid", column])
    except FileNotFoundError:
        raise PluginError(f"--external_scores {path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise PluginError(f"--external_scores {path}: unreadable parquet ({exc})") from None
    if not _is_numeric(table.schema.field(column).type):
        raise PluginError(f"--external_scores {path}: column {column!r} is {table.schema.field(column).type}, "
                          "expected numbers")
    theirs = parse_hex(table.column("uid"), source=f"--external_scores {path}", column="uid")
    values = table.column(column)
    if values.null_count:
        nulls = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
        raise PluginError(f"--external_scores {path}: column {column!r} is empty (null) at row {int(nulls[0])} "
                          f"({len(nulls)} such rows); expected a finite number for every uid listed")
    scores = values.to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~np.isfinite(scores)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise PluginError(f"--external_scores {path}: column {column!r} is {scores[rows[0]]} at row {int(rows[0])} "
                          f"({len(rows)} non-finite rows); expected a finite number for every uid listed "
                          "(leave a sample out of the file to give it no score)")
    _refuse_conflicting_duplicates(path, column, theirs, scores)
    if len(scores) == 0:  # a file with no rows scores no sample
        return np.full(len(uids), np.nan)
    row = index_in(uids, theirs)
    return np.where(row >= 0, scores[np.maximum(row, 0)], np.nan)


def _refuse_conflicting_duplicates(path: str, column: str, theirs: np.ndarray, scores: np.ndarray) -> None:
    """A uid listed twice with two different scores has no single score: refuse it, naming the first such uid
    (a uid repeated with the same score is harmless and read once)."""
    if len(theirs) < 2:
        return
    order = np.lexsort((theirs["f1"], theirs["f0"]))
    ordered = theirs[order]
    same = (ordered["f0"][1:] == ordered["f0"][:-1]) & (ordered["f1"][1:] == ordered["f1"][:-1])
    differ = same & (scores[order][1:] != scores[order][:-1])
    if differ.any():
        at = int(np.flatnonzero(differ)[0])
        rows = sorted((int(order[at]), int(order[at + 1])))
        uid = to_hex(ordered[at : at + 1])[0].decode()
        raise PluginError(f"--external_scores {path}: uid {uid} is listed more than once with different "
                          f"{column!r} scores (rows {rows[0]} and {rows[1]}: {scores[rows[0]]:g} and "
                          f"{scores[rows[1]]:g}; {int(differ.sum())} such pairs); expected one score per uid")


def _is_numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


SPEC = ExternalSpec("external", "restriction", "another method's scores from a parquet file keyed by uid",
                    Params, inputs=("external_scores",))
