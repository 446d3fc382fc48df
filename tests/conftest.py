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


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished SFT run of llama-small on the toy world (run dir; model in ``model/``).

    ``ALIGNLAB_TEST_SFT_RUN=<dir>`` reuses an earlier run made with SMALL_SFT (local speed-up).
    """
    if os.environ.get("ALIGNLAB_TEST_SFT_RUN"):
        return Path(os.environ["ALIGNLAB_TEST_SFT_RUN"])
    out = tmp_path_factory.mktemp("sft") / "run"
    alignlab(f"hydra.run.dir={out}", *SMALL_SFT)
    return out


@pytest.fixture(scope="session")
def reward_run(tmp_path_factory: pytest.TempPathFactory, sft_run: Path) -> Path:
    """A reward model trained from the SFT model on the toy pairs."""
    out = tmp_path_factory.mktemp("reward") / "run"
    alignlab(f"hydra.run.dir={out}", "method=reward", f"model.path={sft_run}/model",
             "data.toy.n_pairs=2000", "method.args.save_strategy=no", "report_to=none")
    return out
