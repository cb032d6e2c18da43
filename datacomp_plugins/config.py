"""A filter run's settings: the baselines (as data), the settings' schema and every check that needs no data.

:data:`FilterConfig` is built from the registries, the first time it is asked for (importing this module
loads no score): the run's own settings below, every registered score's settings (scores/) and every
engine's (engines/), so a new score's or engine's settings are ``filter`` flags, recipe keys and DataComp
``baselines.py`` flags without an edit here. A hook never sees a FilterConfig: it gets its score's own
Params (:func:`params_of`) and a small RunContext (:func:`run_context`). A baseline is a quality stage, a
relevance stage, or both; each registered quality score is a baseline of its own name, and each relevance
score one that runs after the quality stage named by ``--quality_score``.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

from datacomp_plugins import scores
from datacomp_plugins.core import ranges
from datacomp_plugins.core.cache import CACHE_ENV, default_cache_dir
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.fileio import check_folder_writable, check_writable
from datacomp_plugins.core.pool import ARCH_DIMS
from datacomp_plugins.runs import Summary, engine_options, params_of  # noqa: F401 (Summary: its old home)
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
    ("relevance_fraction", "float | None", setting(
        None, "relevance baselines (normsim2, normsiminf, normsim_d, a plugin's): keep floor(N*F2) of the pool "
        "(N samples) by the relevance score among the quality stage's survivors (paper: --fraction 0.3 "
        "--relevance_fraction 0.2); alias --normsim_fraction", ranges.FRACTION)),
    ("relevance_threshold", "float | None", setting(
        None, "relevance baselines: keep survivors with a relevance score >= this instead; alias "
        "--normsim_threshold", ranges.THRESHOLD)),
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

    @property
    def normsim_fraction(self) -> float | None:
        """The older name of ``relevance_fraction`` (DataComp's patched baselines.py, recipes)."""
        return self.relevance_fraction

    @property
    def normsim_threshold(self) -> float | None:
        """The older name of ``relevance_threshold``."""
        return self.relevance_threshold


# Older names of settings, still accepted as flags, recipe keys and FilterConfig arguments: DataComp's patched
# baselines.py and the recipes in baselines/ use them.
ALIASES = {"normsim_fraction": "relevance_fraction", "normsim_threshold": "relevance_threshold"}


def canonical(name: str) -> str:
    """A setting's name, its alias resolved."""
    return ALIASES.get(name, name)


def _score_settings() -> list[tuple[str, str, Any]]:
    """Every registered score's settings, each once (scores may share one, e.g. the NormSims' --target).

    The registry has already left out a plugin whose settings collide with the run's or another score's.
    """
    seen: set[str] = set()
    out = []
    for spec in scores.registry().values():
        for f in spec.settings():
            if f.name not in seen:
                seen.add(f.name)
                out.append((f.name, type_name(f.type), field(default=f.default, metadata=f.metadata)))
    return out


def _engine_settings() -> list[tuple[str, str, Any]]:
    """Every registered engine's own settings (its ``params``), flags like any other."""
    from datacomp_plugins import engines

    out = []
    for factory in engines.registry().values():
        params = engines.engine_params(factory)
        for f in dataclasses.fields(params) if params is not None else ():
            out.append((f.name, type_name(f.type), field(default=f.default, metadata=f.metadata)))
    return out


def _build_config() -> type:
    """FilterConfig: DataComp's flags, the run's settings, then every registered score's and engine's."""
    names = {name for name, _, _ in DATACOMP_SETTINGS + RUN_SETTINGS} | set(ALIASES)
    assert names <= scores.RESERVED_SETTINGS, f"scores.RESERVED_SETTINGS lacks {names - scores.RESERVED_SETTINGS}"
    config = dataclasses.make_dataclass(
        "FilterConfig", DATACOMP_SETTINGS + RUN_SETTINGS + _score_settings() + _engine_settings(), bases=(_Stages,))
    config.__module__ = __name__  # pickles by name (worker processes, Ray)
    config.__doc__ = ("All settings of one filter run; names match the command line (DataComp's where they exist) "
                      "and recipe keys.")
    init = config.__init__

    def __init__(self, *args, **kwargs) -> None:
        for old, new in ALIASES.items():
            if old in kwargs:
                value = kwargs.pop(old)
                if new in kwargs and kwargs[new] is not None and kwargs[new] != value:
                    raise PluginError(f"--{old} {value} and --{new} {kwargs[new]}: one setting given twice "
                                      f"(--{old} is the older name of --{new})")
                kwargs[new] = value
        init(self, *args, **kwargs)

    __init__.__signature__ = inspect.signature(init)
    config.__init__ = __init__
    return config


_BUILT: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    """``FilterConfig`` is built the first time it is asked for: importing this module loads no plugin."""
    if name == "FilterConfig":
        if name not in _BUILT:
            _BUILT[name] = _build_config()
        return _BUILT[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


type_name = scores.type_name
def settings() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(__getattr__("FilterConfig"))


def number_ranges() -> dict[str, ranges.Range]:
    """Every numeric setting and its range (datacomp_plugins.core.ranges), the scores' included."""
    return {f.name: f.metadata["range"] for f in settings() if f.metadata.get("range") is not None}


def choices_of(f: dataclasses.Field) -> tuple[str, ...] | None:
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def validate(config) -> None:
    """Every setting check that needs no data, so bad settings fail before any heavy work."""
    from datacomp_plugins import engines
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
    _check_inputs_used(config)
    for spec in scores.registry().values():  # the restrictions' and the quality score's own checks
        if spec.role == "restriction" or spec.name == config.quality:
            spec.check(params_of(spec, config))
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
    engine, options = engines.get_engine(config.engine), engine_options(config)
    if options.params is not None and hasattr(engine, "check"):
        engine.check(options.params)
    if getattr(engine, "local_gpus", False):  # a cluster engine checks its own GPUs
        check_gpus(config.num_gpus)
    refuse_input_as_output(config)
    check_writable(config.save_path)
    check_folder_writable(config.cache_dir or default_cache_dir(), "--cache_dir")


def _restricted(config) -> bool:
    return any(spec.active(params_of(spec, config)) for spec in scores.registry().values()
               if spec.role == "restriction")


def _check_choice(config, name: str) -> None:
    f = next(f for f in settings() if f.name == name)
    allowed = choices_of(f)
    if allowed is not None and getattr(config, name) not in allowed:
        raise PluginError(f"--{name} {getattr(config, name)}: expected one of {list(allowed)}")


def check_numbers(config) -> None:
    """Range-check every numeric setting (a recipe or the Python API may hand over any type)."""
    for name, allowed in number_ranges().items():
        allowed.check(getattr(config, name), f"--{name}")


def score_inputs(values: Any) -> list[tuple[str, str | None]]:
    """(flag, path) of every file a registered score declares it reads (``ScoreSpec.inputs``), from a run's
    settings or a mapping of them."""
    get = values.get if isinstance(values, dict) else (lambda k: getattr(values, k, None))
    seen = dict.fromkeys(name for spec in scores.registry().values() for name in spec.inputs)
    return [(f"--{name}", get(name)) for name in seen]


def refuse_input_as_output(config, extra_inputs: tuple[str, ...] = ()) -> None:
    """Refuse a --save_path that is one of the run's inputs (or lies in the score cache), before anything is
    read: the shared check of :func:`datacomp_plugins.core.fileio.refuse_input_as_output`."""
    from datacomp_plugins.core import fileio

    inputs = score_inputs(config)
    inputs += [("--given_uids", path) for path in (config.given_uids.split("::") if config.given_uids else [])]
    inputs += [("recipe union file", path) for path in extra_inputs]
    fileio.refuse_input_as_output(config.save_path, "--save_path", inputs,
                                  [("--metadata_dir", config.metadata_dir)],
                                  [("--cache_dir", config.cache_dir or default_cache_dir())])


def check_stage_fractions(fraction: float | None, relevance_fraction: float | None,
                          flag: str = "--relevance_fraction") -> None:
    """The relevance stage keeps a share of the pool among the quality stage's survivors: never more."""
    if fraction is not None and relevance_fraction is not None and relevance_fraction > fraction:
        raise PluginError(f"{flag} {relevance_fraction} is larger than --fraction {fraction}: the "
                          "relevance stage keeps a share of the pool among the quality stage's survivors, so it "
                          "cannot keep more than they are")


def _validate_relevance(config) -> None:
    relevance = config.relevance
    given = [flag for flag, value in (("--relevance_fraction", config.relevance_fraction),
                                      ("--relevance_threshold", config.relevance_threshold)) if value is not None]
    if relevance is None:
        if given:
            raise PluginError(f"{', '.join(given)} (alias --normsim_*): only for the relevance baselines "
                              f"{list(scores.names('relevance'))}, not --name {config.name}")
        return
    if (config.relevance_fraction is None) == (config.relevance_threshold is None):
        raise PluginError(f"--name {config.name}: exactly one of --relevance_fraction and --relevance_threshold "
                          "(alias --normsim_fraction / --normsim_threshold) is required")
    check_stage_fractions(config.fraction, config.relevance_fraction)
    spec: ScoreSpec = scores.get(relevance)
    spec.check(params_of(spec, config))
    if not spec.thresholds and config.relevance_threshold is not None:
        raise PluginError(f"--relevance_threshold: {relevance} needs --relevance_fraction (its final size)")
    if spec.needs_target and getattr(config, "target", None) is None:
        raise PluginError(f"--name {config.name}: needs --target (in1k, or a .npy/.npz/.pt file or folder of "
                          "target image embeddings)")


def _check_inputs_used(config) -> None:
    """A file input of the quality or relevance scores (``--target``) given to a run whose stages do not read
    it is a mistake: say which baselines read it."""
    used = {config.quality, config.relevance} - {None}
    for spec in scores.registry().values():
        if spec.role == "restriction":
            continue
        for name in spec.inputs:
            if getattr(config, name, None) is None:
                continue
            readers = [s.name for s in scores.registry().values() if name in s.inputs]
            if not used & set(readers):
                raise PluginError(f"--{name}: only for the baselines that read it ({', '.join(readers)}), "
                                  f"not --name {config.name}")
