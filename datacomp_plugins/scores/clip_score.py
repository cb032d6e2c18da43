"""CLIPScore: DataComp's precomputed CLIP similarity column, the quality score of DataComp's own baseline.

As a baseline of its own it selects exactly what DataComp's ``baselines.py --name clip_score`` selects: the
values are read as DataComp stores them (:func:`exact_values`) and cut by DataComp's rule
(select.masks.datacomp_fraction_mask). As the quality stage before a NormSim stage it is cached as float32
like every other score.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.pool import Pool, Shard
from datacomp_plugins.scores.base import RunContext, Score, ScoreSpec


@dataclass(frozen=True)
class ParquetScore(Score):
    """DataComp's precomputed CLIP score column, e.g. ``clip_l14_similarity_score`` (the clip_score baseline)."""

    arch: str = "l14"
    name: str = field(init=False, default="clip_score")

    @property
    def parquet_columns(self) -> tuple[str, ...]:
        return (f"clip_{self.arch}_similarity_score",)

    def compute(self, shard: Shard, columns: dict, embeddings: dict) -> np.ndarray:
        """The column as float32; null, NaN and ±inf become NaN ("not scorable", counted in the summary)."""
        values = numeric_column(columns[self.parquet_columns[0]], shard.parquet, self.parquet_columns[0])
        return np.where(np.isfinite(values), values, np.nan).astype(np.float32)


def numeric_column(values: np.ndarray, path: str, column: str) -> np.ndarray:
    """A parquet column read with ``to_numpy`` that must hold numbers: strings, booleans, lists refused.

    Nulls arrive as NaN (pyarrow widens a nullable integer column to float), which the caller treats as
    not scorable; any other type is an error naming the file, the column and the first row.
    """
    values = np.asarray(values)
    if values.dtype.kind in "iuf":
        return values
    first = values[0] if len(values) else None
    raise PluginError(f"{path}: column {column!r} holds {values.dtype} values (row 0: {first!r}); expected "
                      "numbers (DataComp's CLIP similarity score)")


def exact_values(pool: Pool, shard: Shard, arch: str) -> np.ndarray:
    """DataComp's ``clip_<arch>_similarity_score`` of one shard, in its stored dtype."""
    column = f"clip_{arch}_similarity_score"
    values = pool.read_columns(shard, [column]).column(column).to_numpy(zero_copy_only=False)
    return numeric_column(values, shard.parquet, column)


class ClipScoreSpec(ScoreSpec):
    def shard_score(self, params: None, run: RunContext) -> ParquetScore:
        return ParquetScore(arch=run.arch)

    def exact_values(self, params: None, run: RunContext, shard: Shard) -> np.ndarray:
        return exact_values(run.pool, shard, run.arch)


SPEC = ClipScoreSpec("clip_score", "quality", "DataComp's CLIP similarity column (CLIPScore)")
