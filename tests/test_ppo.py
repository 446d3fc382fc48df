"""alignlab's PPO stage end to end on the toy world: learning, LoRA, exact resume, 2-process DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    ROOT,
    alignlab,
    paired_eval,
    paired_gain,
    run_inprocess,
    sample_gain,
    trend_t,
)

pytestmark = pytest.mark.slow

# One thread per process: on a shared 2-core machine, oversubscribed OpenMP threads make these
# small models several times slower, and per-thread reduction order could differ between runs.
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

# Tiny settings for mechanics (not learning): a few updates of a few prompts.
TINY = ["method=ppo", "data.toy.n_prompts=64", "method.args.max_steps=4",
        "method.args.per_device_train_batch_size=4", "method.args.num_mini_batches=2",
        "method.args.num_ppo_epochs=1", "method.args.response_length=12",
        "method.args.eval_max_prompts=4", "method.args.eval_samples=1",
        "method.args.save_steps=2", "method.args.disable_tqdm=true", "quick_eval=false"]


def _metrics(run: Path) -> dict[str, Any]:
    return json.loads((run / "metrics.json").read_text())


def test_ppo_raises_judge_and_reward(sft_run: Path, reward_run: Path, tmp_path: Path) -> None:
    """40 updates against the RM beat the SFT model on held-out prompts, by the RM and, on the
    red-team prompts, by the rule judge, with the KL to the reference bounded (llama-small
    settings, fewer updates)."""
    from alignlab import cli, evaluation, models

    run = tmp_path / "ppo"
    m = run_inprocess(run, "method=ppo", f"model.path={sft_run}/model",
                      f"method.reward_model={reward_run}/model", "method.args.total_episodes=1280")
    # The stage's before/after evaluation keeps only the before figures, not its samples: the
    # PPO policy and the SFT model it started from are sampled here on the same held-out
    # prompts with the same seed (8 each), and each pair is scored by the rule judge and by
    # the RM, with paired 95 % intervals clustered by prompt.
    samples = paired_eval(run / "model", sft_run / "model", 8)
    prompts = [s["prompt"] for s in samples]
    # The rule judge: the red-team prompts (refuse harmful, answer borderline) improve by far
    # more than the margin (measured +0.66, margin 0.06: 86 answers better, 2 worse); the sums
    # get worse (-0.11, margin 0.15: the 2000-pair RM misses some held-out sums), so overall
    # (+0.18, margin 0.15; 0.20 +- 0.16 after 100 updates) it only has to be no worse than its
    # interval allows: a claim of more would fail on a CPU where the sums lose a little more.
    red_team, overall = sample_gain(samples, ("harmful", "borderline")), sample_gain(samples)
    assert red_team["gain"] > red_team["margin"], (red_team, m["eval"])
    assert overall["gain"] > -overall["margin"], (overall, m["eval"])
    cfg = cli.compose([])
    rm_tok = models.load_tokenizer(cfg.model, f"{reward_run}/model")
    rm = models.load_model(cfg.model, f"{reward_run}/model", cfg.hardware, kind="reward")
    convs = [[{"role": "user", "content": p}] for p in prompts]
    reward = paired_gain(
        evaluation.reward_scores(rm, rm_tok, convs, [s["response"] for s in samples]),
        evaluation.reward_scores(rm, rm_tok, convs, [s["reference_response"] for s in samples]),
        prompts)
    assert reward["gain"] > reward["margin"], (reward, m["eval"])  # measured +2.4, margin 0.8
    after = m["eval"]["after"]
    # That it moved is the paired gains above. The held-out sequence KL (k3, never negative per
    # sample) is positive (an unchanged policy has exactly 0) and bounded by the per-token
    # penalty: the 3 nats per response are a sanity bound (a blow-up), not a measured figure.
    # Its interval is no test: a few prompts carry most of it (k3 0.48 +- 0.18 with the native
    # kernels; 0.70 +- 0.82 with ATEN_CPU_CAPABILITY=avx2 and 2 threads, 42 prompts).
    kl = after["kl"]
    assert kl["kl_k3"] > 0.0 and kl["kl"] < 3.0, kl
    assert json.loads((run / "eval.json").read_text())["judge"] == after["judge"]
    history = m["log_history"]
    assert [h["step"] for h in history] == list(range(1, m["train"]["global_step"] + 1))
    for key in ("objective/scores", "objective/kl", "objective/non_score_reward",
                "policy/entropy_avg", "policy/clipfrac_avg", "val/clipfrac_avg",
                "loss/value_avg", "val/explained_variance", "policy/approxkl_avg",
                "response/length", "tokens/s"):
        assert all(key in h for h in history), key
    # The critic (initialised from the RM) learns: its explained variance rises over the
    # updates by more than its update-to-update noise (measured 0.03 -> 0.96 over 40 updates,
    # slope 0.015 +- 0.004 per update).
    slope, half = trend_t([h["val/explained_variance"] for h in history])
    assert slope > half, (slope, half, [h["val/explained_variance"] for h in history])
    assert m["peak_rss_mib"] > 0
    assert (run / "model" / "model.safetensors").exists() and (run / "DONE").exists()


def test_ppo_lora_resumes_exactly(sft_run: Path, reward_run: Path, tmp_path: Path) -> None:
    """Killed after update 3 (last checkpoint at 2), resumed: same steps, no update repeated in
    the log, and the same final adapter weights as a run that was never interrupted."""
    from safetensors.torch import load_file

    args = [*TINY, f"model.path={sft_run}/model", f"method.reward_model={reward_run}/model",
            "model.lora=true"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    alignlab(f"hydra.run.dir={whole}", *args, env=ENV)
    killed = alignlab(f"hydra.run.dir={cut}", *args, env={**ENV, "ALIGNLAB_KILL_AFTER_STEP": "3"},
                      check=False)
    assert killed.returncode == 75, killed.stderr[-2000:]
    ckpts = sorted(p.name for p in (cut / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-2"] and not (cut / "DONE").exists()
    state = json.loads((cut / "checkpoints/checkpoint-2/trainer_state.json").read_text())
    assert state["global_step"] == 2 and [h["step"] for h in state["log_history"]] == [1, 2]

    resumed = alignlab(f"hydra.run.dir={cut}", *args, "resume=true", env=ENV)
    assert "resuming PPO from" in resumed.stdout + resumed.stderr
    m = _metrics(cut)
    assert [h["step"] for h in m["log_history"]] == [1, 2, 3, 4]
    assert m["train"]["global_step"] == 4
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["checkpoint-2",
                                                                      "checkpoint-4"]
    ckpt = cut / "checkpoints/checkpoint-4"
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
            "trainer_state.json"} <= {p.name for p in ckpt.iterdir()}
    # Only the trainable weights are checkpointed with LoRA (adapters + value head).
    saved = load_file(ckpt / "model.safetensors")
    assert saved and all("lora_" in k or k.startswith("value_head") for k in saved)
    assert (cut / "model" / "adapter_config.json").exists()
    a = load_file(whole / "model" / "adapter_model.safetensors")
    b = load_file(cut / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    history = [{k: v for k, v in h.items() if not k.startswith(("time/", "tokens/"))}
               for h in _metrics(whole)["log_history"]]
    assert history == [{k: v for k, v in h.items() if not k.startswith(("time/", "tokens/"))}
                       for h in m["log_history"]]


@pytest.mark.xdist_group("ddp")  # one DDP launch at a time: they share the default port
def test_ppo_two_processes_ddp(tmp_path: Path) -> None:
    """accelerate launch with 2 CPU processes: real DDP over gloo, ranks end identical."""
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "alignlab", f"hydra.run.dir={run}", *TINY,
           "method.args.max_steps=2", "method.args.lr_scheduler_type=linear",
           "method.args.learning_rate=2e-4",
           "method.reward_funcs=[toy_judge]",
           "model.from_sft=false"]  # mechanics from the random init: no toy-SFT build needed
    env = {**os.environ, **ENV, "ACCELERATE_USE_CPU": "true", "ALIGNLAB_RUN_ID": "ddp-test",
           "ALIGNLAB_RANK_CHECK": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = _metrics(run)
    assert m["world_size"] == 2
    ranks = [json.loads((run / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]  # DDP kept them identical
    assert m["log_history"][-1]["episode"] == 2 * 8 * 2  # steps * local batch * processes
    # The linear schedule over 2 updates x 2 optimizer steps, as on one process: half-way after
    # update 1 (it reached 0 there when accelerate stepped the scheduler once per process).
    assert [h["lr"] for h in m["log_history"]] == pytest.approx([1e-4, 0.0], abs=1e-12)
    assert (run / "checkpoints/checkpoint-2/random_states_1.pkl").exists()


def test_ppo_user_errors(tmp_path: Path) -> None:
    proc = alignlab(f"hydra.run.dir={tmp_path / 'x'}", "method=ppo", check=False, env=ENV)
    assert proc.returncode == 2 and "needs a reward" in proc.stderr
    proc = alignlab(f"hydra.run.dir={tmp_path / 'z'}", "method=ppo", "method.args.kl_cof=0.1",
                    "method.reward_funcs=[toy_judge]", check=False, env=ENV)
    assert proc.returncode == 2 and "kl_coef" in proc.stderr


@pytest.mark.parametrize("hardware", ["fsdp", "zero2", "zero3"])
def test_ppo_refuses_sharded_hardware(hardware: str, tmp_path: Path) -> None:
    """generate() on FSDP/ZeRO-sharded weights deadlocks without synced_gpus: refused up front,
    before any GPU check, with one line naming the fix."""
    run = tmp_path / "run"
    proc = alignlab(f"hydra.run.dir={run}", "method=ppo", f"hardware={hardware}",
                    "method.reward_funcs=[toy_judge]", check=False, env=ENV)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "hardware=multi-gpu" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "does not support hardware" in lines[0]
    assert not run.exists()
