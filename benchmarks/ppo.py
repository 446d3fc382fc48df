"""Benchmark alignlab's PPO against TRL 1.12's experimental PPO (the last TRL that had one).

Same policy (an SFT run), same reward model, same prompts, same rollout and PPO settings; each
trainer runs in its own fresh process so peak memory is its own. Both final policies are then
scored by the same held-out evaluation (3 samples per prompt at T=0.7): reward-model score, KL
to the SFT model, and the toy judge. Prints a markdown table.

TRL 1.12 is installed only into a throwaway virtual environment in a temp dir (``--trl-venv`` to
reuse one); it is never a dependency of alignlab. If it cannot be installed, the script says so
and still reports alignlab's figures.

    .venv/bin/python benchmarks/ppo.py --sft <sft run>/model --rm <reward run>/model

Without ``--sft/--rm`` it first trains both with the CLI's defaults (several minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# The shared setup: 32 prompts per update (2 mini batches of 16), 2 PPO epochs, k1 KL 0.2.
SETTINGS = {"learning_rate": 1e-4, "per_device_train_batch_size": 16, "num_ppo_epochs": 2,
            "response_length": 32, "temperature": 0.7, "kl_coef": 0.2, "kl_estimator": "k1",
            "cliprange": 0.2, "cliprange_value": 0.2, "vf_coef": 0.1, "gamma": 1.0, "lam": 0.95,
            "missing_eos_penalty": 1.0, "local_rollout_forward_batch_size": 64,
            "adam_epsilon": 1e-8, "max_grad_norm": 1.0}
ROLLOUT = 32  # prompts per update, per process

TRL_RUNNER = r'''
import json, resource, sys, time
import torch
from datasets import Dataset
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoTokenizer)
from trl.experimental.ppo import PPOConfig, PPOTrainer

cfg = json.loads(open(sys.argv[1]).read())
tok = AutoTokenizer.from_pretrained(cfg["sft"], padding_side="left")
policy = AutoModelForCausalLM.from_pretrained(cfg["sft"])
ref = AutoModelForCausalLM.from_pretrained(cfg["sft"])
value = AutoModelForSequenceClassification.from_pretrained(cfg["rm"], num_labels=1)
reward = AutoModelForSequenceClassification.from_pretrained(cfg["rm"], num_labels=1)
train = Dataset.from_dict({"input_ids": cfg["prompt_ids"]})
counted = {"tokens": 0}
generate = policy.generate

def counting_generate(*args, **kwargs):  # count real prompt + response tokens, as alignlab does
    out = generate(*args, **kwargs)
    seqs = out.sequences if hasattr(out, "sequences") else out
    ctx = kwargs["input_ids"].shape[1]
    counted["tokens"] += int(kwargs["attention_mask"].sum())
    for row in seqs[:, ctx:].tolist():
        counted["tokens"] += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row \
            else len(row)
    return out

policy.generate = counting_generate
s = cfg["settings"]
args = PPOConfig(output_dir=cfg["out"],
                 per_device_train_batch_size=s["per_device_train_batch_size"],
                 gradient_accumulation_steps=cfg["rollout"] // s["per_device_train_batch_size"],
                 num_mini_batches=cfg["rollout"] // s["per_device_train_batch_size"],
                 num_ppo_epochs=s["num_ppo_epochs"], learning_rate=s["learning_rate"],
                 lr_scheduler_type="constant", total_episodes=cfg["steps"] * cfg["rollout"],
                 response_length=s["response_length"], temperature=s["temperature"],
                 stop_token="eos", missing_eos_penalty=s["missing_eos_penalty"],
                 kl_coef=s["kl_coef"], kl_estimator=s["kl_estimator"], cliprange=s["cliprange"],
                 cliprange_value=s["cliprange_value"], vf_coef=s["vf_coef"], gamma=s["gamma"],
                 lam=s["lam"], adam_epsilon=s["adam_epsilon"], max_grad_norm=s["max_grad_norm"],
                 local_rollout_forward_batch_size=s["local_rollout_forward_batch_size"],
                 num_sample_generations=0, save_strategy="no", report_to="none",
                 logging_steps=1, use_cpu=True, bf16=False, gradient_checkpointing=False,
                 seed=cfg["seed"], disable_tqdm=True)
trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref,
                     reward_model=reward, value_model=value, train_dataset=train,
                     eval_dataset=train.select(range(8)))
start = time.time()
trainer.train()
wall = time.time() - start
trainer.save_model(cfg["out"] + "/model")
tok.save_pretrained(cfg["out"] + "/model")
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
json.dump({"wall": wall, "tokens": counted["tokens"], "peak_memory_mb": rss,
           "log_history": trainer.state.log_history}, open(cfg["out"] + "/result.json", "w"))
'''


def sh(cmd: list[str], env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess:
    """Run a command, capturing output."""
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          **kw)


def make_trl_venv(where: Path) -> tuple[Path | None, str]:
    """A throwaway venv with torch 2.13 and trl 1.12: (its python, or None, and a note)."""
    python = where / "bin" / "python"
    if python.exists() and sh([str(python), "-c", "import trl.experimental.ppo"]).returncode == 0:
        return python, "reused"
    made = sh([sys.executable, "-m", "venv", str(where)])
    if made.returncode != 0:
        return None, f"could not create a venv: {made.stderr.strip()[-300:]}"
    pip = sh([str(python), "-m", "pip", "install", "-q", "torch==2.13.0", "trl==1.12.*"],
             timeout=1800)
    if pip.returncode != 0:
        return None, f"pip install trl==1.12.* failed: {pip.stderr.strip()[-500:]}"
    probe = sh([str(python), "-c", "import trl, transformers; from trl.experimental.ppo "
                "import PPOTrainer; print(trl.__version__, transformers.__version__)"])
    if probe.returncode != 0:
        return None, f"trl 1.12 installed but its PPO does not import: {probe.stderr[-500:]}"
    return python, f"trl {probe.stdout.split()[0]}, transformers {probe.stdout.split()[1]}"


def run_alignlab(sft: str, rm: str, steps: int, seed: int, out: Path) -> dict[str, Any]:
    """alignlab's PPO through the CLI, as a user runs it."""
    s = SETTINGS
    overrides = [f"hydra.run.dir={out}", "method=ppo", f"model.path={sft}",
                 f"method.reward_model={rm}", f"seed={seed}", f"method.args.max_steps={steps}",
                 "method.args.num_mini_batches=2", "method.args.lr_scheduler_type=constant",
                 "method.args.warmup_steps=0", "method.args.save_strategy=no",
                 "method.args.disable_tqdm=true", "method.args.eval_max_prompts=1",
                 "method.args.eval_samples=1"]
    overrides += [f"method.args.{k}={v}" for k, v in s.items()]
    proc = sh([sys.executable, "-m", "alignlab", *overrides], env=THREADS, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"alignlab PPO failed:\n{proc.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    hist = m["log_history"]
    wall = sum(h["time/step_s"] for h in hist)
    tokens = sum(h["tokens/s"] * h["time/step_s"] for h in hist)
    return {"wall": wall, "tokens": tokens, "peak_memory_mb": m["peak_rss_mib"],
            "model": str(out / "model"), "last": hist[-1]}


def run_trl(python: Path, sft: str, rm: str, steps: int, seed: int, out: Path) -> dict[str, Any]:
    """TRL 1.12's experimental PPOTrainer in the throwaway venv, on the same token ids."""
    from transformers import AutoTokenizer

    from alignlab import data
    from alignlab.ppo.trainer import encode_prompts

    tok = AutoTokenizer.from_pretrained(sft)
    prompts = list(data.load({"name": "toy", "format": "toy", "seed": 42, "toy": TOY},
                             "prompts", "train")["prompt"])
    out.mkdir(parents=True, exist_ok=True)
    spec = {"sft": sft, "rm": rm, "steps": steps, "rollout": ROLLOUT, "seed": seed,
            "settings": SETTINGS, "out": str(out),
            "prompt_ids": encode_prompts(tok, prompts, None)}
    (out / "spec.json").write_text(json.dumps(spec))
    (out / "runner.py").write_text(TRL_RUNNER)
    proc = sh([str(python), str(out / "runner.py"), str(out / "spec.json")],
              env={**THREADS, "PYTHONPATH": ""}, cwd=out)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    result = json.loads((out / "result.json").read_text())
    return {**result, "model": str(out / "model")}


def evaluate(model_dir: str, sft: str, rm: str, seed: int) -> dict[str, float]:
    """Held-out RM score, KL(policy || SFT) and toy judge of a saved policy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab import data, evaluation, generation
    from alignlab.data import toy

    tok = AutoTokenizer.from_pretrained(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ref = AutoModelForCausalLM.from_pretrained(sft).eval()
    from transformers import AutoModelForSequenceClassification

    reward = AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1).eval()
    prompts = list(data.load({"name": "toy", "format": "toy", "seed": 42, "toy": TOY},
                             "prompts", "test")["prompt"])
    responses = generation.generate(policy, tok, prompts, num_samples=3, seed=seed,
                                    max_new_tokens=SETTINGS["response_length"])
    flat_p = [p for p, rs in zip(prompts, responses, strict=True) for _ in rs]
    flat_r = [r for rs in responses for r in rs]
    scores = evaluation.reward_scores(reward, AutoTokenizer.from_pretrained(rm), flat_p, flat_r)
    lp = evaluation.sequence_logprobs(policy, tok, flat_p, flat_r)
    ref_lp = evaluation.sequence_logprobs(ref, tok, flat_p, flat_r)
    return {"reward": sum(scores) / len(scores),
            "kl": sum(a - b for a, b in zip(lp, ref_lp, strict=True)) / len(lp),
            "judge": toy.rule_scores(flat_p, flat_r).score}


TOY = {"n_sft": 4000, "n_pairs": 2000, "n_prompts": 1000, "error_rate": 0.3, "comply_rate": 0.6,
       "refuse_rate": 0.5, "test_fraction": 0.2}
THREADS = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def main() -> None:
    """Parse arguments, run both trainers, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", help="SFT model folder (default: train one with the CLI)")
    parser.add_argument("--rm", help="reward model folder (default: train one with the CLI)")
    parser.add_argument("--steps", type=int, default=30, help="PPO updates of 32 prompts")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--trl-venv", type=Path, help="reuse (or create) this venv for TRL 1.12")
    parser.add_argument("--skip-trl", action="store_true", help="only measure alignlab")
    a = parser.parse_args()
    os.environ.update(THREADS)
    work = Path(tempfile.mkdtemp(prefix="alignlab-ppo-bench-"))
    if not a.sft or not a.rm:
        print("[bench] training SFT and reward model with the CLI defaults ...", flush=True)
        for args in ([f"hydra.run.dir={work}/sft", "method.args.save_strategy=no"],
                     [f"hydra.run.dir={work}/rm", "method=reward", f"model.path={work}/sft/model",
                      "method.args.save_strategy=no"]):
            proc = sh([sys.executable, "-m", "alignlab", *args], env=THREADS, cwd=ROOT)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-3000:])
        a.sft, a.rm = f"{work}/sft/model", f"{work}/rm/model"

    results: dict[str, dict[str, Any]] = {}
    print("[bench] alignlab PPO ...", flush=True)
    results["alignlab"] = run_alignlab(a.sft, a.rm, a.steps, a.seed, work / "alignlab")
    note = "skipped (--skip-trl)"
    if not a.skip_trl:
        print("[bench] preparing a throwaway venv with trl==1.12.* ...", flush=True)
        python, note = make_trl_venv(a.trl_venv or work / "trl-venv")
        if python is not None:
            print(f"[bench] TRL 1.12 PPO ({note}) ...", flush=True)
            try:
                results["TRL 1.12"] = run_trl(python, a.sft, a.rm, a.steps, a.seed, work / "trl")
            except RuntimeError as err:
                note = f"TRL 1.12 PPO failed: {str(err).strip().splitlines()[-1]}"
    if "TRL 1.12" not in results:
        print(f"\n**TRL 1.12 could not be measured: {note}.** alignlab's figures only.\n")
    print("[bench] evaluating the final policies ...", flush=True)
    base = evaluate(a.sft, a.sft, a.rm, a.seed)
    for r in results.values():
        r.update(evaluate(r["model"], a.sft, a.rm, a.seed))

    names = list(results)
    rows = [("updates x prompts", lambda r: f"{a.steps} x {ROLLOUT}"),
            ("tokens/s (rollout+update)", lambda r: f"{r['tokens'] / r['wall']:.0f}"),
            ("train wall time (s)", lambda r: f"{r['wall']:.1f}"),
            ("peak memory (RSS, MiB)", lambda r: f"{r['peak_memory_mb']:.0f}"),
            (f"held-out RM score (SFT {base['reward']:.2f})", lambda r: f"{r['reward']:.2f}"),
            ("held-out KL to SFT (nats/response)", lambda r: f"{r['kl']:.2f}"),
            (f"toy judge (SFT {base['judge']:.3f})", lambda r: f"{r['judge']:.3f}")]
    print(f"\nPPO on llama-small / toy world, CPU, 1 thread per process; TRL: {note}\n")
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, fmt in rows:
        print(f"| {label} | " + " | ".join(fmt(results[n]) for n in names) + " |")
    if "TRL 1.12" in results:
        ours, theirs = results["alignlab"], results["TRL 1.12"]
        speed = (ours["tokens"] / ours["wall"]) / (theirs["tokens"] / theirs["wall"])
        print(f"\nthroughput ratio alignlab / TRL 1.12: {speed:.2f}x; peak memory ratio: "
              f"{ours['peak_memory_mb'] / theirs['peak_memory_mb']:.2f}")
    print(f"\n(work dir: {work}; {time.strftime('%Y-%m-%d %H:%M')})")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
