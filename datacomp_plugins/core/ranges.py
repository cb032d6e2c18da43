"""The valid range of every number a command takes, in one place.

Each concept (a seed, a fraction, a batch size, ...) has one :class:`Range`. Every command checks its numbers against
these before any work (``filter`` through :func:`datacomp_plugins.config.validate`, which recipes,
DataComp's patched ``baselines.py`` and the Python API go through too). A value outside its range would otherwise
surface deep inside the work as an overflow, an allocation failure or a selection built on inf/NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from datacomp_plugins.core.errors import PluginError


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval of ints or floats; ``None`` bounds are unbounded (but still finite)."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    why: str = ""

    def describe(self) -> str:
        """The expectation in words ("in (0, 1]", "an integer in [1, 10000]"), for messages and --help."""
        noun = "an integer" if self.kind is int else "a finite number"
        if self.low is None and self.high is None:
            return noun
        if self.high is None:
            return f"{noun} {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.low is None:
            return f"{noun} {'<' if self.high_open else '<='} {_num(self.high)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        interval = f"in {left}{_num(self.low)}, {_num(self.high)}{right}"
        return interval if self.kind is float else f"{noun} {interval}"

    def problem(self, value: object) -> str | None:
        """None when ``value`` is in range, else what is wrong with it."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                self.kind is int and not isinstance(value, int)):
            got = f" (got {type(value).__name__})" if not isinstance(value, (int, float)) else ""
            return f"must be {self.describe()}{got}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be {self.describe()}"
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return f"must be {self.describe()}"
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return f"must be {self.describe()}"
        return None

    def check(self, value: object, flag: str) -> None:
        """Raise a PluginError naming ``flag`` when ``value`` is out of range (``None`` means unset: fine)."""
        if value is None:
            return
        problem = self.problem(value)
        if problem:
            raise PluginError(f"{flag} {value}: {problem}{'; ' + self.why if self.why else ''}")


def _num(value: float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int) and value >= 1 << 20 and (value & (value - 1)) == 0:
        return f"2^{value.bit_length() - 1}"
    return f"{value:g}" if isinstance(value, float) else str(value)


# numpy's SeedSequence takes any non-negative int, but DataComp-style seeds are 32-bit; beyond that two
# spellings of one seed would silently differ.
SEED = Range(int, 0, 1 << 32, high_open=True)
FRACTION = Range(float, 0.0, 1.0, low_open=True, why="a share of the pool")
THRESHOLD = Range(float)
# 1/temperature multiplies the logits in float32 (and bf16); outside this range the logits overflow
# (tau -> 0) or all become equal so every score is log(B) (tau -> inf). CLIP's own is 0.01-0.07.
TEMPERATURE = Range(float, 1e-4, 1e4, why="the teacher's temperature; OpenAI CLIP's is 0.01")
NUM_BATCHES = Range(int, 1, 10_000, why="random batches averaged per sample; the paper uses 10")
NEGCLIPLOSS_BATCH_SIZE = Range(int, 1, 1 << 31, high_open=True,
                               why="a batch larger than a shard means the whole shard")
BLOCK_ROWS = Range(int, 0, 1 << 31, high_open=True, why="0 means automatic; capped at the shard size")
NUM_WORKERS = Range(int, 0, 4096)
NUM_GPUS = Range(int, 0, 1024)
NORMSIM_D_ITERS = Range(int, 1, 1_000_000)
TOY_SHARDS = Range(int, 1, 10_000)
TOY_ROWS = Range(int, 1, 10_000_000)
EMBED_BATCH_SIZE = Range(int, 1, 1 << 20)
PER_GROUP = Range(int, 1, 10_000, why="samples per grid of the inspect page")
