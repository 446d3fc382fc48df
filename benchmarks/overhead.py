"""What does alignlab cost on top of TRL? Each stage two ways, side by side in one run:

1. ``python -m alignlab method=<sft|reward|dpo> ...`` (Hydra composition, validation, length
   check, run dir, lock, model card, metrics, report with plots);
2. a hand-written TRL script: the same model, toy-world data, trainer arguments, steps and seed.

Each runs in a fresh process; we report wall time and peak RSS of the whole process (median of
``--repeats``, the two interleaved so that drift in machine load hits both) and the ratios.
Goals: <= 1.02x wall on runs of a minute or more, <= 1.05x peak memory. The fixed start-up
cost is measured on its own: ``python -m alignlab --cfg job`` (composition + validation, no
training) and ``python -m alignlab report <run>`` (the report and plots, run after training).
After each alignlab run the script checks that the hand-written run got the same trainer
arguments (from the ``training_args.bin`` that TRL saves next to each model) and prints any
difference.

    .venv/bin/python benchmarks/overhead.py --model llama-small
    .venv/bin/python benchmarks/overhead.py --model smollm2-135m --steps sft=24,reward=24,dpo=12

``--model`` is a model preset (``conf/model/<name>.yaml``) or a ``model.path``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

HAND_WRITTEN = textwrap.dedent("""
    import json, sys
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers import AutoTokenizer
    from alignlab.data import toy

    spec = json.loads(open(sys.argv[1]).read())
    method, out, args = spec["method"], spec["out"], spec["args"]
    kind, cols = {"sft": ("sft", ["messages"]), "reward": ("pairs", ["prompt", "chosen",
                  "rejected"]), "dpo": ("pairs", ["prompt", "chosen", "rejected"])}[method]
    rows = [{k: r[k] for k in cols} for r in toy.generate(kind, "train", spec["toy"], seed=42)]
    train = Dataset.from_list(rows)
    tok = AutoTokenizer.from_pretrained(spec["model"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    common = dict(output_dir=out + "/checkpoints", seed=42, report_to="none", use_cpu=True,
                  bf16=False, save_strategy="no", **args)
    if method == "sft":
        from trl import SFTConfig, SFTTrainer
        model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype="float32")
        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=train,
                             processing_class=tok)
    elif method == "reward":
        from trl import RewardConfig, RewardTrainer
        model = AutoModelForSequenceClassification.from_pretrained(spec["model"], num_labels=1,
                                                                   dtype="float32")
        model.config.pad_token_id = tok.pad_token_id
        trainer = RewardTrainer(model=model, args=RewardConfig(**common), train_dataset=train,
                                processing_class=tok)
    else:
        from trl import DPOConfig, DPOTrainer
        policy = AutoModelForCausalLM.from_pretrained(spec["model"], dtype="float32")
        ref = AutoModelForCausalLM.from_pretrained(spec["model"], dtype="float32")
        trainer = DPOTrainer(model=policy, ref_model=ref, args=DPOConfig(**common),
                             train_dataset=train, processing_class=tok)
    trainer.train()
    trainer.save_model(out + "/model")
""")

MEASURE = textwrap.dedent("""
    import json, resource, subprocess, sys, time
    start = time.perf_counter()
    code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"code": code, "wall": wall, "rss_mib": rss_mib}))
""")

# The trainer arguments both runs get (on top of TRL's defaults), per method.
# Both runs: no gradient checkpointing (alignlab's hardware=cpu; TRL's configs default it on).
_COMMON = {"gradient_checkpointing": False, "per_device_train_batch_size": 8, "max_length": 256,
           "lr_scheduler_type": "constant", "warmup_steps": 0, "logging_steps": 5,
           "gradient_accumulation_steps": 1}
ARGS: dict[str, dict[str, Any]] = {
    "sft": {**_COMMON, "learning_rate": 2e-5, "assistant_only_loss": False},
    "reward": {**_COMMON, "learning_rate": 2e-5},
    "dpo": {**_COMMON, "learning_rate": 5e-7, "beta": 0.1, "loss_type": ["sigmoid", "sft"]},
}
# The fields compared between the two runs' saved training_args.bin.
COMPARED = ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
            "max_steps", "lr_scheduler_type", "warmup_steps", "max_length", "beta", "loss_type",
            "assistant_only_loss", "gradient_checkpointing", "bf16", "seed", "weight_decay",
            "optim", "max_grad_norm", "padding_free", "packing", "completion_only_loss")


def measure(cmd: list[str]) -> dict[str, Any]:
    """Wall time and peak RSS of ``cmd`` in a fresh watcher process (isolates the children)."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}")
    return result


