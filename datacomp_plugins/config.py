"""A filter run's settings: the baselines (as data), the settings' schema and every check that needs no data.

:data:`FilterConfig` is built from the registry: the run's own settings below plus every registered score's
settings (scores/), so a new score's settings are ``filter`` flags, recipe keys and DataComp ``baselines.py``
flags without an edit here. A baseline is a quality stage, a relevance stage, or both; each registered
quality score is a baseline of its own name, and each relevance score one that runs after the quality stage
named by ``--quality_score``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from datacomp_plugins import scores
from datacomp_plugins.core import ranges
from datacomp_plugins.core.cache import CACHE_ENV, default_cache_dir
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.fileio import check_folder_writable, check_writable
from datacomp_plugins.core.pool import ARCH_DIMS
from datacomp_plugins.scores.base import ScoreSpec, setting

PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # auto: the faster of fp32/bf16 here, measured (precision.py)


@dataclass(frozen=True)
class Baseline:
    """A baseline as data: its quality score (None: the run's --quality_score) and optional relevance score."""

    name: str
    quality: str | None
    relevance: str | None = None


def baselines() -> dict[str, Baseline]:
    """Every baseline, from the registry: one per quality score, one per relevance score."""
    out = {}
    for name, spec in scores.registry().items():
        if spec.role == "quality":
            out[name] = Baseline(name, name)
        elif spec.role == "relevance":
            out[name] = Baseline(name, None, name)
    return out


def _engine_names() -> tuple[str, ...]:
    from datacomp_plugins.engines import engine_names

    return tuple(engine_names())


# The run's own settings, after DataComp's flags; (name, type, field). ``choices`` may be a function of the
# registry (filled in when the flags are built). DataComp's flags are defined by its parser (and ours).
DATACOMP_SETTINGS: list[tuple[str, str, Any]] = [
    ("name", "str", field()),
    ("metadata_dir", "str", field()),
    ("save_path", "str", field()),
    ("arch", "str", field(default="l14")),
    ("fraction", "float | None", field(default=None, metadata={"range": ranges.FRACTION})),
    ("threshold", "float | None", field(default=None, metadata={"range": ranges.THRESHOLD})),
    ("num_workers", "int", field(default=1, metadata={"range": ranges.NUM_WORKERS})),
    ("num_gpus", "int", field(default=0, metadata={"range": ranges.NUM_GPUS})),
    ("batch_size", "int", field(default=0, metadata={"range": ranges.BLOCK_ROWS})),  # 0: metrics.BLOCK_BYTES
]
RUN_SETTINGS: list[tuple[str, str, Any]] = [
    ("precision", "str", setting(
        "fp32", "dtype of the matrix products (sums and logs in fp32). fp32 (default) gives the same uid file on "
        "every machine. bf16 was 2.5x faster end to end on a CPU with AMX, but 2.3-3.2x slower on CPUs without "
        "bf16 units (no amx_bf16/avx512_bf16), where it warns; auto times a short product in fp32 and bf16 here "
        "and uses the faster (printed in the summary). See docs/PERFORMANCE.md", choices=PRECISIONS)),
    ("quality_score", "str", setting(
        "negcliploss", "normsim baselines: the quality stage's score (--fraction/--threshold); --fraction 1.0 "
        "means no quality stage", choices=lambda: scores.names("quality"))),
    ("normsim_fraction", "float | None", setting(
        None, "normsim baselines: keep floor(N*F2) of the pool (N samples) by NormSim among the quality stage's "
        "survivors (paper: --fraction 0.3 --normsim_fraction 0.2)", ranges.FRACTION)),
    ("normsim_threshold", "float | None", setting(
        None, "normsim2/normsiminf: keep survivors with NormSim >= this instead", ranges.THRESHOLD)),
    ("cache_dir", "str | None", setting(
        None, f"score cache; unset: ${CACHE_ENV} or ~/.cache/datacomp_plugins/scores")),
    ("given_uids", "str | None", setting(
        None, "restrict the pool to these uid files first (A.npy::B.npy = their intersection), e.g. DFN's "
        "datacomp_medium_dfn_20m_inds.npy; fractions are then of the restricted pool")),
    ("allow_empty", "bool", setting(
        False, "write an empty uid file when nothing passes, instead of stopping with an error")),
    ("streaming", "bool", setting(
        False, "select in passes over the cached scores, holding only the kept uids (for pools whose ~22 "
        "bytes/sample of scores do not fit in memory; quality stage alone)")),
    ("engine", "str", setting(
        "local", "local: this machine's processes; ray: Ray tasks on a cluster (extra 'ray'); or an engine an "
        "installed package registers", choices=_engine_names)),
    ("ray_address", "str | None", setting(None, "Ray cluster to join; unset: $RAY_ADDRESS, else start a local one")),
    ("progress", "bool", setting(True, "progress bars", flag=False)),  # the flag is --no_progress
]


class _Stages:
    """What a config's baseline runs, by name: no branch on a baseline's name anywhere else."""

    @property
    def baseline(self) -> Baseline:
        return baselines()[self.name]

    @property
    def quality(self) -> str:
        """The quality score: the baseline's own, else --quality_score."""
        return self.baseline.quality or self.quality_score

    @property
    def relevance(self) -> str | None:
        """The relevance score's name, or None for a quality stage alone."""
        return self.baseline.relevance


def type_name(kind: Any) -> str:
    """A field's type as the schema writes it ("float", "str | None"), whether or not its module postpones
    annotations (a score from another package may not)."""
    return kind if isinstance(kind, str) else getattr(kind, "__name__", None) or str(kind).replace("NoneType", "None")


def _score_settings() -> list[tuple[str, str, Any]]:
    """Every registered score's settings, each once (scores may share one, e.g. the NormSims' --target).

    A score from another package whose setting collides with one of ours (or with another score's, typed or
    defaulted differently) is dropped with a warning, so it cannot take the built-in baselines down.
    """
    import sys

    run = {name for name, _, _ in DATACOMP_SETTINGS + RUN_SETTINGS}
    seen: dict[str, tuple[str, Any]] = {}
    out = []
    for spec in list(scores.registry().values()):
        own = [(f, type_name(f.type)) for f in spec.settings()]
        clash = [f.name for f, kind in own if f.name in run or (f.name in seen and seen[f.name] != (kind, f.default))]
        if clash:
            if spec.name in scores.BUILTIN:
                raise PluginError(f"score {spec.name}: setting(s) {clash} collide with another's")
            print(f"warning: score {spec.name!r} not offered: its setting(s) {clash} collide with another's",
                  file=sys.stderr)
            scores.registry().pop(spec.name)
            continue
        for f, kind in own:
            if f.name not in seen:
                seen[f.name] = (kind, f.default)
                out.append((f.name, kind, field(default=f.default, metadata=f.metadata)))
    return out


def _build_config() -> type:
    """FilterConfig: DataComp's flags, the run's settings, then every registered score's (built once)."""
    config = dataclasses.make_dataclass("FilterConfig", DATACOMP_SETTINGS + RUN_SETTINGS + _score_settings(),
                                        bases=(_Stages,))
    config.__module__ = __name__  # pickles by name (worker processes, Ray)
    config.__doc__ = ("All settings of one filter run; names match the command line (DataComp's where they exist) "
                      "and recipe keys.")
    return config


FilterConfig = _build_config()


def settings() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(FilterConfig)


def number_ranges() -> dict[str, ranges.Range]:
    """Every numeric setting and its range (datacomp_plugins.core.ranges), the scores' included."""
    return {f.name: f.metadata["range"] for f in settings() if f.metadata.get("range") is not None}


def choices_of(f: dataclasses.Field) -> tuple[str, ...] | None:
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


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


def validate(config) -> None:
    """Every setting check that needs no data, so bad settings fail before any heavy work."""
    from datacomp_plugins.core.compute import check_gpus

    for spec in settings():  # a recipe or the Python API may hand over any type
        value = getattr(config, spec.name)
        kind = str(spec.type)
        if kind.startswith("str") and not (isinstance(value, str) or (value is None and "None" in kind)):
            raise PluginError(f"--{spec.name} {value!r}: expected a string (a name or a path)")
    known = baselines()
    if config.name not in known:
        raise PluginError(f"--name {config.name}: unknown baseline; choose from {sorted(known)}")
    if config.arch not in ARCH_DIMS:
        raise PluginError(f"--arch {config.arch}: expected one of {sorted(ARCH_DIMS)}")
    if (config.fraction is None) == (config.threshold is None):
        raise PluginError("exactly one of --fraction and --threshold is required")
    check_numbers(config)
    _check_choice(config, "quality_score")
    _validate_relevance(config)
    for spec in scores.registry().values():
        if spec.role == "restriction" and spec.check is not None:
            spec.check(config)
    for f in settings():
        if f.name not in ("quality_score", "engine", "precision"):
            _check_choice(config, f.name)
    for f in settings():
        if str(f.type) == "bool" and not isinstance(getattr(config, f.name), bool):
            raise PluginError(f"--{f.name} {getattr(config, f.name)!r}: expected true or false")
    if config.streaming and (config.relevance is not None or config.given_uids or _restricted(config)):
        raise PluginError("--streaming: only for a quality stage alone (clip_score, negcliploss) without "
                          "--given_uids/--external_scores")
    _check_choice(config, "engine")
    _check_choice(config, "precision")
    check_gpus(config.num_gpus, config.engine)
    refuse_input_as_output(config)
    check_writable(config.save_path)
    check_folder_writable(config.cache_dir or default_cache_dir(), "--cache_dir")


def _restricted(config) -> bool:
    return any(spec.active(config) for spec in scores.registry().values()
               if spec.role == "restriction" and spec.active is not None)


def _check_choice(config, name: str) -> None:
    f = next(f for f in settings() if f.name == name)
    allowed = choices_of(f)
    if allowed is not None and getattr(config, name) not in allowed:
        raise PluginError(f"--{name} {getattr(config, name)}: expected one of {list(allowed)}")


def check_numbers(config) -> None:
    """Range-check every numeric setting (a recipe or the Python API may hand over any type)."""
    for name, allowed in number_ranges().items():
        allowed.check(getattr(config, name), f"--{name}")


def refuse_input_as_output(config: FilterConfig, extra_inputs: tuple[str, ...] = ()) -> None:
    """Refuse a --save_path that is one of the run's inputs (or lies in the score cache), before anything is
    read: the shared check of :func:`datacomp_plugins.core.fileio.refuse_input_as_output`."""
    from datacomp_plugins.core import fileio

    inputs = [("--target", config.target), ("--external_scores", config.external_scores)]
    inputs += [("--given_uids", path) for path in (config.given_uids.split("::") if config.given_uids else [])]
    inputs += [("recipe union file", path) for path in extra_inputs]
    fileio.refuse_input_as_output(config.save_path, "--save_path", inputs,
                                  [("--metadata_dir", config.metadata_dir)],
                                  [("--cache_dir", config.cache_dir or default_cache_dir())])


def check_stage_fractions(fraction: float | None, normsim_fraction: float | None) -> None:
    """The NormSim stage keeps a share of the pool among the quality stage's survivors: never more."""
    if fraction is not None and normsim_fraction is not None and normsim_fraction > fraction:
        raise PluginError(f"--normsim_fraction {normsim_fraction} is larger than --fraction {fraction}: the "
                          "NormSim stage keeps a share of the pool among the quality stage's survivors, so it "
                          "cannot keep more than they are")


def _validate_relevance(config) -> None:
    relevance = config.relevance
    given = [flag for flag, value in (("--normsim_fraction", config.normsim_fraction),
                                      ("--normsim_threshold", config.normsim_threshold),
                                      ("--target", getattr(config, "target", None))) if value is not None]
    if relevance is None:
        if given:
            raise PluginError(f"{', '.join(given)}: only for the normsim baselines, not --name {config.name}")
        return
    if (config.normsim_fraction is None) == (config.normsim_threshold is None):
        raise PluginError(f"--name {config.name}: exactly one of --normsim_fraction and --normsim_threshold "
                          "is required")
    check_stage_fractions(config.fraction, config.normsim_fraction)
    spec: ScoreSpec = scores.get(relevance)
    if spec.check is not None:
        spec.check(config)
    if not spec.thresholds and config.normsim_threshold is not None:
        raise PluginError(f"--normsim_threshold: {relevance} needs --normsim_fraction (its final size)")
    if spec.needs_target and getattr(config, "target", None) is None:
        raise PluginError(f"--name {config.name}: needs --target (in1k, or a .npy/.npz/.pt file or folder of "
                          "target image embeddings)")
