"""``method=eval`` with an LLM judge: win rate in both orders, length control, cached verdicts
that survive a kill, and the pair benchmark (accuracy per category, calibration)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from alignlab import rows, stats, verdicts
from tests.conftest import alignlab, read_samples

ENV = {"OMP_NUM_THREADS": "2", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
EVAL = ["method=eval", "method.args.max_prompts=6", "method.args.num_samples=2",
        "method.args.max_new_tokens=24", "report_to=none", "method.args.judge=llm"]


def _length_driven(theta: float, phi: float, seed: int, n_prompts: int = 150,
                   per_prompt: int = 2) -> tuple[list[float], list[float], list[int]]:
    """Outcomes drawn from P(win) = sigmoid(theta + phi * tanh(d / sd)), where the policy's
    answer is longer than the baseline's in most comparisons."""
    rng = np.random.default_rng(seed)
    n = n_prompts * per_prompt
    diffs = rng.normal(120.0, 100.0, n)  # characters; mostly longer
    x = np.tanh(diffs / diffs.std())
    wins = rng.random(n) < 1.0 / (1.0 + np.exp(-(theta + phi * x)))
    return wins.astype(float).tolist(), diffs.tolist(), [i // per_prompt for i in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_length_controlled_win_rate_removes_a_length_bias(seed: int) -> None:
    """A judge that only rewards length: the raw win rate is far above 0.5, the LC win rate's
    interval holds the 0.5 it would be at equal length."""
    outcomes, diffs, groups = _length_driven(theta=0.0, phi=3.0, seed=seed)
    raw = stats.win_rate(outcomes, groups=groups)
    lc = verdicts.length_controlled(outcomes, diffs, groups, seed=seed, resamples=300)
    assert raw["ci_low"] > 0.6
    assert lc["ci_low"] <= 0.5 <= lc["ci_high"]
    assert lc["length_coef"] > 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_length_controlled_equals_raw_without_a_length_effect(seed: int) -> None:
    outcomes, diffs, groups = _length_driven(theta=1.0, phi=0.0, seed=seed)
    raw = stats.win_rate(outcomes, groups=groups)
    lc = verdicts.length_controlled(outcomes, diffs, groups, seed=seed, resamples=300)
    truth = 1.0 / (1.0 + math.exp(-1.0))
    assert lc["ci_low"] <= truth <= lc["ci_high"]
    assert abs(lc["lc_win_rate"] - raw["win_rate"]) < raw["ci_high"] - raw["ci_low"]


def test_calibration_buckets_hold_every_pair() -> None:
    from alignlab import evaluation

    p = [0.55, 0.52, 0.95, 0.05, 0.7, 0.3, 0.5, 1.0]
    cal = evaluation.calibration(p, list(range(len(p))))
    assert sum(b["n"] for b in cal["buckets"]) == len(p)
    assert 0.0 <= cal["ece"] <= 0.5
    top = cal["buckets"][-1]
    assert top["confidence"] == [0.9, 1.0] and top["n"] == 3 and top["accuracy"] == 2 / 3


def _judged(run: Path) -> dict:
    return json.loads((run / "eval.json").read_text())["win_rate"]


@pytest.mark.slow
def test_both_orders_swap_roles_exactly_and_verdicts_are_cached(sft_run: Path,
                                                                tmp_path: Path) -> None:
    """Policy vs baseline, then baseline vs policy on the same cache: every verdict comes from
    the cache (nothing is asked twice), and the win rates are exact complements."""
    from alignlab import models

    start = str(models.build_builtin("llama-small", 42))
    judge = f"method.args.judge_model={sft_run}/model"
    cache = tmp_path / "verdicts"
    one, two = tmp_path / "one", tmp_path / "two"
    alignlab(*EVAL, f"model.path={sft_run}/model", f"method.reference={start}", judge,
             f"method.args.judge_cache={cache}", f"hydra.run.dir={one}", env=ENV)
    alignlab(*EVAL, f"model.path={start}", f"method.reference={sft_run}/model", judge,
             f"method.args.judge_cache={cache}", f"hydra.run.dir={two}", env=ENV)
    a, b = _judged(one), _judged(two)
    assert a["judgements"]["asked"] >= 4 and a["judgements"]["cached"] == 0
    assert b["judgements"] == {"asked": 0, "cached": a["judgements"]["asked"],
                               "identical": a["judgements"]["identical"]}
    assert a["n"] == b["n"] == 12 and a["n_prompts"] == 6
    assert a["win_rate"] == pytest.approx(1.0 - b["win_rate"])
    assert a["position_consistency"] == pytest.approx(b["position_consistency"])
    assert 0.0 <= a["ci_low"] <= a["win_rate"] <= a["ci_high"] <= 1.0
    lc = a["length_controlled"]
    assert 0.0 <= lc["ci_low"] <= lc["lc_win_rate"] <= lc["ci_high"] <= 1.0
    for s in read_samples(one):
        assert 0.0 <= s["judge_p"] <= 1.0
        if s["response"].strip() == s["reference_response"].strip():
            assert s["judge_p"] == 0.5


@pytest.mark.slow
def test_a_killed_judge_resumes_to_the_same_verdicts_without_asking_again(
        sft_run: Path, tmp_path: Path) -> None:
    from alignlab import models

    start = str(models.build_builtin("llama-small", 42))
    common = [*EVAL, f"model.path={sft_run}/model", f"method.reference={start}",
              f"method.args.judge_model={start}"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    alignlab(*common, f"hydra.run.dir={whole}", env=ENV)
    proc = alignlab(*common, f"hydra.run.dir={killed}", check=False,
                    env={**ENV, "ALIGNLAB_KILL_AFTER_STEP": "eval:2"})
    assert proc.returncode == 75, proc.stderr[-2000:]
    assert len(rows.read_rows(killed / "judgements")) == 2  # kept, not deleted
    alignlab(*common, f"hydra.run.dir={killed}", "resume=true", env=ENV)
    full, resumed = _judged(whole), _judged(killed)
    assert resumed["judgements"]["cached"] == 2
    assert resumed["judgements"]["asked"] == full["judgements"]["asked"] - 2
    # the same labels; the probabilities asked after the kill went in other batches (their
    # padding moves them by float rounding, ~1e-7)
    again, first = [s["judge_p"] for s in read_samples(killed)], \
        [s["judge_p"] for s in read_samples(whole)]
    assert again == pytest.approx(first, abs=1e-5)
    assert [verdicts.outcome(p) for p in again] == [verdicts.outcome(p) for p in first]
    assert resumed["win_rate"] == full["win_rate"]


@pytest.mark.slow
def test_reward_model_benchmark_per_category_beats_its_untrained_start(
        sft_run: Path, reward_run: Path, tmp_path: Path) -> None:
    """``task=pairs`` on the toy pairs: the trained reward model prefers the chosen reply more
    often than its starting point (the SFT model with an untrained score head) on the same
    pairs, by the paired difference's 95 % interval; per category and calibration buckets
    account for every pair. 240 pairs of the train split: the 42 held-out pairs are too few
    to separate the two reliably."""
    def bench(reward_model: Path, out: Path) -> dict:
        alignlab("method=eval", "method.args.task=pairs", f"method.reward_model={reward_model}",
                 "method.args.split=train", "method.args.max_prompts=240", "report_to=none",
                 f"hydra.run.dir={out}", env=ENV)
        return json.loads((out / "eval.json").read_text())["pairs"]

    trained = bench(reward_run / "model", tmp_path / "trained")
    untrained = bench(sft_run / "model", tmp_path / "untrained")
    a, b = read_samples(tmp_path / "trained"), read_samples(tmp_path / "untrained")
    assert [r["prompt"] for r in a] == [r["prompt"] for r in b]
    gain = stats.mean_ci([verdicts.outcome(x["p_chosen"]) - verdicts.outcome(y["p_chosen"])
                          for x, y in zip(a, b, strict=True)], groups=[r["prompt"] for r in a])
    assert gain["ci_low"] > 0, (gain, trained["accuracy"], untrained["accuracy"])
    assert trained["ci_low"] > 0.5
    for section in (trained, untrained):
        assert sum(c["n"] for c in section["per_category"].values()) == section["n"]
        assert sum(b["n"] for b in section["calibration"]["buckets"]) == section["n"]
        assert set(section["per_category"]) == {"helpful", "harmful", "borderline"}


@pytest.mark.slow
def test_toy_safety_is_the_rules_refusals_by_safe_and_unsafe_prompts(sft_run: Path,
                                                                     tmp_path: Path) -> None:
    """On the toy world the rule decides refusals: over-refusal is the share of helpful and
    borderline answers refused (borderline alone is Bai et al.'s evasiveness), unsafe
    compliance the share of harmful ones answered."""
    out = tmp_path / "eval"
    alignlab("method=eval", f"model.path={sft_run}/model", "method.args.num_samples=2",
             "method.args.max_new_tokens=24", "report_to=none", f"hydra.run.dir={out}", env=ENV)
    evals = json.loads((out / "eval.json").read_text())
    safety, rule = evals["safety"], evals["judge"]
    assert safety["decided_by"] == "toy"
    per = safety["per_category"]
    assert {c: v["refused"] for c, v in per.items()} == pytest.approx(rule["refusals"])
    assert per["borderline"]["refused"] == pytest.approx(rule["evasiveness"])
    safe = [c for c, v in per.items() if v["safety"] == "safe"]
    assert sorted(safe) == ["borderline", "helpful"] and per["harmful"]["safety"] == "unsafe"
    n_safe = sum(per[c]["n"] for c in safe)
    assert safety["over_refusal"]["n"] == n_safe
    assert safety["over_refusal"]["mean"] == pytest.approx(
        sum(per[c]["refused"] * per[c]["n"] for c in safe) / n_safe)
    assert safety["unsafe_compliance"]["mean"] == pytest.approx(1 - per["harmful"]["refused"])
    md = (out / "report.md").read_text()
    assert "Over-refusal (safe prompts refused)" in md and "Unsafe prompts complied with" in md
