"""How a measured figure is written to and read from eval.json and metrics.json: :class:`Interval`.

Every figure with an interval in alignlab's outputs is a JSON object of its value, ``ci_low``,
``ci_high``, ``n`` and (clustered by prompt) ``n_prompts``. The value's key depends on the
figure (``mean``, the toy judge's ``score``, ``accuracy``, ``win_rate``, ``lc_win_rate``), and a
figure inside a section may carry its interval as siblings (``over_refusal``,
``over_refusal_ci_low``, ...). Those layouts are the public format of the first run dirs (the
pair benchmark's per-category figures and calibration buckets gained ``n_prompts`` here); this
module writes them and reads them where alignlab reads an interval, so a run dir written
before it still reads the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The keys a figure's value may have in its object, in the order they are looked for.
VALUE_KEYS = ("mean", "score", "accuracy", "win_rate", "lc_win_rate")
LOW, HIGH, N, N_PROMPTS = "ci_low", "ci_high", "n", "n_prompts"
FIELDS = (LOW, HIGH, N, N_PROMPTS)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def bounds(section: Any) -> tuple[float, float] | None:
    """(ci_low, ci_high) of an output object that has both as numbers, whatever its value."""
    if not isinstance(section, Mapping):
        return None
    low, high = section.get(LOW), section.get(HIGH)
    return (float(low), float(high)) if _number(low) and _number(high) else None


@dataclass(frozen=True)
class Interval:
    """A figure with its 95 % interval: the value, the bounds, the samples (and prompts) it
    is computed from. Bounds are None where the figure has none."""

    mean: float
    low: float | None = None
    high: float | None = None
    n: int | None = None
    n_prompts: int | None = None

    @property
    def has_bounds(self) -> bool:
        """Both bounds are finite numbers."""
        return self.low is not None and self.high is not None \
            and math.isfinite(self.low) and math.isfinite(self.high)

    @classmethod
    def read(cls, section: Any, keys: tuple[str, ...] = VALUE_KEYS) -> Interval | None:
        """The interval of an eval.json/metrics.json object (its value: the first of ``keys``
        it has); None for anything that is not such an object."""
        if not isinstance(section, Mapping):
            return None
        key = next((k for k in keys if _number(section.get(k))), None)
        if key is None:
            return None
        return cls._of(section[key], {f: section.get(f) for f in FIELDS})

    @classmethod
    def sibling(cls, section: Any, key: str) -> Interval | None:
        """The interval of figure ``key`` written with sibling keys (``key``, ``key_ci_low``,
        ``key_ci_high``, ``key_n``, ``key_n_prompts``)."""
        if not isinstance(section, Mapping) or not _number(section.get(key)):
            return None
        return cls._of(section[key], {f: section.get(f"{key}_{f}") for f in FIELDS})

    @classmethod
    def _of(cls, value: Any, found: Mapping[str, Any]) -> Interval:
        low, high, n, prompts = (found.get(f) for f in FIELDS)
        return cls(mean=float(value), low=float(low) if _number(low) else None,
                   high=float(high) if _number(high) else None,
                   n=int(n) if _number(n) else None,
                   n_prompts=int(prompts) if _number(prompts) else None)

    def to_json(self, key: str = "mean") -> dict[str, Any]:
        """The object eval.json holds: ``{key: value, ci_low, ci_high, n[, n_prompts]}``."""
        out: dict[str, Any] = {key: self.mean, LOW: self.low, HIGH: self.high}
        if self.n is not None:
            out[N] = self.n
        if self.n_prompts is not None:
            out[N_PROMPTS] = self.n_prompts
        return out

    def bounds_text(self, spec: str = ".2f") -> str:
        """``[0.49, 0.69]`` (``[-inf, inf]`` from one sample), or "" without bounds."""
        if self.low is None or self.high is None:
            return ""
        return f"[{self.low:{spec}}, {self.high:{spec}}]"

    def text(self, spec: str = ".2f") -> str:
        """``0.60 [0.49, 0.69]`` (the value alone without bounds); ``spec`` formats each
        number (``+.2f`` for a signed change, ``.1%`` for a share)."""
        bounds = self.bounds_text(spec)
        return f"{self.mean:{spec}} {bounds}" if bounds else f"{self.mean:{spec}}"
