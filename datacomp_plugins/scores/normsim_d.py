"""NormSim_2-D: the dynamic NormSim that needs no target set (Wang et al. 2024), a relevance stage.

The quality stage's survivors are their own target: samples are dropped in rounds by NormSim_2 against the
current selection until ``--relevance_fraction`` of the pool is left (dynamic.py). It depends on the selected
set, so it is no per-shard score: it runs once, in the main process, after the quality stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datacomp_plugins.core import ranges
from datacomp_plugins.core.pool import ARCH_DIMS
from datacomp_plugins.scores.base import RunContext, ScoreSpec, StageCut, setting


@dataclass(frozen=True)
class Params:
    normsim_d_iters: int = setting(500, "normsim_d: iterations (capped so each drops at least one sample; "
                                        "paper: 500)", ranges.NORMSIM_D_ITERS)


class NormSimDSpec(ScoreSpec):
    def select(self, params: Params, run: RunContext, uids: np.ndarray, survivors: np.ndarray,
               want: int) -> np.ndarray:
        """Run NormSim_2-D on the survivors' image embeddings (spilled to the cache folder, then deleted)."""
        from datacomp_plugins.core.procs import import_held
        from datacomp_plugins.scores.dynamic import iterate, spill_image_embeddings

        import_held("torch")  # before the spill exists: a stop signal during torch's import aborted the run
        pool, cache, compute = run.pool, run.cache, run.compute
        key = f"{run.arch}_img"
        offsets = np.cumsum([0] + [len(cache.load_uids(s, verify=False)) for s in pool.shards])
        chosen = np.flatnonzero(survivors)
        rows = [chosen[(chosen >= a) & (chosen < b)] - a for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        with spill_image_embeddings(pool, pool.shards, rows, key, ARCH_DIMS[run.arch],
                                    cache.spill, compute.progress) as (spill, finite):
            index = chosen[finite]
            kept = iterate(spill, uids[index], want, params.normsim_d_iters, compute.device, compute.progress)
        mask = np.zeros(len(uids), dtype=bool)
        mask[index[kept]] = True
        return mask

    def rule(self, params: Params, cut: StageCut) -> str:
        return f"NormSim_2-D, {params.normsim_d_iters} iterations to fraction {cut.fraction:g}"


SPEC = NormSimDSpec("normsim_d", "relevance", "NormSim_2-D: the selected set is its own target", Params,
                    thresholds=False, note="normsim_d: no single cut-off (iterative selection)")
