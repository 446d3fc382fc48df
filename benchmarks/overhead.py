"""What does alignlab cost on top of TRL? The same DPO run two ways, in one run of this script:

1. ``python -m alignlab method=dpo ...`` (Hydra, validation, run dir, model card, metrics);
2. a hand-written TRL script: the same model, data, arguments, steps and seed.

Each runs in a fresh process; we report wall time and peak RSS of the whole process, median of
``--repeats`` runs, and the ratios. Goal: <= 1.02 wall, <= 1.05 memory.

    .venv/bin/python benchmarks/overhead.py [--steps 60] [--repeats 3]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HAND_WRITTEN = textwrap.dedent("""
    import sys
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    from alignlab.data import toy

    model_dir, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    world = dict(n_sft=3000, n_pairs=2000, n_prompts=1000, error_rate=0.35, comply_rate=0.65,
                 refuse_rate=0.55, test_fraction=0.2)
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")}
            for r in toy.generate("pairs", "train", world, seed=42)]
    tok = AutoTokenizer.from_pretrained(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    args = DPOConfig(output_dir=out + "/checkpoints", seed=42, report_to="none", use_cpu=True,
                     bf16=False, gradient_checkpointing=False, learning_rate=3e-4,
                     per_device_train_batch_size=16, num_train_epochs=1, max_steps=steps,
                     lr_scheduler_type="constant", warmup_steps=10, max_length=128, beta=0.1,
                     loss_type=["sigmoid", "sft"], logging_steps=5, save_strategy="no")
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tok)
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


def measure(cmd: list[str]) -> dict:
    """Wall time and peak RSS of ``cmd`` in a fresh watcher process (isolates the children)."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from alignlab import models

    model_dir = models.build_builtin("llama-small", seed=42)
    rows = {"alignlab": [], "hand-written TRL": []}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "dpo_by_hand.py"
        script.write_text(HAND_WRITTEN)
        for i in range(opts.repeats):  # interleaved, so drift in machine load hits both
            rows["alignlab"].append(measure([
                sys.executable, "-m", "alignlab", "method=dpo", f"hydra.run.dir={tmp}/a{i}",
                f"method.args.max_steps={opts.steps}", "method.args.save_strategy=no",
                "data.toy.n_pairs=2000", "quick_eval=false", "report_to=none"]))
            rows["hand-written TRL"].append(measure([
                sys.executable, str(script), str(model_dir), f"{tmp}/h{i}", str(opts.steps)]))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall", "rss_mib")}
           for k, v in rows.items()}
    base = med["hand-written TRL"]
    print(f"DPO, llama-small, toy pairs, {opts.steps} steps, median of {opts.repeats}, CPU\n")
    print("| run | wall (s) | peak RSS (MiB) | wall ratio | memory ratio |")
    print("|---|---|---|---|---|")
    for name, m in med.items():
        print(f"| {name} | {m['wall']:.1f} | {m['rss_mib']:.0f} | "
              f"{m['wall'] / base['wall']:.3f} | {m['rss_mib'] / base['rss_mib']:.3f} |")


if __name__ == "__main__":
    main()
