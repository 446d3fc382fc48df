"""Shared fixtures: small but real runs of the CLI, built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A preference method started from the untrained built-in model trains its toy SFT first (2 min):
# tests that do so by accident get a 10-step one (cached under its own key) instead.
os.environ.setdefault("ALIGNLAB_TOY_SFT_MAX_STEPS", "10")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on the 2-core machine: one core each, for the worker and
    # the runs it starts (set before torch is imported; more threads would oversubscribe).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent

# A small SFT that learns the toy world to ~60 % (470 steps, about a minute on 2 cores;
# 313 steps left the sums unlearned).
SMALL_SFT = ["method.args.num_train_epochs=5", "method.args.save_strategy=no", "report_to=none"]


def alignlab(*args: str, env: dict[str, str] | None = None, check: bool = True,
             timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``python -m alignlab ARGS`` as a user would; return the finished process."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "alignlab", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"alignlab {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def run_inprocess(run_dir: Path, *overrides: str) -> dict[str, Any]:
    """Compose + validate like the CLI, then run the stage in this process."""
    from alignlab import cli

    cfg = cli.compose([*overrides, f"run_dir={run_dir}"])
    return cli.run_stage(cfg, Path(run_dir))


def trend(values: list[float]) -> tuple[float, float, float]:
    """A logged series' mean over its first third, over its last third, and its least-squares
    slope per logged point: a rise over the whole run, which two noisy points cannot fake."""
    n, third = len(values), max(1, len(values) // 3)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    spread = sum((x - mean_x) ** 2 for x in range(n)) or 1.0
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / spread
    return sum(values[:third]) / third, sum(values[-third:]) / third, slope


def shared_run(factory: pytest.TempPathFactory, name: str, *args: str) -> Path:
    """``python -m alignlab ARGS`` once per test session, also under pytest-xdist: the first
    worker to ask makes the run (under a file lock), the others wait for it and reuse it."""
    from filelock import FileLock

    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by this session's workers (and by no other session)
    out = base / f"shared-{name}" / "run"
    with FileLock(str(base / f"shared-{name}.lock")):
        if not (out / "DONE").exists():  # every core: the other worker waits for this run
            alignlab(f"hydra.run.dir={out}", *args,
                     env={"OMP_NUM_THREADS": str(os.cpu_count() or 1)})
    return out


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished SFT run of llama-small on the toy world (run dir; model in ``model/``).

    ``ALIGNLAB_TEST_SFT_RUN=<dir>`` reuses an earlier run made with SMALL_SFT (local speed-up).
    """
    if os.environ.get("ALIGNLAB_TEST_SFT_RUN"):
        return Path(os.environ["ALIGNLAB_TEST_SFT_RUN"])
    return shared_run(tmp_path_factory, "sft", *SMALL_SFT)


@pytest.fixture(scope="session")
def reward_run(tmp_path_factory: pytest.TempPathFactory, sft_run: Path) -> Path:
    """A reward model trained from the SFT model on the toy pairs."""
    return shared_run(tmp_path_factory, "reward", "method=reward", f"model.path={sft_run}/model",
                      "data.toy.n_pairs=2000", "method.args.save_strategy=no", "report_to=none")
