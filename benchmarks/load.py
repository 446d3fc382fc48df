"""Wall time of an alignlab stage on an idle machine and beside one competing CPU-bound process,
under each OpenMP wait setting (``hardware.omp_wait_policy``, ``hardware.omp_spin_count``):
is there a cliff under load?

Each run is ``python -m alignlab <stage> hardware.omp_wait_policy=<policy> ...`` in a fresh process
with torch's default threading (what a user gets); the competitor is a 2-thread torch matmul
loop at the same priority, started before the run and stopped after it. Runs are interleaved
(policy x condition, repeated), so drift in the machine's load hits every cell. Prints a
Markdown table of wall times (with start-up) and the load average each run saw.

    .venv/bin/python benchmarks/load.py --sft <sft run>/model --method dpo
    .venv/bin/python benchmarks/load.py --sft <sft run>/model --method ppo --rm <reward run>/model
    .venv/bin/python benchmarks/load.py --model smollm2-135m --method dpo --steps 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPETITOR = ("import torch\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\n"
              "while True:\n    a = (a @ a).clamp_(-1, 1)\n")
# name -> the run's overrides; null: OpenMP's own default (spin ~3 ms, then sleep)
POLICIES = {
    "active": ["hardware.omp_wait_policy=active"],
    "null": ["hardware.omp_wait_policy=null"],
    "passive": ["hardware.omp_wait_policy=passive", "hardware.omp_spin_count=null"],
    "spin1000": ["hardware.omp_wait_policy=passive", "hardware.omp_spin_count=1000"],
    "spin10000": ["hardware.omp_wait_policy=passive", "hardware.omp_spin_count=10000"],
}


def stage_args(a: argparse.Namespace, out: Path) -> list[str]:
    """The alignlab overrides of the measured stage."""
    args = [f"hydra.run.dir={out}", f"method={a.method}", f"model={a.model}",
            "quick_eval=false", "method.args.save_strategy=no", "method.args.disable_tqdm=true",
            f"method.args.max_steps={a.steps}"]
    if a.sft:
        args.append(f"model.path={a.sft}")
    if a.method == "ppo":
        args += [f"method.reward_model={a.rm}"] if a.rm else ["method.reward_funcs=[toy_judge]"]
    return args


def run_once(a: argparse.Namespace, policy: str, loaded: bool, out: Path) -> tuple[float, float]:
    """(wall seconds, load average at the end) of one run."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["HF_HUB_OFFLINE"] = "1"
    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if loaded else None
    try:
        if competitor is not None:
            time.sleep(3)  # let it reach full speed
        start = time.time()
        proc = subprocess.run([sys.executable, "-m", "alignlab", *stage_args(a, out),
                               *POLICIES[policy]], capture_output=True,
                              text=True, cwd=ROOT, env=env)
        wall = time.time() - start
        load = os.getloadavg()[0]
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    if proc.returncode != 0:
        raise SystemExit(f"the run failed:\n{proc.stderr[-3000:]}")
    return wall, load


def main() -> None:
    """Parse arguments, run the grid interleaved, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="dpo", help="dpo | ppo | any stage")
    parser.add_argument("--model", default="llama-small", help="a model preset")
    parser.add_argument("--sft", help="the starting policy folder (model.path)")
    parser.add_argument("--rm", help="PPO: reward model folder (default: the toy judge)")
    parser.add_argument("--steps", type=int, default=30, help="method.args.max_steps")
    parser.add_argument("--repeats", type=int, default=2, help="runs per cell")
    parser.add_argument("--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES),
                        metavar="NAME", help=f"a subset of: {', '.join(POLICIES)}")
    a = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="alignlab-load-bench-"))
    cells: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for i in range(a.repeats):
        for loaded in (False, True):
            for j, policy in enumerate(a.policies):
                what = "one competing process" if loaded else "idle"
                print(f"[bench] {a.method} {policy}, {what} ({i + 1}/{a.repeats}) ...",
                      flush=True)
                cells.setdefault((policy, loaded), []).append(
                    run_once(a, policy, loaded, work / f"{j}-{loaded}-{i}"))
    print(f"\n{a.method} on {a.model}, {a.steps} steps, wall time with start-up, torch's "
          f"default threads ({os.cpu_count()} CPUs), median (each run; load average at its "
          f"end), {a.repeats} interleaved runs per cell; {time.strftime('%Y-%m-%d')}\n")
    print("| OpenMP wait (overrides) | idle | one competing process |")
    print("|---|---|---|")
    for policy in a.policies:
        cols = []
        for loaded in (False, True):
            runs = cells[(policy, loaded)]
            each = ", ".join(f"{w:.1f} s; {load:.1f}" for w, load in runs)
            cols.append(f"{statistics.median(w for w, _ in runs):.1f} s ({each})")
        print(f"| {policy} (`{' '.join(POLICIES[policy])}`) | " + " | ".join(cols) + " |")
    print(f"\n(work dir: {work})")


if __name__ == "__main__":
    main()
