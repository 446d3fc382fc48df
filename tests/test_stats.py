"""Evaluation statistics on hand-made cases with known answers."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from alignlab.stats import (
    mean_ci,
    outcomes_from_scores,
    sequence_kl,
    t_quantile,
    wilson_interval,
    win_rate,
)


def test_stats_does_not_import_torch() -> None:
    code = "import sys, alignlab.stats; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_win_rate_counts_ties_as_half() -> None:
    res = win_rate([1] * 6 + [0.5] * 2 + [0] * 2)
    assert (res["wins"], res["ties"], res["losses"], res["n"]) == (6, 2, 2, 10)
    assert res["win_rate"] == pytest.approx(0.7)
    assert res["ci_low"] < 0.7 < res["ci_high"]
    assert res["ci_low"] >= 0.0 and res["ci_high"] <= 1.0


def test_win_rate_edge_cases() -> None:
    empty = win_rate([])
    assert empty["n"] == 0 and (empty["ci_low"], empty["ci_high"]) == (0.0, 1.0)
    all_wins = win_rate([1] * 20)
    assert all_wins["win_rate"] == 1.0 and all_wins["ci_high"] == 1.0
    # Wilson keeps real width at 100 % instead of collapsing to [1, 1].
    assert 0.7 < all_wins["ci_low"] < 0.9
    all_losses = win_rate([0] * 20)
    assert all_losses["ci_low"] == 0.0 and all_losses["ci_high"] > 0.1
    with pytest.raises(ValueError):
        win_rate([1, 2])


def test_wilson_matches_textbook_value() -> None:
    # 8 successes of 10 at 95 %: Wilson interval is about [0.490, 0.943].
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)


def test_win_rate_ci_covers_truth_and_narrows() -> None:
    rng = np.random.default_rng(0)
    truth = 0.65  # P(win)=0.5, P(tie)=0.3, P(loss)=0.2 -> 0.5 + 0.15
    widths, covered = [], 0
    for n in (20, 200, 2000):
        outcomes = rng.choice([1.0, 0.5, 0.0], size=n, p=[0.5, 0.3, 0.2])
        res = win_rate(outcomes.tolist())
        widths.append(res["ci_high"] - res["ci_low"])
        covered += res["ci_low"] <= truth <= res["ci_high"]
    assert widths[0] > widths[1] > widths[2]
    assert covered == 3
    # Coverage over many repeats should be at least nominal (ties make it conservative).
    hits = 0
    for _ in range(400):
        res = win_rate(rng.choice([1.0, 0.5, 0.0], size=50, p=[0.5, 0.3, 0.2]).tolist())
        hits += res["ci_low"] <= truth <= res["ci_high"]
    assert hits / 400 >= 0.92


def test_outcomes_from_scores() -> None:
    assert outcomes_from_scores([1.0, 0.2, 0.5], [0.5, 0.6, 0.5]) == [1.0, 0.0, 0.5]
    assert outcomes_from_scores([1.0, 0.5], [0.95, 0.2], tie_tol=0.1) == [0.5, 1.0]
    with pytest.raises(ValueError):
        outcomes_from_scores([1.0], [1.0, 2.0])


def test_t_quantile_against_table() -> None:
    for df, expected in ((1, 12.706), (2, 4.303), (3, 3.182), (10, 2.228), (30, 2.042)):
        assert t_quantile(0.975, df) == pytest.approx(expected, rel=2e-3)


def test_mean_ci() -> None:
    res = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert res["mean"] == 3.0 and res["n"] == 5
    # t(0.975, 4) = 2.776, sd = 1.5811, sem = 0.7071 -> half width 1.963
    assert res["ci_high"] - 3.0 == pytest.approx(1.963, abs=5e-3)
    binary = mean_ci([1, 1, 1, 0])
    assert binary["mean"] == 0.75 and 0.0 <= binary["ci_low"] < 0.75 < binary["ci_high"] <= 1.0
    assert math.isnan(mean_ci([])["mean"])
    one = mean_ci([0.3])
    assert one["mean"] == 0.3 and one["ci_low"] == -math.inf


def test_mean_ci_narrows_and_covers() -> None:
    rng = np.random.default_rng(1)
    small = mean_ci(rng.normal(0.6, 0.2, size=20).tolist())
    large = mean_ci(rng.normal(0.6, 0.2, size=2000).tolist())
    assert large["ci_high"] - large["ci_low"] < small["ci_high"] - small["ci_low"]
    assert large["ci_low"] < 0.6 < large["ci_high"]


def _categorical_kl_case(n: int, seed: int) -> tuple[dict, float]:
    rng = np.random.default_rng(seed)
    p = np.array([0.5, 0.3, 0.15, 0.05])
    q = np.array([0.25, 0.25, 0.25, 0.25])
    analytic = float(np.sum(p * np.log(p / q)))
    x = rng.choice(len(p), size=n, p=p)
    return sequence_kl(np.log(p[x]).tolist(), np.log(q[x]).tolist()), analytic


def test_sequence_kl_approaches_analytic() -> None:
    res, analytic = _categorical_kl_case(20000, 0)
    assert res["n"] == 20000
    assert res["kl"] == pytest.approx(analytic, abs=4 * res["stderr"])
    assert res["kl_k3"] == pytest.approx(analytic, abs=4 * res["stderr_k3"])
    assert abs(res["kl"] - analytic) < 0.02 and res["kl_k3"] >= 0.0
    small, _ = _categorical_kl_case(200, 0)
    assert small["stderr"] > res["stderr"]


def test_sequence_kl_identical_and_edge_cases() -> None:
    same = sequence_kl([-3.0, -1.0, -2.5], [-3.0, -1.0, -2.5])
    assert same["kl"] == 0.0 and same["kl_k3"] == 0.0
    empty = sequence_kl([], [])
    assert empty["n"] == 0 and math.isnan(empty["kl"])
    single = sequence_kl([-1.0], [-2.0])
    assert single["kl"] == 1.0 and math.isnan(single["stderr"])
    huge = sequence_kl([-2000.0], [-1.0])  # reference far likelier: no overflow to inf
    assert math.isfinite(huge["kl_k3"])
    with pytest.raises(ValueError):
        sequence_kl([1.0], [1.0, 2.0])
