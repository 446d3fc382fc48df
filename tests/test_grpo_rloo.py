"""GRPO and RLOO (TRL trainers) on the toy world: rewards by name, explicit reference, learning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import alignlab, paired_eval, trend_t

pytestmark = pytest.mark.slow

# one process each: both cores go to its OpenMP threads
ENV = {"HF_HUB_OFFLINE": "1"}


def _metrics(run: Path) -> dict[str, Any]:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_judge_reward_raises_judge(method: str, sft_run: Path, tmp_path: Path) -> None:
    """The toy judge as reward: on the same held-out prompts, sampled with the same seed, the
    trained policy's answers score above the starting SFT model's (an unchanged model ties on
    every one); the policy has left the reference, KL bounded, entropy not rising.

    The training reward itself is no test: each step's mean over 8 prompts varies by +-0.1 with
    the prompts drawn, more than 30 (or 60) steps raise it (measured: flat over both)."""
    from alignlab import stats
    from tests.conftest import paired_gain

    run = tmp_path / method
    alignlab(f"hydra.run.dir={run}", f"method={method}", f"model.path={sft_run}/model",
             "method.reward_funcs=[toy_judge]", "method.args.max_steps=30",
             "method.args.logging_steps=2", env=ENV)
    m = _metrics(run)
    # Paired with the start on the same prompts and seed, 8 samples a prompt, by more than the
    # paired 95 % interval clustered by prompt (measured: grpo +0.15, margin 0.09, 66 answers
    # better, 17 worse; rloo +0.15, margin 0.09). The quick evaluation's 3 samples leave the
    # interval too wide for 30 steps (+0.10 and +0.13 with margins of 0.09).
    samples = paired_eval(run / "model", sft_run / "model", 8)
    gain = paired_gain([s["score"] for s in samples], [s["reference_score"] for s in samples],
                       [s["prompt"] for s in samples])
    assert gain["gain"] > gain["margin"], (gain, m["judge"], m["baseline"])
    # It left the reference: the held-out sequence KL (k3, never negative per sample) is above
    # its own 95 % interval's half-width (measured 0.18 +- 0.06); an unchanged policy has 0.
    # The 3 nats are a sanity bound (a blow-up), not a measured figure.
    kl = m["kl"]
    half = stats.t_quantile(0.975, kl["n_prompts"] - 1) * kl["stderr_k3"]
    assert half < kl["kl_k3"] and kl["kl"] < 3.0, kl
    logged = [h for h in m["log_history"] if "reward" in h]
    assert len(logged) >= 12
    # It does not drift into noise: the logged entropy does not rise by more than its
    # step-to-step noise. (A fall is no claim at 30 steps: -0.0024 +- 0.0013 per logged step
    # with the native kernels, -0.0015 +- 0.0022 with ATEN_CPU_CAPABILITY=avx2 and 2 threads.)
    # The logged KL is no test at 30 steps: it rises (0.001 -> 0.02) but spikes make the slope
    # noise.
    slope, half = trend_t([h["entropy"] for h in logged])
    assert slope < half, (slope, half, [h["entropy"] for h in logged])


def test_mixed_rewards_and_explicit_reference(sft_run: Path, reward_run: Path,
                                              tmp_path: Path) -> None:
    """RM folder + Python function together; the KL reference is ``method.reference`` (not what
    TRL would rebuild from the policy's ``_name_or_path``)."""
    import torch

    from alignlab import cli, methods, models

    cfg = cli.compose(["method=rloo", f"method.reward_model={reward_run}/model",
                       "method.reward_funcs=[toy_judge]", "++method.args.max_steps=1",
                       f"method.reference={sft_run}/model", f"run_dir={tmp_path / 'r'}"])
    trainer = methods.load("rloo").build(cfg, tmp_path / "r")
    assert trainer.reward_func_names[1] == "judge_reward"
    assert trainer.reward_funcs[0].config.num_labels == 1
    policy = trainer.accelerator.unwrap_model(trainer.model)
    assert policy.config._name_or_path == models.resolve_path(cfg.model, cfg.seed)
    ref = dict(trainer.ref_model.named_parameters())
    sft = models.load_model(cfg.model, f"{sft_run}/model", cfg.hardware)
    for name, p in sft.named_parameters():  # the reference holds the SFT weights ...
        assert torch.equal(ref[name].detach().cpu(), p.detach()), name
    start = dict(policy.named_parameters())  # ... and the policy the starting (random) ones
    assert not all(torch.equal(start[n], p) for n, p in sft.named_parameters())

    # The same through the CLI: both rewards are logged.
    run = tmp_path / "mixed"
    alignlab(f"hydra.run.dir={run}", "method=grpo", f"model.path={sft_run}/model",
             f"method.reward_model={reward_run}/model", "method.reward_funcs=[toy_judge]",
             "method.args.max_steps=2", "method.args.logging_steps=1", env=ENV)
    last = [h for h in _metrics(run)["log_history"] if "reward" in h][-1]
    assert "rewards/judge_reward/mean" in last and "rewards/model/mean" in last


def test_reward_errors(tmp_path: Path) -> None:
    from alignlab import rewards
    from alignlab.errors import AlignlabError

    assert rewards.function("toy_judge").__name__ == "judge_reward"
    assert rewards.function("alignlab.data.toy:judge_reward").__name__ == "judge_reward"
    with pytest.raises(AlignlabError, match="Did you mean 'toy_judge'"):
        rewards.function("toy_judg")
    with pytest.raises(AlignlabError, match="Could not import"):
        rewards.function("nope.mod:f")
    proc = alignlab(f"hydra.run.dir={tmp_path / 'x'}", "method=grpo", "model.from_sft=false",
                    "method.args.num_generations=3",  # 32 per batch: not divisible
                    "method.reward_funcs=[toy_judge]", check=False, env=ENV)
    assert proc.returncode == 2 and "num_generations" in proc.stderr, proc.stderr[-800:]