def _value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, list) else str(v)


def differences(a: Path, b: Path) -> list[str]:
    """Trainer arguments that differ between two saved runs (``training_args.bin``)."""
    import torch

    x, y = (torch.load(p / "training_args.bin", weights_only=False) for p in (a, b))
    return [f"{k}: {getattr(x, k, None)!r} vs {getattr(y, k, None)!r}" for k in COMPARED
            if getattr(x, k, None) != getattr(y, k, None)]


def main() -> None:
    """Run both ways for each method, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-small",
                        help="a model preset (conf/model/<name>.yaml) or a model.path")
    parser.add_argument("--methods", default="sft,reward,dpo")
    parser.add_argument("--steps", default="sft=60,reward=60,dpo=60",
                        help="optimizer steps per method, e.g. sft=24,reward=24,dpo=12")
    parser.add_argument("--repeats", type=int, default=1)
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # One thread per process: on a shared machine two OpenMP threads that wait on each other
    # under load make the timings depend on the neighbours more than on the code.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from alignlab import cli, config, models

    config.register()
    presets = {p.stem for p in (config.conf_dir() / "model").glob("*.yaml")}
    model_arg = f"model={opts.model}" if opts.model in presets else f"model.path={opts.model}"
    cfg = cli.compose([model_arg])
    model_dir = str(models.resolve_path(cfg.model, cfg.seed))
    toy = config.to_plain(cfg.data.toy)
    steps = {k: int(v) for k, v in (kv.split("=") for kv in opts.steps.split(","))}
    table, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "by_hand.py"
        script.write_text(HAND_WRITTEN)
        start = [sys.executable, "-m", "alignlab", model_arg, "--cfg", "job"]
        fixed = statistics.median(measure(start)["wall"] for _ in range(3))
        report_s = None
        for method in opts.methods.split(","):
            args = {**ARGS[method], "max_steps": steps[method]}
            walls: dict[str, list[dict[str, Any]]] = {"alignlab": [], "hand-written TRL": []}
            for i in range(opts.repeats):
                run = Path(tmp) / f"{method}-a{i}"
                overrides = [f"method.args.{k}={_value(v)}" for k, v in args.items()]
                walls["alignlab"].append(measure([
                    sys.executable, "-m", "alignlab", model_arg, f"method={method}",
                    f"hydra.run.dir={run}", "model.from_sft=false", "quick_eval=false",
                    "report_to=none", "method.args.save_strategy=no",
                    "model.train_args.default.num_train_epochs=1", *overrides]))
                spec = Path(tmp) / f"{method}-h{i}.json"
                spec.write_text(json.dumps({"method": method, "out": f"{tmp}/{method}-h{i}",
                                            "model": model_dir, "toy": toy, "args": args}))
                walls["hand-written TRL"].append(measure([sys.executable, str(script),
                                                          str(spec)]))
                diff = differences(run / "model", Path(tmp) / f"{method}-h{i}" / "model")
                if diff and i == 0:
                    notes.append(f"{method}: trainer arguments differ: " + "; ".join(diff))
                if report_s is None:
                    t = time.perf_counter()
                    subprocess.run([sys.executable, "-m", "alignlab", "report", str(run)],
                                   cwd=ROOT, capture_output=True, check=True)
                    report_s = time.perf_counter() - t
            med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall", "rss_mib")}
                   for k, v in walls.items()}
            base = med["hand-written TRL"]
            for name, m in med.items():
                table.append(f"| {method} | {steps[method]} | {name} | {m['wall']:.1f} | "
                             f"{m['rss_mib']:.0f} | {m['wall'] / base['wall']:.3f} | "
                             f"{m['rss_mib'] / base['rss_mib']:.3f} |")
    print(f"\nalignlab vs hand-written TRL, model {opts.model}, toy-world data, CPU, median of "
          f"{opts.repeats}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| method | steps | run | wall (s) | peak RSS (MiB) | wall ratio | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(table))
    print(f"\nfixed costs: `python -m alignlab --cfg job` {fixed:.2f} s (median of 3); "
          f"`python -m alignlab report <run>` {report_s:.2f} s")
    for note in notes or ["trainer arguments: identical in both runs (compared fields: "
                          + ", ".join(COMPARED) + ")"]:
        print(note)


if __name__ == "__main__":
    main()
