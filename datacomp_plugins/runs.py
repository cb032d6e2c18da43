"""What a filter run hands to its parts: each score's own Params and a small RunContext (never the whole run's
settings), the chosen engine's options, and the run's :class:`Summary`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from datacomp_plugins.scores.base import RunContext, ScoreSpec, StageCut


def params_of(spec: ScoreSpec, config) -> Any:
    """A score's own Params from a run's settings: what its hooks receive instead of the whole config."""
    return spec.params_of(config)


def run_context(config, compute=None, pool=None, cache=None) -> RunContext:
    """The small context a score's hooks receive (the arch, where it computes, the pool and its cache)."""
    from datacomp_plugins.core.compute import Compute, device_for

    if compute is None:
        compute = Compute(device=device_for(config.num_gpus), precision=config.precision,
                          block_rows=config.batch_size, progress=config.progress)
    return RunContext(arch=config.arch, compute=compute, pool=pool, cache=cache)


def relevance_cut(config) -> StageCut:
    """How much the relevance stage keeps (for a score's ``rule``, which describes it in the sidecar)."""
    return StageCut(config.relevance_fraction, config.relevance_threshold)


def engine_options(config) -> Any:
    """The chosen engine's options from a run's settings: the shared ones and its own Params."""
    from datacomp_plugins import engines

    params = engines.engine_params(engines.REGISTRY.get(config.engine, "--engine"))
    own = None
    if params is not None:
        own = params(**{f.name: getattr(config, f.name) for f in dataclasses.fields(params)})
    return engines.EngineOptions(config.num_workers, config.num_gpus, own)


@dataclass
class Summary:
    """What a run did, for the closing line and for callers (tests, the demo)."""

    name: str
    pool_rows: int = 0
    pool_samples: int = 0
    duplicates: int = 0
    unscorable: int = 0
    missing_scores: int = 0
    after_quality: int = 0
    kept: int = 0
    shards: int = 0
    shards_scored: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        share = 100.0 * self.kept / self.pool_samples if self.pool_samples else 0.0
        extra = "".join(f"; {note}" for note in self.notes)
        if self.after_quality != self.kept:
            extra = f"; {self.after_quality} after the quality stage" + extra
        return (f"{self.name}: kept {self.kept} of {self.pool_samples} samples ({share:.1f}%) from "
                f"{self.shards} shards ({self.shards_scored} scored, {self.shards - self.shards_scored} "
                f"from cache); {self.unscorable} not scorable; {self.duplicates} duplicate uids counted "
                f"once{extra}; {self.seconds:.1f} s")
