"""Constitutional AI on a real model: are SmolLM2's revisions better than its first answers?

Runs ``method=cai constitution=harmless`` with SmolLM2-135M-Instruct on real red-team prompts
(the first human turns of HH-RLHF harmless pairs prepared by ``benchmarks/real.py``), then
scores each first answer and its revision with an independent judge: the reward model that
``benchmarks/real.py`` trained on the data's human harmlessness labels. Prints the paired
difference (revision - first answer) with a 95 % interval, the share of prompts where the
revision scores higher, and a few examples.

    .venv/bin/python benchmarks/cai_real.py --bench runs/bench-real [--prompts 16]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=ROOT / "runs" / "bench-real",
                        help="the --out folder of benchmarks/real.py (data/ and rm/model)")
    parser.add_argument("--prompts", type=int, default=16, help="red-team prompts per split")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--examples", type=int, default=3)
    args = parser.parse_args()

    run = args.bench / "cai"
    start = time.time()
    cmd = [sys.executable, "-m", "alignlab", f"hydra.run.dir={run}", "model=smollm2-135m",
           "data=hh-rlhf-harmless", f"data.path={args.bench / 'data'}", "method=cai",
           "constitution=harmless", "method.args.categories=null",
           f"method.args.max_prompts={args.prompts}",
           f"method.args.max_new_tokens={args.max_new_tokens}", "report_to=none"]
    print("$", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    wall = time.time() - start

    from datasets import load_from_disk
    from omegaconf import OmegaConf

    from alignlab import cli, evaluation, rewards, stats

    ds = load_from_disk(str(run / "dataset"))
    rows = [r for split in ds.values() for r in split]
    cfg = cli.compose(["model=smollm2-135m", "method=eval",
                       f"method.reward_model={args.bench / 'rm' / 'model'}"])
    model, tok = rewards.load_reward_model(cfg, str(OmegaConf.select(cfg, "method.reward_model")))
    prompts = [[{"role": "user", "content": r["init_prompt"]}] for r in rows]
    first = evaluation.reward_scores(model, tok, prompts, [r["init_response"] for r in rows])
    revised = evaluation.reward_scores(model, tok, prompts, [r["revision_response"] for r in rows])
    diffs = [b - a for a, b in zip(first, revised, strict=True)]
    ci = stats.mean_ci(diffs)
    better = sum(d > 0 for d in diffs)
    n = len(diffs)
    print(f"\n{n} red-team prompts, cai stage {wall:.0f} s wall")
    print(f"RM score: first answers {sum(first) / n:.3f}, revisions {sum(revised) / n:.3f}; "
          f"revision - first = {ci['mean']:+.3f} [{ci['ci_low']:+.3f}, {ci['ci_high']:+.3f}]")
    low, high = stats.wilson_interval(better, n)
    print(f"revision scores higher on {better}/{n} = {better / n:.2f} [{low:.2f}, {high:.2f}]")
    for r, a, b in list(zip(rows, first, revised, strict=True))[:args.examples]:
        print(json.dumps({"prompt": r["init_prompt"], "first answer": r["init_response"],
                          "critique": r["critic_response"], "revision": r["revision_response"],
                          "rm first": round(a, 3), "rm revision": round(b, 3)},
                         indent=1, ensure_ascii=False))
    assert math.isfinite(ci["mean"])


if __name__ == "__main__":
    main()
