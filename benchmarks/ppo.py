"""Benchmark alignlab's PPO against TRL 1.12's experimental PPO (the last TRL that had one).

Same policy, same reward model, same prompts, same rollout and PPO settings, full fine-tuning or
LoRA (``--lora``: r 16 on all linear layers of the policy in both); each trainer runs in its own
fresh process so peak memory is its own. Both final policies are then scored by the same
held-out evaluation (3 samples per prompt at T=0.7): reward-model score, KL to the starting
policy, and the toy judge. Prints markdown tables: throughput and memory (the median of
``--repeats`` interleaved runs), the time of each phase per update (generate, the no-grad
forwards of policy/critic/reference, the reward model, the update) beside a *floor* measured in
the same run (the bare model's ``generate``, one no-grad forward and ``num_ppo_epochs``
forward+backward passes on the same token counts in a plain torch loop), and with several
``--kl-coefs`` the held-out RM score and toy judge against the KL each trainer reached.

``--model llama-small`` (the default) trains an SFT model and a reward model with the CLI first;
``--size 256x5`` does the same for a Llama of another hidden size and depth built from
llama-small's config; ``--model smollm2-135m`` starts from the instruct model itself and trains
only the reward model (``--rm-steps`` full fine-tuning steps on toy pairs). Either can be given
with ``--sft/--rm``. ``--critic`` picks alignlab's ``method.args.critic``.

A fair baseline needs three settings that TRL 1.12's PPO depends on (the first two found when
its run *lowered* the held-out reward-model score, 1.50 -> -0.05, while alignlab's rose):

- TRL 1.12 reads the reward at the response's last non-pad token, which is its stop token
  (EOS), whereas a reward model trained by TRL's RewardTrainer on chat data reads the last token
  of the rendered chat template; ChatML templates put a newline after ``<|im_end|>``. Read one
  token early, the score head sees a position it was never trained on. So the base model's copy
  used here renders a chat that *ends* at its EOS token (the trailing newline dropped), and both
  trainers' reward model is trained on it: both read the same token.
- TRL 1.12 builds its attention mask as ``ids != pad_token_id``. When the pad token is the EOS
  token (SmolLM2: both ``<|im_end|>``), every end-of-turn token of the prompt is masked out as
  padding. The copy gets a pad token that is not an EOS token (``<|endoftext|>``).
- TRL 1.12 steps its optimizer once per PPO epoch whatever ``num_mini_batches`` says (see
  SETTINGS), so both run one mini batch per epoch.

TRL 1.12 is installed only into a throwaway virtual environment in a temp dir (``--trl-venv`` to
reuse one); it is never a dependency of alignlab. If it cannot be installed, the script says so
and still reports alignlab's figures.

    .venv/bin/python benchmarks/ppo.py --repeats 3 --kl-coefs 0.2 0.05 0.5   # llama-small
    .venv/bin/python benchmarks/ppo.py --size 256x5 --repeats 3
    .venv/bin/python benchmarks/ppo.py --model smollm2-135m --steps 2 --lora --critic reward
    .venv/bin/python benchmarks/ppo.py --sft <sft run>/model --rm <reward run>/model
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# The shared setup: 32 prompts per update, 2 PPO epochs of one optimizer step each (2 micro
# batches of 16, gradients accumulated), k1 KL 0.2. One mini batch per epoch because that is
# what TRL 1.12 does whatever num_mini_batches says: its rollout batch is micro batch x
# gradient_accumulation_steps, and accelerate's accumulate() steps the optimizer once every
# gradient_accumulation_steps micro batches, i.e. once per epoch. (Until 2026-12-04 alignlab
# ran num_mini_batches=2 here: twice TRL's optimizer steps, and so a policy that moved further.)
SETTINGS = {"learning_rate": 1e-4, "per_device_train_batch_size": 16,
            "gradient_accumulation_steps": 2, "num_mini_batches": 1, "num_ppo_epochs": 2,
            "response_length": 32, "temperature": 0.7, "kl_coef": 0.2, "kl_estimator": "k1",
            "cliprange": 0.2, "cliprange_value": 0.2, "vf_coef": 0.1, "gamma": 1.0, "lam": 0.95,
            "missing_eos_penalty": 1.0, "local_rollout_forward_batch_size": 64,
            "adam_epsilon": 1e-8, "max_grad_norm": 1.0}
ROLLOUT = 32  # prompts per update, per process
assert SETTINGS["per_device_train_batch_size"] * SETTINGS[
    "gradient_accumulation_steps"] * SETTINGS["num_mini_batches"] == ROLLOUT

TRL_RUNNER = r'''
import json, resource, sys, time
import torch
from datasets import Dataset
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoTokenizer)
import trl.experimental.ppo.ppo_trainer as ppo_module
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
phases = {"generate": 0.0, "forwards": 0.0, "score": 0.0}


def timed(fn, phase):  # seconds of the rollout's no-grad calls (the update's have gradients)
    def wrapper(*args, **kwargs):
        if torch.is_grad_enabled():
            return fn(*args, **kwargs)
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            phases[phase(args)] += time.perf_counter() - start
    return wrapper


ppo_module.batch_generation = timed(ppo_module.batch_generation, lambda a: "generate")
ppo_module.forward = timed(ppo_module.forward, lambda a: "forwards")  # the reference
ppo_module.get_reward = timed(ppo_module.get_reward,  # the value model, then the reward model
                              lambda a: "score" if a[0] is reward else "forwards")
s = cfg["settings"]
args = PPOConfig(output_dir=cfg["out"],
                 per_device_train_batch_size=s["per_device_train_batch_size"],
                 gradient_accumulation_steps=s["gradient_accumulation_steps"],
                 num_mini_batches=s["num_mini_batches"],
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
json.dump({"wall": wall, "tokens": counted["tokens"], "peak_memory_mb": rss, "phases": phases,
           "log_history": trainer.state.log_history}, open(cfg["out"] + "/result.json", "w"))
'''

# The floor: what the same token counts cost the bare model in a plain torch loop, per update:
# generate the rollout's responses, one no-grad forward over them (a reference pass), and
# num_ppo_epochs forward+backward passes of the policy in the same micro batches (with LoRA,
# gradients reach the inputs through the frozen weights, as an adapter's would; no optimizer).
FLOOR_RUNNER = r'''
import json, sys, time
import torch
from transformers import AutoModelForCausalLM

cfg = json.loads(open(sys.argv[1]).read())
s, rollout, pad = cfg["settings"], cfg["rollout"], cfg["pad"]
model = AutoModelForCausalLM.from_pretrained(cfg["sft"], dtype=torch.float32)
model.requires_grad_(not cfg["lora"])
length = cfg["length"]  # the run's mean response length: the same token counts
out = {"generate": 0.0, "forwards": 0.0, "update": 0.0}
torch.manual_seed(cfg["seed"])
for step in range(cfg["updates"]):
    rows = cfg["prompt_ids"][step * rollout:(step + 1) * rollout]
    width = max(map(len, rows))
    query = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    start = time.perf_counter()
    with torch.no_grad():  # every row to the full length: what a batch does unless all stop
        seq = model.generate(input_ids=query, attention_mask=mask, do_sample=True, top_k=0,
                             top_p=1.0, temperature=s["temperature"], max_new_tokens=length,
                             min_new_tokens=length, pad_token_id=pad)
    out["generate"] += time.perf_counter() - start
    mask = torch.cat([mask, torch.ones(len(rows), seq.shape[1] - width, dtype=mask.dtype)], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    start = time.perf_counter()
    with torch.no_grad():
        model(input_ids=seq, attention_mask=mask, position_ids=positions, use_cache=False,
              logits_to_keep=length + 1)
    out["forwards"] += time.perf_counter() - start
    start = time.perf_counter()
    micro = s["per_device_train_batch_size"]
    for _ in range(s["num_ppo_epochs"]):
        for i in range(0, len(rows), micro):
            embeds = model.get_input_embeddings()(seq[i:i + micro])
            if cfg["lora"]:
                embeds = embeds.detach().requires_grad_()
            logits = model(inputs_embeds=embeds, attention_mask=mask[i:i + micro],
                           position_ids=positions[i:i + micro], use_cache=False,
                           logits_to_keep=length + 1).logits
            logits.log_softmax(-1).mean().backward()
        model.zero_grad(set_to_none=True)
    out["update"] += time.perf_counter() - start
json.dump({**{k: v / cfg["updates"] for k, v in out.items()}, "length": length},
          open(cfg["out"], "w"))
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
    """A throwaway venv with torch 2.13, trl 1.12 and peft (its LoRA): (its python, or None,
    and a note)."""
    python = where / "bin" / "python"
    if python.exists() and sh([str(python), "-c", "import trl.experimental.ppo, peft"]
                              ).returncode == 0:
        return python, "reused"
    made = sh([sys.executable, "-m", "venv", str(where)])
    if made.returncode != 0:
        return None, f"could not create a venv: {made.stderr.strip()[-300:]}"
    pip = sh([str(python), "-m", "pip", "install", "-q", "torch==2.13.0", "trl==1.12.*", "peft"],
             timeout=1800)
    if pip.returncode != 0:
        return None, f"pip install trl==1.12.* failed: {pip.stderr.strip()[-500:]}"
    probe = sh([str(python), "-c", "import trl, transformers; from trl.experimental.ppo "
                "import PPOTrainer; print(trl.__version__, transformers.__version__)"])
    if probe.returncode != 0:
        return None, f"trl 1.12 installed but its PPO does not import: {probe.stderr[-500:]}"
    return python, f"trl {probe.stdout.split()[0]}, transformers {probe.stdout.split()[1]}"


PHASES = ("generate", "forwards", "score", "update")


def run_alignlab(sft: str, rm: str, steps: int, seed: int, out: Path, lora: bool,
                 settings: dict[str, Any], critic: str | None) -> dict[str, Any]:
    """alignlab's PPO through the CLI, as a user runs it (``critic``: None keeps the default)."""
    s = settings
    load = os.getloadavg()[0]
    overrides = [f"hydra.run.dir={out}", "method=ppo", f"model.path={sft}",
                 f"model.lora={'true' if lora else 'false'}", "model.dtype=float32",
                 f"method.reward_model={rm}", f"seed={seed}", f"method.args.max_steps={steps}",
                 "method.args.lr_scheduler_type=constant",
                 "method.args.warmup_steps=0", "method.args.save_strategy=no",
                 "method.args.disable_tqdm=true", "method.args.eval_max_prompts=1",
                 "method.args.eval_samples=1"]
    overrides += [f"method.args.{k}={v}" for k, v in s.items()]
    overrides += [f"method.args.critic={critic}"] if critic else []
    proc = sh([sys.executable, "-m", "alignlab", *overrides], env=THREADS, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"alignlab PPO failed:\n{proc.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    hist = m["log_history"]
    wall = sum(h["time/step_s"] for h in hist)
    tokens = sum(h["tokens/s"] * h["time/step_s"] for h in hist)
    phases = {p: sum(h[f"time/{p}_s"] for h in hist) for p in PHASES[:3]}
    phases["update"] = wall - sum(phases.values())  # the update and the rest, as for TRL
    return {"wall": wall, "tokens": tokens, "peak_memory_mb": m["peak_rss_mib"],
            "model": str(out / "model"), "log_history": hist, "phases": phases,
            "load": (load, os.getloadavg()[0])}


def prompt_ids(sft: str) -> list[list[int]]:
    """The toy world's training prompts as the policy's chat-template token ids."""
    from transformers import AutoTokenizer

    from alignlab import data
    from alignlab.ppo.trainer import encode_prompts

    tok = AutoTokenizer.from_pretrained(sft)
    prompts = list(data.load({"name": "toy", "format": "toy", "seed": 42, "toy": TOY},
                             "prompts", "train")["prompt"])
    return encode_prompts(tok, prompts, None)


def run_trl(python: Path, sft: str, rm: str, steps: int, seed: int, out: Path, lora: bool,
            settings: dict[str, Any]) -> dict[str, Any]:
    """TRL 1.12's experimental PPOTrainer in the throwaway venv, on the same token ids."""
    load = os.getloadavg()[0]
    out.mkdir(parents=True, exist_ok=True)
    spec = {"sft": sft, "rm": rm, "steps": steps, "rollout": ROLLOUT, "seed": seed, "lora": lora,
            "settings": settings, "out": str(out), "prompt_ids": prompt_ids(sft)}
    (out / "spec.json").write_text(json.dumps(spec))
    (out / "runner.py").write_text(TRL_RUNNER)
    proc = sh([str(python), str(out / "runner.py"), str(out / "spec.json")],
              env={**THREADS, "PYTHONPATH": ""}, cwd=out)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    result = json.loads((out / "result.json").read_text())
    result["phases"]["update"] = result["wall"] - sum(result["phases"].values())
    return {**result, "model": str(out / "model"), "load": (load, os.getloadavg()[0])}


def measure_floor(sft: str, seed: int, lora: bool, work: Path, length: int,
                  updates: int = 2) -> dict:
    """Seconds per update of the bare model on the same token counts (FLOOR_RUNNER):
    responses of ``length`` tokens (the run's mean)."""
    from transformers import AutoTokenizer

    spec = {"sft": sft, "seed": seed, "lora": lora, "settings": SETTINGS, "rollout": ROLLOUT,
            "length": max(1, length),
            "updates": updates, "prompt_ids": prompt_ids(sft),
            "pad": AutoTokenizer.from_pretrained(sft).pad_token_id, "out": str(work / "floor.json")}
    (work / "floor-spec.json").write_text(json.dumps(spec))
    (work / "floor.py").write_text(FLOOR_RUNNER)
    proc = sh([sys.executable, str(work / "floor.py"), str(work / "floor-spec.json")],
              env=THREADS, cwd=work)
    if proc.returncode != 0:
        raise SystemExit(f"the floor measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads((work / "floor.json").read_text())


def custom_model(size: str, work: Path) -> str:
    """A Llama built from llama-small's config with another hidden size and depth
    (``size`` = HIDDENxLAYERS, e.g. 256x5), random init, saved to ``work/custom``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from alignlab.models import ASSETS

    hidden, layers = (int(x) for x in size.lower().split("x"))
    config = AutoConfig.from_pretrained(ASSETS / "llama-small")
    config.hidden_size, config.num_hidden_layers = hidden, layers
    config.intermediate_size, config.num_attention_heads = 4 * hidden, max(1, hidden // 32)
    config.num_key_value_heads = config.num_attention_heads
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(work / "custom")
    AutoTokenizer.from_pretrained(ASSETS / "llama-small").save_pretrained(work / "custom")
    n = sum(p.numel() for p in model.parameters())
    print(f"[bench] custom model {size}: {n / 1e6:.1f}M parameters", flush=True)
    return str(work / "custom")


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

    from alignlab.ppo.networks import eos_token_ids

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


def median_run(done: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by throughput (its model is the one evaluated)."""
    done = sorted(done, key=lambda r: r["tokens"] / r["wall"])
    return {**done[len(done) // 2], "all": done}


def phase_table(results: dict[str, dict[str, Any]], floor: dict[str, float], steps: int) -> None:
    """Seconds per update in each phase, its share of the update, and its ratio to the floor."""
    names = list(results)
    print(f"\n| phase (s per update; floor: {floor['length']} new tokens) | "
          + " | ".join(names) + " | floor (bare model) |")
    print("|---|" + "---|" * (len(names) + 1))
    floors = {"generate": floor["generate"], "forwards": floor["forwards"],
              "update": floor["update"]}
    labels = {"generate": "generate", "forwards": "no-grad forwards (policy/critic/reference)",
              "score": "reward model", "update": "update (and the rest)"}
    for phase in PHASES:
        cells = []
        for name in names:
            r = results[name]
            sec = r["phases"][phase] / steps
            ratio = f", {sec / floors[phase]:.1f}x floor" if phase in floors else ""
            cells.append(f"{sec:.2f} ({100 * r['phases'][phase] / r['wall']:.0f} %{ratio})")
        fl = f"{floors[phase]:.2f}" if phase in floors else "-"
        print(f"| {labels[phase]} | " + " | ".join(cells) + f" | {fl} |")
    total = sum(floors.values())
    print("| total | " + " | ".join(
        f"{results[n]['wall'] / steps:.2f} ({results[n]['wall'] / steps / total:.1f}x floor)"
        for n in names) + f" | {total:.2f} |")


def main() -> None:
    """Parse arguments, run both trainers, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-small",
                        help="a model preset (conf/model/<name>.yaml) or a model.path")
    parser.add_argument("--size", help="HIDDENxLAYERS: a Llama of another size built from "
                        "llama-small's config, SFT'd with llama-small's CLI defaults (e.g. 256x5)")
    parser.add_argument("--sft", help="starting policy folder (default: llama-small: an SFT "
                        "run with the CLI's defaults; other models: the model itself)")
    parser.add_argument("--rm", help="reward model folder (default: train one with the CLI)")
    parser.add_argument("--rm-steps", type=int, default=60,
                        help="reward-model steps when training one for a model other than "
                        "llama-small")
    parser.add_argument("--lora", action="store_true", help="LoRA on the policy (both)")
    parser.add_argument("--critic", choices=("separate", "reward", "shared"),
                        help="alignlab's method.args.critic (default: alignlab's default)")
    parser.add_argument("--steps", type=int, default=30, help="PPO updates of 32 prompts")
    parser.add_argument("--learning-rate", type=float, default=SETTINGS["learning_rate"],
                        help="both trainers' learning rate")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each trainer, interleaved; the median is reported")
    parser.add_argument("--kl-coefs", type=float, nargs="+", default=[SETTINGS["kl_coef"]],
                        help="KL coefficients: the first one is the throughput run (with "
                        "--repeats), each other one run once per trainer for the KL frontier")
    parser.add_argument("--eval-prompts", type=int, default=None,
                        help="held-out prompts to evaluate (default: all 200)")
    parser.add_argument("--trl-venv", type=Path, help="reuse (or create) this venv for TRL 1.12")
    parser.add_argument("--skip-trl", action="store_true", help="only measure alignlab")
    parser.add_argument("--no-floor", action="store_true", help="skip the bare-model floor")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of each process (runs never overlap; 1 on a "
                        "shared machine)")
    a = parser.parse_args()
    THREADS["OMP_NUM_THREADS"] = str(a.threads)
    os.environ.update(THREADS)
    work = Path(tempfile.mkdtemp(prefix="alignlab-ppo-bench-"))
    print(f"[bench] work dir {work}; load average {os.getloadavg()[0]:.2f}", flush=True)
    if not a.sft or not a.rm:
        from alignlab import cli, config, models

        config.register()
        presets = {p.stem for p in (config.conf_dir() / "model").glob("*.yaml")}
        small = a.model == "llama-small" or a.size
        if a.size:  # llama-small's training settings on a model of another size
            a.model = "llama-small"
            path_arg = [f"model.path={custom_model(a.size, work)}"]
        else:
            path_arg = []
        model_arg = f"model={a.model}" if a.model in presets else f"model.path={a.model}"
        cfg = cli.compose([model_arg, *path_arg])
        start = str(models.resolve_path(cfg.model, cfg.seed))
        if small and not a.sft:
            print("[bench] training SFT with the CLI defaults ...", flush=True)
            alignlab_cli(f"hydra.run.dir={work}/sft", model_arg, *path_arg,
                         "method.args.save_strategy=no", "quick_eval=false")
            start = f"{work}/sft/model"
        a.sft = fair_copy(a.sft or start, work / "base")
        if not a.rm:
            print("[bench] training the reward model ...", flush=True)
            steps = [] if small else [
                f"method.args.max_steps={a.rm_steps}", "model.train_args.default.max_length=256"]
            alignlab_cli(f"hydra.run.dir={work}/rm", "method=reward", model_arg,
                         f"model.path={a.sft}", "model.lora=false", "model.dtype=float32",
                         "method.args.save_strategy=no", *steps)
        a.rm = a.rm or f"{work}/rm/model"
        if a.size:
            a.model = f"custom {a.size}"

    python, note = None, "skipped (--skip-trl)"
    if not a.skip_trl:
        print("[bench] preparing a throwaway venv with trl==1.12.* ...", flush=True)
        python, note = make_trl_venv(a.trl_venv or work / "trl-venv")
    frontier: list[tuple[float, str, dict[str, Any]]] = []
    results: dict[str, dict[str, Any]] = {}
    for c, coef in enumerate(a.kl_coefs):
        settings = {**SETTINGS, "kl_coef": coef, "learning_rate": a.learning_rate}
        runs: dict[str, list[dict[str, Any]]] = {"alignlab": [], "TRL 1.12": []}
        for i in range(a.repeats if c == 0 else 1):  # interleaved: load drift hits both
            print(f"[bench] alignlab PPO (kl_coef {coef}, {i + 1}) ...", flush=True)
            runs["alignlab"].append(run_alignlab(a.sft, a.rm, a.steps, a.seed,
                                                 work / f"alignlab-{c}-{i}", a.lora, settings,
                                                 a.critic))
            if python is not None:
                print(f"[bench] TRL 1.12 PPO ({note}; kl_coef {coef}, {i + 1}) ...", flush=True)
                try:
                    runs["TRL 1.12"].append(run_trl(python, a.sft, a.rm, a.steps, a.seed,
                                                    work / f"trl-{c}-{i}", a.lora, settings))
                except RuntimeError as err:
                    note = f"TRL 1.12 PPO failed: {str(err).strip().splitlines()[-1]}"
                    python = None
        for name, done in runs.items():
            if done:
                frontier.append((coef, name, median_run(done)))
                if c == 0:
                    results[name] = frontier[-1][2]
    if "TRL 1.12" not in results:
        print(f"\n**TRL 1.12 could not be measured: {note}.** alignlab's figures only.\n")
    length = round(statistics.mean(h["response/length"]
                                   for h in results["alignlab"]["log_history"]))
    floor = None if a.no_floor else measure_floor(a.sft, a.seed, a.lora, work, length)
    print("[bench] evaluating the final policies ...", flush=True)
    base = evaluate(a.sft, a.sft, a.rm, a.seed, a.eval_prompts)
    for _, _, r in frontier:
        r.update(evaluate(r["model"], a.sft, a.rm, a.seed, a.eval_prompts))

    names = list(results)
    loads = [x for r in results.values() for run in r["all"] for x in run["load"]]
    rows = [("updates x prompts", lambda r: f"{a.steps} x {ROLLOUT}"),
            ("tokens/s (rollout+update)", lambda r: f"{r['tokens'] / r['wall']:.1f}"),
            ("tokens/s of each run", lambda r: ", ".join(
                f"{x['tokens'] / x['wall']:.1f}" for x in r["all"])),
            ("train wall time (s)", lambda r: f"{r['wall']:.1f}"),
            ("peak memory (RSS, MiB)", lambda r: f"{r['peak_memory_mb']:.0f}"),
            (f"held-out RM score (SFT {base['reward']:.2f})", lambda r: f"{r['reward']:.2f}"),
            ("held-out KL to SFT (nats/response)", lambda r: f"{r['kl']:.2f}"),
            (f"toy judge (SFT {base['judge']:.3f})", lambda r: f"{r['judge']:.3f}")]
    critic = a.critic or "default"
    print(f"\nPPO on {a.model} ({'LoRA' if a.lora else 'full fine-tuning'}; alignlab critic: "
          f"{critic}), kl_coef {a.kl_coefs[0]}, toy-world prompts, CPU, {a.threads} thread(s) "
          "per process, "
          f"median of {a.repeats} interleaved run(s); TRL: {note}; load average "
          f"{min(loads):.1f}-{max(loads):.1f}; {time.strftime('%Y-%m-%d')}\n")
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, fmt in rows:
        print(f"| {label} | " + " | ".join(fmt(results[n]) for n in names) + " |")
    if "TRL 1.12" in results:
        ours, theirs = results["alignlab"], results["TRL 1.12"]
        speed = (ours["tokens"] / ours["wall"]) / (theirs["tokens"] / theirs["wall"])
        print(f"\nthroughput ratio alignlab / TRL 1.12: {speed:.2f}x; peak memory ratio: "
              f"{ours['peak_memory_mb'] / theirs['peak_memory_mb']:.2f}")
    if floor is not None:
        phase_table(results, floor, a.steps)
    if len(a.kl_coefs) > 1:
        print("\n| kl_coef | trainer | held-out KL (nats) | RM score | toy judge |")
        print("|---|---|---|---|---|")
        for coef, name, r in sorted(frontier, key=lambda x: (x[0], x[1])):
            print(f"| {coef} | {name} | {r['kl']:.2f} | {r['reward']:.2f} | {r['judge']:.3f} |")
    print(f"\n(work dir: {work}; --sft {a.sft} --rm {a.rm}; {time.strftime('%Y-%m-%d %H:%M')})")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
