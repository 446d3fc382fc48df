"""Benchmark alignlab's PPO against TRL 1.12's experimental PPO (the last TRL that had one).

Same policy, same reward model, same prompts, same rollout and PPO settings, full fine-tuning or
LoRA (``--lora``: r 16 on all linear layers of the policy in both); each trainer runs in its own
fresh process so peak memory is its own. Both final policies are then scored by the same
held-out evaluation (3 samples per prompt at T=0.7): reward-model score, KL to the starting
policy, and the toy judge. Prints a markdown table.

``--model llama-small`` (the default) trains an SFT model and a reward model with the CLI first;
``--model smollm2-135m`` starts from the instruct model itself and trains only the reward model
(``--rm-steps`` full fine-tuning steps on toy pairs). Either can be given with ``--sft/--rm``.

A fair baseline needs two settings that TRL 1.12's PPO depends on (found when its run *lowered*
the held-out reward-model score, 1.50 -> -0.05, while alignlab's rose):

- TRL 1.12 reads the reward at the response's last non-pad token, which is its stop token
  (EOS), whereas a reward model trained by TRL's RewardTrainer on chat data reads the last token
  of the rendered chat template; ChatML templates put a newline after ``<|im_end|>``. Read one
  token early, the score head sees a position it was never trained on. So the base model's copy
  used here renders a chat that *ends* at its EOS token (the trailing newline dropped), and both
  trainers' reward model is trained on it: both read the same token.
- TRL 1.12 builds its attention mask as ``ids != pad_token_id``. When the pad token is the EOS
  token (SmolLM2: both ``<|im_end|>``), every end-of-turn token of the prompt is masked out as
  padding. The copy gets a pad token that is not an EOS token (``<|endoftext|>``).

TRL 1.12 is installed only into a throwaway virtual environment in a temp dir (``--trl-venv`` to
reuse one); it is never a dependency of alignlab. If it cannot be installed, the script says so
and still reports alignlab's figures.

    .venv/bin/python benchmarks/ppo.py                                # llama-small
    .venv/bin/python benchmarks/ppo.py --model smollm2-135m --steps 4 [--lora]
    .venv/bin/python benchmarks/ppo.py --sft <sft run>/model --rm <reward run>/model
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
peft_config = None
if cfg["lora"]:  # LoRA on the policy; TRL then takes the reference from the adapter-less base
    from peft import LoraConfig
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                             target_modules="all-linear")
    ref = None
trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref,
                     reward_model=reward, value_model=value, train_dataset=train,
                     eval_dataset=train.select(range(8)), peft_config=peft_config)
start = time.time()
trainer.train()
wall = time.time() - start
policy = trainer.model.policy
if cfg["lora"]:
    policy = policy.merge_and_unload()
policy.save_pretrained(cfg["out"] + "/model")
tok.save_pretrained(cfg["out"] + "/model")
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
json.dump({"wall": wall, "tokens": counted["tokens"], "peak_memory_mb": rss,
           "log_history": trainer.state.log_history}, open(cfg["out"] + "/result.json", "w"))
'''


def sh(cmd: list[str], env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess:
    """Run a command, capturing output."""
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          **kw)


def alignlab_cli(*args: str) -> None:
    """``python -m alignlab ARGS`` (exits with its stderr if it fails)."""
    proc = sh([sys.executable, "-m", "alignlab", *args], env=THREADS, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])


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


def run_alignlab(sft: str, rm: str, steps: int, seed: int, out: Path,
                 lora: bool) -> dict[str, Any]:
    """alignlab's PPO through the CLI, as a user runs it."""
    s = SETTINGS
    overrides = [f"hydra.run.dir={out}", "method=ppo", f"model.path={sft}",
                 f"model.lora={'true' if lora else 'false'}", "model.dtype=float32",
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


def run_trl(python: Path, sft: str, rm: str, steps: int, seed: int, out: Path,
            lora: bool) -> dict[str, Any]:
    """TRL 1.12's experimental PPOTrainer in the throwaway venv, on the same token ids."""
    from transformers import AutoTokenizer

    from alignlab import data
    from alignlab.ppo.trainer import encode_prompts

    tok = AutoTokenizer.from_pretrained(sft)
    prompts = list(data.load({"name": "toy", "format": "toy", "seed": 42, "toy": TOY},
                             "prompts", "train")["prompt"])
    out.mkdir(parents=True, exist_ok=True)
    spec = {"sft": sft, "rm": rm, "steps": steps, "rollout": ROLLOUT, "seed": seed, "lora": lora,
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


def evaluate(model_dir: str, sft: str, rm: str, seed: int,
             max_prompts: int | None = None) -> dict[str, float]:
    """Held-out RM score, KL(policy || SFT) and toy judge of a saved policy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab import data, evaluation, generation
    from alignlab.data import toy

    tok = AutoTokenizer.from_pretrained(model_dir)
    if (Path(model_dir) / "adapter_config.json").exists():  # alignlab's LoRA run
        from peft import AutoPeftModelForCausalLM

        policy = AutoPeftModelForCausalLM.from_pretrained(model_dir).merge_and_unload().eval()
    else:
        policy = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ref = AutoModelForCausalLM.from_pretrained(sft).eval()
    from transformers import AutoModelForSequenceClassification

    reward = AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1).eval()
    prompts = list(data.load({"name": "toy", "format": "toy", "seed": 42, "toy": TOY},
                             "prompts", "test")["prompt"])[:max_prompts]
    temperature = SETTINGS["temperature"]
    responses, ids = generation.generate(policy, tok, prompts, num_samples=3, seed=seed,
                                         temperature=temperature, return_ids=True,
                                         max_new_tokens=SETTINGS["response_length"])
    flat_p = [p for p, rs in zip(prompts, responses, strict=True) for _ in rs]
    flat_r = [r for rs in responses for r in rs]
    flat_ids = [x for rows in ids for x in rows]
    scores = evaluation.reward_scores(reward, AutoTokenizer.from_pretrained(rm), flat_p, flat_r)
    kl = evaluation.kl_to_reference(policy, ref, tok, flat_p, flat_ids, temperature=temperature)
    return {"reward": sum(scores) / len(scores), "kl": kl["kl"],
            "judge": toy.rule_scores(flat_p, flat_r).score}


def fair_copy(src: str, dst: Path) -> str:
    """A copy of model folder ``src`` whose chat ends at its EOS token and whose pad token is
    not an EOS token: the two settings TRL 1.12's PPO needs (see the module docstring)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab.ppo.trainer import eos_token_ids

    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype="float32")
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    # The pad must be neither an EOS nor a token a chat uses (<|im_start|> is a special token
    # too, and TRL 1.12 would mask it in every prompt).
    rendered = tok(tok.apply_chat_template(chat, tokenize=False), add_special_tokens=False)
    used = set(eos_token_ids(tok, model)) | set(rendered["input_ids"])
    if tok.pad_token_id is None or tok.pad_token_id in used:
        tok.pad_token = next(t for t in tok.all_special_tokens
                             if tok.convert_tokens_to_ids(t) not in used)
    model.config.pad_token_id = model.generation_config.pad_token_id = tok.pad_token_id
    # Render as before, then drop what follows the last EOS of a finished chat (a newline).
    tok.chat_template = ("{%- set rendered %}" + tok.chat_template + "{%- endset %}"
                         "{%- if add_generation_prompt %}{{- rendered }}"
                         "{%- else %}{{- rendered.rstrip() }}{%- endif %}")
    assert tok.apply_chat_template(chat, tokenize=False).endswith(tok.eos_token), "template"
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return str(dst)


TOY = {"n_sft": 4000, "n_pairs": 2000, "n_prompts": 1000, "error_rate": 0.3, "comply_rate": 0.6,
       "refuse_rate": 0.5, "test_fraction": 0.2}
THREADS = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def main() -> None:
    """Parse arguments, run both trainers, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-small",
                        help="a model preset (conf/model/<name>.yaml) or a model.path")
    parser.add_argument("--sft", help="starting policy folder (default: llama-small: an SFT "
                        "run with the CLI's defaults; other models: the model itself)")
    parser.add_argument("--rm", help="reward model folder (default: train one with the CLI)")
    parser.add_argument("--rm-steps", type=int, default=60,
                        help="reward-model steps when training one for a model other than "
                        "llama-small")
    parser.add_argument("--lora", action="store_true", help="LoRA on the policy (both)")
    parser.add_argument("--steps", type=int, default=30, help="PPO updates of 32 prompts")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each trainer, interleaved; the median is reported")
    parser.add_argument("--eval-prompts", type=int, default=None,
                        help="held-out prompts to evaluate (default: all 200)")
    parser.add_argument("--trl-venv", type=Path, help="reuse (or create) this venv for TRL 1.12")
    parser.add_argument("--skip-trl", action="store_true", help="only measure alignlab")
    a = parser.parse_args()
    os.environ.update(THREADS)
    work = Path(tempfile.mkdtemp(prefix="alignlab-ppo-bench-"))
    if not a.sft or not a.rm:
        from alignlab import cli, config, models

        config.register()
        presets = {p.stem for p in (config.conf_dir() / "model").glob("*.yaml")}
        model_arg = f"model={a.model}" if a.model in presets else f"model.path={a.model}"
        cfg = cli.compose([model_arg])
        start = str(models.resolve_path(cfg.model, cfg.seed))
        if a.model == "llama-small" and not a.sft:
            print("[bench] training SFT with the CLI defaults ...", flush=True)
            alignlab_cli(f"hydra.run.dir={work}/sft", "method.args.save_strategy=no",
                         "quick_eval=false")
            start = f"{work}/sft/model"
        a.sft = fair_copy(a.sft or start, work / "base")
        if not a.rm:
            print("[bench] training the reward model ...", flush=True)
            steps = [] if a.model == "llama-small" else [
                f"method.args.max_steps={a.rm_steps}", "model.train_args.default.max_length=256"]
            alignlab_cli(f"hydra.run.dir={work}/rm", "method=reward", model_arg,
                         f"model.path={a.sft}", "model.lora=false", "model.dtype=float32",
                         "method.args.save_strategy=no", *steps)
        a.rm = a.rm or f"{work}/rm/model"

    results: dict[str, dict[str, Any]] = {}
    python, note = None, "skipped (--skip-trl)"
    if not a.skip_trl:
        print("[bench] preparing a throwaway venv with trl==1.12.* ...", flush=True)
        python, note = make_trl_venv(a.trl_venv or work / "trl-venv")
    runs: dict[str, list[dict[str, Any]]] = {"alignlab": [], "TRL 1.12": []}
    for i in range(a.repeats):  # interleaved, so that drift in machine load hits both
        print(f"[bench] alignlab PPO ({i + 1}/{a.repeats}) ...", flush=True)
        runs["alignlab"].append(run_alignlab(a.sft, a.rm, a.steps, a.seed,
                                             work / f"alignlab-{i}", a.lora))
        if python is not None:
            print(f"[bench] TRL 1.12 PPO ({note}; {i + 1}/{a.repeats}) ...", flush=True)
            try:
                runs["TRL 1.12"].append(run_trl(python, a.sft, a.rm, a.steps, a.seed,
                                                work / f"trl-{i}", a.lora))
            except RuntimeError as err:
                note = f"TRL 1.12 PPO failed: {str(err).strip().splitlines()[-1]}"
                python = None
    for name, done in runs.items():
        if done:  # the median run by throughput; its model is the one evaluated
            done.sort(key=lambda r: r["tokens"] / r["wall"])
            results[name] = done[len(done) // 2]
    if "TRL 1.12" not in results:
        print(f"\n**TRL 1.12 could not be measured: {note}.** alignlab's figures only.\n")
    print("[bench] evaluating the final policies ...", flush=True)
    base = evaluate(a.sft, a.sft, a.rm, a.seed, a.eval_prompts)
    for r in results.values():
        r.update(evaluate(r["model"], a.sft, a.rm, a.seed, a.eval_prompts))

    names = list(results)
    rows = [("updates x prompts", lambda r: f"{a.steps} x {ROLLOUT}"),
            ("tokens/s (rollout+update)", lambda r: f"{r['tokens'] / r['wall']:.0f}"),
            ("train wall time (s)", lambda r: f"{r['wall']:.1f}"),
            ("peak memory (RSS, MiB)", lambda r: f"{r['peak_memory_mb']:.0f}"),
            (f"held-out RM score (SFT {base['reward']:.2f})", lambda r: f"{r['reward']:.2f}"),
            ("held-out KL to SFT (nats/response)", lambda r: f"{r['kl']:.2f}"),
            (f"toy judge (SFT {base['judge']:.3f})", lambda r: f"{r['judge']:.3f}")]
    print(f"\nPPO on {a.model} ({'LoRA' if a.lora else 'full fine-tuning'}), toy-world "
          f"prompts, CPU, 1 thread per process, median of {a.repeats} interleaved run(s); TRL: "
          f"{note}; {time.strftime('%Y-%m-%d')}\n")
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
