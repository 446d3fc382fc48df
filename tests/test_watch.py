"""The held-out judge during RL and its over-optimisation alarm (``watch.*``), on runs that
over-optimise: GRPO on a length reward, PPO against a reward model without a KL penalty."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import alignlab, one_error_line

ENV = {"OMP_NUM_THREADS": "2", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
WATCH = ["watch.every=5", "watch.on_alarm=stop", "report_to=none"]


def _kept_policy_scores_as_its_best_point(run: Path, tmp_path: Path, tokens: int) -> dict:
    """The run stopped at the alarm, and the policy it saved is the best point's: evaluated
    again with the watch's settings (the same prompts, samples and seed), it scores exactly the
    held-out judge of that point."""
    metrics = json.loads((run / "metrics.json").read_text())
    w = metrics["watch"]
    alarm, best = w["alarm"], w["best"]
    assert w["stopped"] and alarm is not None, w["points"]
    steps = metrics["train"].get("global_step", metrics["log_history"][-1].get("step"))
    assert steps == alarm["step"] < 60
    assert alarm["ci_high"] < best["judge"] and alarm["proxy"] > best["proxy"]
    assert best["step"] < alarm["step"]
    again = tmp_path / "again"
    alignlab("method=eval", f"model.path={run}/model", "method.args.max_prompts=32",
             "method.args.num_samples=2", f"method.args.max_new_tokens={tokens}",
             "report_to=none", f"hydra.run.dir={again}", env=ENV)
    judged = json.loads((again / "eval.json").read_text())["judge"]
    assert judged["score"] == pytest.approx(best["judge"], abs=1e-9)
    return w


@pytest.mark.slow
def test_grpo_on_a_length_reward_stops_at_the_alarm_and_keeps_the_best_policy(
        sft_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "grpo"
    proc = alignlab("method=grpo", f"model.path={sft_run}/model",
                    "method.reward_funcs=[tests.fixtures.rewards:verbosity]",
                    "method.args.max_steps=60", "method.args.learning_rate=5e-4",
                    "method.args.logging_steps=5", *WATCH, f"hydra.run.dir={run}", env=ENV)
    warned = [ln for ln in (proc.stdout + proc.stderr).splitlines()
              if "reward over-optimisation" in ln]
    assert len(warned) == 1 and "keeping the policy of step" in warned[0]
    _kept_policy_scores_as_its_best_point(run, tmp_path, tokens=32)


@pytest.mark.slow
def test_ppo_without_a_kl_penalty_over_optimises_its_proxy_and_stops(
        sft_run: Path, tmp_path: Path) -> None:
    """PPO at kl_coef=0 on a length reward: the proxy climbs while the toy rule falls, the
    alarm fires and the best policy is kept. (Against the toy reward model it over-optimised
    within 10 updates on one machine and not within 60 on another, whose SFT start differs:
    one sample, not a test; a length reward is climbed by rambling from any start.)"""
    run = tmp_path / "ppo"
    alignlab("method=ppo", f"model.path={sft_run}/model",
             "method.reward_funcs=[tests.fixtures.rewards:verbosity]", "method.args.kl_coef=0.0",
             "method.args.learning_rate=3e-4", "method.args.max_steps=60", *WATCH,
             f"hydra.run.dir={run}", env=ENV)
    _kept_policy_scores_as_its_best_point(run, tmp_path, tokens=32)


def test_the_watch_is_off_when_the_stage_trains_on_the_rule_itself(tmp_path: Path) -> None:
    """No judge other than the training reward: nothing to watch, said in one line."""
    from alignlab import cli, watch

    cfg = cli.compose(["method=grpo", "method.reward_funcs=[toy_judge]",
                       f"run_dir={tmp_path}"])
    assert watch.create(cfg, max_new_tokens=8) is None


@pytest.mark.parametrize("override, expect", [
    ("watch.on_alarm=halt", "watch.on_alarm='halt' is unknown"),
    ("watch.judge=reward", "needs watch.reward_model"),
    ("watch.every=-1", "watch.every=-1 must be"),
])
def test_bad_watch_settings_are_one_line_before_training(tmp_path: Path, override: str,
                                                        expect: str) -> None:
    proc = alignlab("method=grpo", "method.reward_funcs=[toy_judge]", override,
                    f"hydra.run.dir={tmp_path / 'run'}", check=False, env=ENV)
    assert expect in one_error_line(proc)
