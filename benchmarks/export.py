"""Export round trip per run: merged folder and GGUF types, their parity and their time.

For each run directory (or model folder) given, runs ``python -m alignlab export <run> --out
<out>/<name> --gguf <types>`` as a user would, then prints one row per exported file from its
``export.json``: size, seconds to convert, KL per token to the trained model (mean and max) and
greedy agreement on the run's held-out prompts, read back by transformers' GGUF loader; and the
whole export's wall time. One process at a time, ``OMP_NUM_THREADS`` threads (default 2), the
load average printed.

    .venv/bin/python benchmarks/export.py runs/dpo/<id> /tmp/smol-sft --gguf q8_0,f16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def export(run: Path, out: Path, types: str, prompts: int, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "alignlab", "export", str(run), "--out",
                           str(out), "--gguf", types, "--check-prompts", str(prompts),
                           "--overwrite"], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"export of {run} failed:\n{proc.stderr[-3000:]}")
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--gguf", default="q8_0,f16")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-export")
    opts = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.2f}, "
          f"{opts.threads} threads")
    print("| model | file | MiB | convert s | mean KL/token | max KL/token | greedy agree | "
          "tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for run in opts.runs:
        out = opts.out / run.resolve().name
        wall = export(run, out, opts.gguf, opts.prompts, opts.threads)
        info = json.loads((out / "export.json").read_text())
        merged = info["parity"]["merged"]
        name = f"{run.name} ({'LoRA' if info['adapter'] else 'full'})"
        print(f"| {name} | merged folder | "
              f"{(out / 'model.safetensors').stat().st_size / 2**20:.0f} | — | "
              f"max abs log-prob diff {merged['max_abs_logprob_diff']:.1e} | — | "
              f"{merged['greedy_agreement']:.1%} | {merged['tokens']} |")
        for outtype, entry in info["gguf"].items():
            p = info["parity"][outtype]
            print(f"| {name} | {outtype} | {entry['bytes'] / 2**20:.1f} | {entry['seconds']:.1f} "
                  f"| {p['mean_kl']:.1e} | {p['max_kl']:.1e} | {p['greedy_agreement']:.1%} | "
                  f"{p['tokens']} |")
        print(f"| {name} | whole export | | {wall:.0f} s wall | | | | |")


if __name__ == "__main__":
    main()
