"""The first figures on a real model: SmolLM2-135M-Instruct on real HH-RLHF harmless pairs.

Runs alignlab's own commands, as a user would, on 2 CPU cores:
  (a) ``method=reward`` (LoRA) on a train split: held-out pair accuracy, untrained head vs trained,
      with n and a 95 % Wilson interval;
  (b) ``method=dpo`` (LoRA) for a fixed budget from the instruct model, then ``method=eval``: the
      reward model's score and win rate of the DPO policy against the starting model on held-out
      prompts, with the KL to it;
  (c) each stage's wall time, tokens/s (training) and peak memory.

    .venv/bin/python benchmarks/real.py --data hh-rlhf-harmless.jsonl.gz [--rm-steps 40]
    .venv/bin/python benchmarks/real.py --data ... --only-rm --splits 0 1 --rm-steps 128 \
        --eval-steps 32      # the reward model's learning curve on two splits

``--splits``: the seeds of the train/held-out shuffles (each also seeds training), one run each.
``--eval-steps N``: the reward model is evaluated on the held-out pairs every N steps (TRL's
``eval_strategy=steps``), which gives the learning curve: accuracy against pairs seen.

``--data``: HH-RLHF rows (``{"chosen": "\\n\\nHuman: ...", "rejected": ...}``, .jsonl or
.jsonl.gz). The rows are split by a fixed seed into train and held-out; both are written in the
hub layout (``harmless-base/{train,test}.jsonl``) that ``data=hh-rlhf-harmless`` reads.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def split_rows(src: Path, out: Path, test_rows: int, seed: int) -> tuple[int, int]:
    """Write train/test files of ``src`` (shuffled by ``seed``) under ``out/harmless-base``."""
    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rt", encoding="utf-8") as f:
        rows = [line for line in f if line.strip()]
    random.Random(seed).shuffle(rows)
    folder = out / "harmless-base"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test.jsonl").write_text("".join(rows[:test_rows]), encoding="utf-8")
    (folder / "train.jsonl").write_text("".join(rows[test_rows:]), encoding="utf-8")
    return len(rows) - test_rows, test_rows


def alignlab(run_dir: Path, *args: str) -> tuple[dict, float]:
    """``python -m alignlab ARGS`` into ``run_dir``; its metrics.json and wall seconds."""
    start = time.time()
    cmd = [sys.executable, "-m", "alignlab", f"hydra.run.dir={run_dir}", *args]
    print("$", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    for line in proc.stdout.splitlines() + proc.stderr.splitlines():
        if line.startswith("[alignlab]") or "Lengths:" in line:
            print("   ", line.strip())
    return json.loads((run_dir / "metrics.json").read_text()), time.time() - start


def tokens_per_second(metrics: dict) -> float | None:
    """Training tokens/s from TRL's logged token count (SFT/DPO/RM) and the run time."""
    train = metrics.get("train", {})
    tokens = next((r["num_tokens"] for r in reversed(metrics.get("log_history", []))
                   if "num_tokens" in r), None)
    runtime = train.get("train_runtime")
    return tokens / runtime if tokens and runtime else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="HH-RLHF .jsonl(.gz)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-real")
    parser.add_argument("--test-rows", type=int, default=200)
    parser.add_argument("--rm-steps", type=int, default=40)
    parser.add_argument("--dpo-steps", type=int, default=30)
    parser.add_argument("--eval-prompts", type=int, default=40)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--splits", type=int, nargs="+", default=[0])
    parser.add_argument("--eval-steps", type=int, default=0)
    parser.add_argument("--rm-lr", type=float, default=2e-4)
    parser.add_argument("--only-rm", action="store_true", help="the reward model only")
    args = parser.parse_args()
    from alignlab import stats  # after argparse: --help stays light

    print(f"load {os.getloadavg()[0]:.1f}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    curves = []
    for split in args.splits:
        out = args.out if len(args.splits) == 1 else args.out / f"split{split}"
        curves.append(one_split(args, out, split))
    if len(curves) > 1 or args.eval_steps:
        print()
        print("| split | pairs seen | held-out pair accuracy [95 % CI] | n |")
        print("|---|---|---|---|")
        for split, curve in zip(args.splits, curves, strict=True):
            for seen, acc, n in curve:
                lo, hi = stats.wilson_interval(acc * n, n)
                print(f"| {split} | {seen} | {acc:.3f} [{lo:.2f}, {hi:.2f}] | {n} |")


def held_out_kept(data: Path, model: Path, max_length: int) -> int:
    """How many held-out pairs TRL's evaluation keeps (it drops pairs over ``max_length``;
    the before/after figures score every pair, cut to the model's context)."""
    from alignlab import cli, lengths, models
    from alignlab import data as alignlab_data

    cfg = cli.compose(["model=smollm2-135m", "data=hh-rlhf-harmless", f"data.path={data}"])
    test = alignlab_data.load(cfg.data, "pairs", "test")
    report = lengths.measure(test, models.load_tokenizer(cfg.model, str(model)), "reward",
                             max_length)
    return report.rows - report.dropped


def one_split(args: argparse.Namespace, out: Path, split: int) -> list[tuple[int, float, int]]:
    """The reward model (and, unless ``--only-rm``, DPO and its eval) on one train/held-out
    split; the reward model's curve: (pairs seen, held-out accuracy, n)."""
    from alignlab import stats

    data = out / "data"
    n_train, n_test = split_rows(args.data, data, args.test_rows, seed=split)
    print(f"split {split}: {n_train} train / {n_test} held-out pairs")
    common = ["model=smollm2-135m", "data=hh-rlhf-harmless", f"data.path={data}",
              "model.lora=true", "report_to=none", "quick_eval=false", f"seed={split}",
              f"method.args.max_length={args.max_length}", "data.max_dropped=1.0"]
    train = [f"method.args.per_device_train_batch_size={args.batch_size}",
             "method.args.gradient_accumulation_steps=1", "method.args.logging_steps=5",
             "method.args.save_strategy=no"]
    curve_args = (["method.args.eval_strategy=steps", f"method.args.eval_steps={args.eval_steps}",
                   f"method.args.per_device_eval_batch_size={args.batch_size}"]
                  if args.eval_steps else [])
    rows = []

    rm, rm_wall = alignlab(out / "rm", *common, *train, *curve_args, "method=reward",
                           f"method.args.max_steps={args.rm_steps}",
                           f"method.args.learning_rate={args.rm_lr}")
    reward = rm["reward"]
    rows.append(("reward (LoRA)", rm_wall, tokens_per_second(rm), rm.get("peak_rss_mib")))
    ci = stats.wilson_interval(reward["accuracy"] * reward["n"], reward["n"])
    curve = [(0, reward["accuracy_before"], reward["n"])]
    kept = held_out_kept(data, out / "rm" / "model", args.max_length) if args.eval_steps else 0
    curve += [(int(r["step"]) * args.batch_size, r["eval_accuracy"], kept)
              for r in rm.get("log_history", []) if "eval_accuracy" in r]
    if not args.eval_steps:
        curve.append((args.rm_steps * args.batch_size, reward["accuracy"], reward["n"]))
    print(f"reward model held-out pair accuracy: untrained head {reward['accuracy_before']:.3f}"
          f" -> trained {reward['accuracy']:.3f}"
          f" [{ci[0]:.3f}, {ci[1]:.3f}] (n={reward['n']} pairs), {rm_wall:.0f} s", flush=True)
    if args.only_rm:
        return curve

    dpo, dpo_wall = alignlab(out / "dpo", *common, *train, "method=dpo",
                             f"method.args.max_steps={args.dpo_steps}",
                             "method.args.learning_rate=5e-5", "method.args.beta=0.1")
    rows.append(("dpo (LoRA)", dpo_wall, tokens_per_second(dpo), dpo.get("peak_rss_mib")))

    # The reference is the starting model: the offline copy that model=smollm2-135m resolves to.
    from omegaconf import OmegaConf

    from alignlab import models

    preset = OmegaConf.load(ROOT / "alignlab" / "conf" / "model" / "smollm2-135m.yaml")
    start = models.resolve_path(OmegaConf.merge({"gguf_file": None, "revision": None}, preset), 0)
    ev, ev_wall = alignlab(out / "eval", "model=smollm2-135m", "data=hh-rlhf-harmless",
                           f"data.path={data}", "report_to=none", "method=eval",
                           f"model.path={out / 'dpo' / 'model'}",
                           f"method.reference={start}",
                           f"method.reward_model={out / 'rm' / 'model'}",
                           f"method.args.max_prompts={args.eval_prompts}",
                           "method.args.num_samples=2", "method.args.max_new_tokens=48")
    rows.append(("eval (sampling + scoring)", ev_wall, None, ev.get("peak_rss_mib")))

    print()
    print("| stage | wall | train tokens/s | peak RSS (MiB) |")
    print("|---|---|---|---|")
    for name, wall, tps, rss in rows:
        print(f"| {name} | {wall:.0f} s | {f'{tps:.0f}' if tps else '–'} | "
              f"{f'{rss:.0f}' if rss else '–'} |")
    print()
    ev = json.loads((out / "eval" / "eval.json").read_text())
    score, win, kl = ev["reward"], ev["win_rate"], ev["kl"]
    print(f"DPO policy vs the starting model on {win['n_prompts']} held-out prompts "
          f"({win['n']} samples): RM score {score['mean']:+.3f} [{score['ci_low']:+.3f}, "
          f"{score['ci_high']:+.3f}]; win rate by the RM {win['win_rate']:.3f} "
          f"[{win['ci_low']:.3f}, {win['ci_high']:.3f}] (W/T/L {win['wins']}/{win['ties']}/"
          f"{win['losses']}); KL {kl['kl']:.3f} ± {kl['stderr']:.3f} nats")
    return curve


if __name__ == "__main__":
    main()
