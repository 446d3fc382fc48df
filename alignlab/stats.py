"""Evaluation statistics: win rates, confidence intervals and sequence-level KL estimates.

Pure Python + numpy on purpose: the report renderer and the CLI import this module, and
neither should pay for importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

__all__ = [
    "mean_ci",
    "outcomes_from_scores",
    "sequence_kl",
    "t_quantile",
    "wilson_interval",
    "win_rate",
]

# exp() of a log-ratio above this overflows float64; clipping only matters for samples
# whose reference probability is e^700 times the policy's, where k3 is meaningless anyway.
_MAX_LOG_RATIO = 700.0


def _z(confidence: float) -> float:
    """Two-sided standard-normal critical value, e.g. 1.96 for 0.95."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def t_quantile(p: float, df: float) -> float:
    """Quantile ``p`` of Student's t with ``df`` degrees of freedom (no scipy needed).

    Exact for df = 1 and 2; a fourth-order Cornish-Fisher expansion otherwise, which is
    within 0.2 % of the exact value at p = 0.975 for df >= 3 and improves quickly with df.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"df must be positive, got {df}")
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2.0 * p - 1.0) / math.sqrt(2.0 * p * (1.0 - p))
    z = NormalDist().inv_cdf(p)
    v = float(df)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4)
    )


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion; ``successes`` may be fractional (ties = 0.5).

    Returns (0, 1) when n == 0: with no data every proportion is plausible.
    """
    if n <= 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1.0 - p) / n + z * z / (4 * n * n), 0.0)) / denom
    # At p = 0 or 1 the bound is exactly 0 or 1 in theory; pin it so round-off doesn't
    # show up as 1.4e-17 in reports.
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return lo, hi


def outcomes_from_scores(
    policy_scores: Sequence[float], reference_scores: Sequence[float], tie_tol: float = 0.0
) -> list[float]:
    """Per-item outcomes (1 win, 0.5 tie, 0 loss) from paired policy / reference scores.

    A pair is a tie when ``|policy - reference| <= tie_tol``.
    """
    if len(policy_scores) != len(reference_scores):
        raise ValueError(
            f"policy_scores has {len(policy_scores)} items but reference_scores has "
            f"{len(reference_scores)}; they must be paired"
        )
    outcomes: list[float] = []
    for pol, ref in zip(policy_scores, reference_scores, strict=True):
        diff = float(pol) - float(ref)
        outcomes.append(0.5 if abs(diff) <= tie_tol else (1.0 if diff > 0 else 0.0))
    return outcomes


def win_rate(outcomes: Sequence[float], confidence: float = 0.95) -> dict[str, float | int]:
    """Tie-adjusted win rate (ties count half) with a Wilson confidence interval.

    ``outcomes`` holds one value per comparison: 1 (policy wins), 0.5 (tie), 0 (loss).

    Why Wilson rather than a normal interval on the per-item mean: judge comparisons are
    often small (n of 20-200) and win rates near 0 or 1 are common; the normal interval then
    collapses to zero width (all wins gives [1, 1]) or leaves [0, 1], while Wilson stays
    inside [0, 1] and keeps honest width. Ties have lower variance than a coin flip, so
    treating them as half a success makes the interval slightly conservative, never
    over-confident.
    """
    values = [float(o) for o in outcomes]
    bad = [v for v in values if v not in (0.0, 0.5, 1.0)]
    if bad:
        raise ValueError(f"outcomes must be 1, 0.5 or 0; got {bad[:3]}")
    n = len(values)
    wins = sum(1 for v in values if v == 1.0)
    ties = sum(1 for v in values if v == 0.5)
    losses = n - wins - ties
    successes = wins + 0.5 * ties
    lo, hi = wilson_interval(successes, n, confidence)
    return {
        # n == 0: report the uninformative 0.5 rather than NaN so tables and plots still work.
        "win_rate": successes / n if n else 0.5,
        "ci_low": lo,
        "ci_high": hi,
        "n": n,
        "wins": wins,
        "ties": ties,
        "losses": losses,
    }


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, float | int]:
    """Mean of judge scores with a confidence interval.

    0/1 data (pass/fail judges) get a Wilson interval, which behaves at 0 % and 100 %;
    anything else gets a Student-t interval, which is right for small n. n == 0 gives NaN
    mean and NaN bounds; n == 1 gives a point estimate with infinite bounds.
    """
    arr = np.asarray(list(values), dtype=float)
    n = int(arr.size)
    if n == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    mean = float(arr.mean())
    if np.all((arr == 0.0) | (arr == 1.0)):
        lo, hi = wilson_interval(float(arr.sum()), n, confidence)
        return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": n}
    if n == 1:
        return {"mean": mean, "ci_low": -math.inf, "ci_high": math.inf, "n": 1}
    sem = float(arr.std(ddof=1)) / math.sqrt(n)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sem
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def sequence_kl(
    policy_logprobs: Sequence[float], reference_logprobs: Sequence[float]
) -> dict[str, float | int]:
    """Monte-Carlo KL(policy || reference) from the policy's own samples.

    Inputs are, per sample x ~ policy, the summed token log-probs log p(x) under the policy
    and log q(x) under the reference. Returns:

    - ``kl``: k1 = mean(log p - log q), unbiased but can be negative on few samples;
    - ``kl_k3``: mean((r - 1) - log r) with r = q/p, also unbiased and never negative per
      sample (Schulman's k3), usually lower variance when the two models are close;
    - ``stderr`` / ``stderr_k3``: standard errors of those means (NaN when n < 2);
    - ``n``: number of samples.
    """
    logp = np.asarray(list(policy_logprobs), dtype=float)
    logq = np.asarray(list(reference_logprobs), dtype=float)
    if logp.shape != logq.shape:
        raise ValueError(
            f"policy_logprobs has {logp.size} items but reference_logprobs has {logq.size}"
        )
    n = int(logp.size)
    if n == 0:
        nan = math.nan
        return {"kl": nan, "kl_k3": nan, "stderr": nan, "stderr_k3": nan, "n": 0}
    k1 = logp - logq
    log_r = np.clip(logq - logp, -np.inf, _MAX_LOG_RATIO)
    # expm1 keeps precision when r is close to 1 (models close together, the usual case).
    k3 = np.expm1(log_r) - log_r

    def _se(x: np.ndarray) -> float:
        return float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan

    return {
        "kl": float(k1.mean()),
        "kl_k3": float(k3.mean()),
        "stderr": _se(k1),
        "stderr_k3": _se(k3),
        "n": n,
    }
