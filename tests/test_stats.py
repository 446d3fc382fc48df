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


# ---------------------------------------------------------------------------------------------
# Clustering by prompt: evaluation draws several samples per prompt, and they are correlated.

PROMPTS, PER_PROMPT, SIMULATIONS = 40, 3, 2000
ICC = 1 / 3  # within-prompt correlation of the simulated samples


def _assert_coverage(values: np.ndarray, truth: float, stat, naive_below: float) -> None:
    """The 95 % interval of ``stat`` (mean_ci or win_rate) covers ``truth`` in 93-97 % of the
    simulated evaluations ``values`` (SIMULATIONS, PROMPTS, PER_PROMPT) when clustered by
    prompt, and in fewer than ``naive_below`` when every sample counts as independent."""
    groups = np.repeat(np.arange(PROMPTS), PER_PROMPT)
    hits = np.zeros(2)
    for sim in values.reshape(len(values), -1):
        for k, g in enumerate((groups, None)):
            res = stat(sim, groups=g)
            hits[k] += res["ci_low"] <= truth <= res["ci_high"]
    clustered, naive = hits / len(values)
    assert 0.93 <= clustered <= 0.97, clustered
    assert naive < naive_below, naive


def _beta_bernoulli(rng: np.random.Generator, mean: float) -> np.ndarray:
    """0/1 samples whose per-prompt success rate is Beta(mean, a + b = 1/ICC - 1)."""
    strength = 1 / ICC - 1  # a + b; then corr(two samples of one prompt) = 1 / (a + b + 1)
    rate = rng.beta(mean * strength, (1 - mean) * strength, size=(SIMULATIONS, PROMPTS, 1))
    return (rng.random((SIMULATIONS, PROMPTS, PER_PROMPT)) < rate).astype(float)


def test_judge_score_ci_is_clustered_by_prompt() -> None:
    """Binary judge scores, 40 prompts x 3 samples at correlation 1/3: the clustered 95 %
    interval covers the truth 93-97 % of the time; Wilson on the 120 samples does not."""
    rng = np.random.default_rng(0)
    truth = 0.65
    _assert_coverage(_beta_bernoulli(rng, truth), truth, mean_ci, naive_below=0.91)


def test_reward_score_ci_is_clustered_by_prompt() -> None:
    """Continuous reward-model scores with a per-prompt effect (correlation 1/3)."""
    rng = np.random.default_rng(1)
    truth = 0.4
    prompt_effect = rng.normal(0.0, math.sqrt(ICC), size=(SIMULATIONS, PROMPTS, 1))
    noise = rng.normal(0.0, math.sqrt(1 - ICC), size=(SIMULATIONS, PROMPTS, PER_PROMPT))
    _assert_coverage(truth + prompt_effect + noise, truth, mean_ci, naive_below=0.91)


def test_win_rate_ci_is_clustered_by_prompt() -> None:
    """Win/tie/loss outcomes whose win chance depends on the prompt."""
    rng = np.random.default_rng(2)
    tie = 0.2
    wins = _beta_bernoulli(rng, 0.6)
    ties = rng.random(wins.shape) < tie
    values = np.where(ties, 0.5, wins)
    truth = tie * 0.5 + (1 - tie) * 0.6
    # Ties weaken the correlation, yet the per-sample interval still falls short.
    _assert_coverage(values, truth, win_rate, naive_below=0.93)


def test_clustered_ci_details() -> None:
    # Equal group sizes: the cluster-robust standard error is that of the per-prompt means.
    rng = np.random.default_rng(3)
    values = rng.normal(size=(10, 3))
    groups = np.repeat(np.arange(10), 3)
    res = mean_ci(values.ravel(), groups=groups)
    means = values.mean(1)
    half = t_quantile(0.975, 9) * means.std(ddof=1) / math.sqrt(10)
    assert res["ci_high"] - res["mean"] == pytest.approx(half)
    assert res["n"] == 30 and res["n_prompts"] == 10
    # Without variation the correlation is unknown: assume the worst (n_eff = prompts).
    perfect = mean_ci([1.0] * 30, groups=groups)
    assert perfect["ci_high"] == 1.0 and perfect["ci_low"] < wilson_interval(30, 30)[0]
    # Clustering never makes an interval narrower than treating samples as independent.
    alternating = [float(i % 2) for i in range(30)]  # every prompt alike: design effect < 1
    wide = mean_ci(alternating, groups=groups)
    narrow = mean_ci(alternating)
    assert wide["ci_high"] - wide["ci_low"] >= narrow["ci_high"] - narrow["ci_low"] - 1e-12
    one_prompt = mean_ci([0.1, 0.5, 0.9], groups=[0, 0, 0])
    assert one_prompt["ci_low"] == -math.inf and one_prompt["n_prompts"] == 1
    kl = sequence_kl([-1.0, -2.0, -1.5, -0.5], [-1.2, -2.5, -1.0, -1.0], groups=[0, 0, 1, 1])
    assert kl["n_prompts"] == 2 and math.isfinite(kl["stderr"])
    res = win_rate([1, 1, 0.5, 0], groups=[0, 0, 1, 1])
    assert res["n_prompts"] == 2 and res["win_rate"] == 0.625


def test_interval_reads_writes_and_prints_every_layout() -> None:
    """results.Interval: the value under any of its keys, sibling bounds, JSON round trip,
    and one sample's infinite bounds printed as such (not as an exact value)."""
    from alignlab.results import Interval

    section = {"score": 0.6, "ci_low": 0.49, "ci_high": 0.69, "n": 126, "n_prompts": 42}
    figure = Interval.read(section)
    assert figure == Interval(0.6, 0.49, 0.69, 126, 42)
    assert figure.text() == "0.60 [0.49, 0.69]" and figure.text("+.2f") == "+0.60 [+0.49, +0.69]"
    assert Interval.read(figure.to_json("score")) == figure
    assert Interval.sibling({"over_refusal": 0.1, "over_refusal_ci_low": 0.0,
                             "over_refusal_ci_high": 0.3, "over_refusal_n": 9},
                            "over_refusal") == Interval(0.1, 0.0, 0.3, 9)
    one = Interval.read(mean_ci([0.4]))
    assert one is not None and not one.has_bounds and one.text() == "0.40 [-inf, inf]"
    assert Interval.read({"n": 3}) is None and Interval.read("x") is None
