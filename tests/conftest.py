"""Shared fixtures: small but real runs of the CLI, built once per test session."""

from __future__ import annotations

import json
import math
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


def trend_t(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """(slope, half): a logged series' least-squares slope per logged point and the half-width
    of its two-sided ``confidence`` interval (Student t, n - 2 degrees of freedom, standard
    error from the scatter around the line). ``slope > half`` is a rise the series' own
    step-to-step noise cannot fake; an unchanged model logs a flat series and fails it. Curvature
    (a fast start, then a plateau) counts as scatter, which only makes the check stricter."""
    from alignlab import stats

    n = len(values)
    if n < 3:
        raise AssertionError(f"a trend needs at least 3 logged points, got {values}")
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    sxx = sum((x - mean_x) ** 2 for x in range(n))
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / sxx
    resid = [y - mean_y - slope * (x - mean_x) for x, y in enumerate(values)]
    se = math.sqrt(sum(r * r for r in resid) / (n - 2) / sxx)
    return slope, stats.t_quantile(0.5 + confidence / 2, n - 2) * se


def read_samples(run: Path) -> list[dict[str, Any]]:
    """A run's ``samples.jsonl``: per sample its prompt, category, score and the start's (or
    reference's) ``reference_score`` on the same prompt (sampled with the same seed)."""
    return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()
            if line.strip()]


def paired_gain(scores: list[float], start: list[float], prompts: list[Any],
                confidence: float = 0.95) -> dict[str, Any]:
    """The trained model's gain over its start on the same prompts, per sample ``scores[i] -
    start[i]``: its mean, the cluster-robust standard error by prompt (several samples of one
    prompt are correlated; :func:`alignlab.stats.clustered_mean_se`), and ``margin``, the
    half-width of its two-sided ``confidence`` interval (t with prompts - 1 degrees of freedom,
    as :func:`alignlab.stats.mean_ci` does). ``gain > margin``: the interval of the paired
    difference excludes 0, i.e. the run's own sampling spread cannot explain the gain. An
    unchanged model samples the same answers with the same seed: every pair ties, gain 0,
    and it fails. Also ``wins``/``losses``/``ties`` (samples better / worse / equal)."""
    from alignlab import stats

    if not (len(scores) == len(start) == len(prompts)) or not scores:
        raise AssertionError(f"unpaired or empty: {len(scores)}, {len(start)}, {len(prompts)}")
    diffs = [float(a) - float(b) for a, b in zip(scores, start, strict=True)]
    groups = [json.dumps(p, sort_keys=True) if not isinstance(p, str) else p for p in prompts]
    mean, se, n_prompts = stats.clustered_mean_se(diffs, groups)
    if n_prompts < 2:
        raise AssertionError(f"a paired margin needs at least 2 prompts, got {n_prompts}")
    margin = stats.t_quantile(0.5 + confidence / 2, n_prompts - 1) * se
    return {"gain": mean, "se": se, "margin": margin, "n": len(diffs), "prompts": n_prompts,
            "wins": sum(d > 0 for d in diffs), "losses": sum(d < 0 for d in diffs),
            "ties": sum(d == 0 for d in diffs)}


def sample_gain(samples: list[dict[str, Any]], category: str | tuple[str, ...] | None = None,
                confidence: float = 0.95) -> dict[str, Any]:
    """:func:`paired_gain` of ``samples.jsonl`` rows (``score`` vs ``reference_score``), of one
    ``category`` (or a tuple of them) or all."""
    keep = (category,) if isinstance(category, str) else category
    rows = [s for s in samples if keep is None or s["category"] in keep]
    if any(s["reference_score"] is None for s in rows):
        raise AssertionError("samples.jsonl has no reference_score: no start was sampled")
    return paired_gain([s["score"] for s in rows], [s["reference_score"] for s in rows],
                       [s["prompt"] for s in rows], confidence)


def paired_eval(policy: Path, start: Path, num_samples: int = 8,
                *overrides: str) -> list[dict[str, Any]]:
    """Sample ``policy`` and the ``start`` it was trained from on the toy world's held-out
    prompts, ``num_samples`` each, with the same seed (what the stage's quick evaluation does
    with 3): samples.jsonl-style rows with ``score`` and the start's ``reference_score``. More
    samples than the quick evaluation's 3 narrow the paired interval where a short test run's
    gain is small (in the worker's process: about 10 s for 2 x 336 samples of llama-small)."""
    from alignlab import cli, evaluation, models

    cfg = cli.compose(list(overrides))
    tokenizer = models.load_tokenizer(cfg.model, str(policy))
    trained = models.load_model(cfg.model, str(policy), cfg.hardware)
    before = models.load_model(cfg.model, str(start), cfg.hardware)
    _, samples = evaluation.evaluate(cfg, trained, tokenizer,
                                     evaluation.EvalArgs(num_samples=num_samples), start=before,
                                     progress=False)
    return samples


def one_error_line(proc: subprocess.CompletedProcess, *, ours_only: bool = False) -> str:
    """The single ``alignlab: error:`` line of a refused run (exit code 2, no traceback).

    ``ours_only``: count only alignlab's own lines (a run that got as far as training also
    prints progress bars and library logs on stderr)."""
    lines = [ln for ln in proc.stderr.splitlines()
             if ln.strip() and (not ours_only or ln.startswith("alignlab: "))]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("alignlab: error: "), proc.stderr[-3000:]
    return lines[0]


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
    """A reward model trained from the SFT model on the toy pairs.

    ``ALIGNLAB_TEST_REWARD_RUN=<dir>`` reuses an earlier one made from that SFT run (local
    speed-up, with ``ALIGNLAB_TEST_SFT_RUN``)."""
    if os.environ.get("ALIGNLAB_TEST_REWARD_RUN"):
        return Path(os.environ["ALIGNLAB_TEST_REWARD_RUN"])
    return shared_run(tmp_path_factory, "reward", "method=reward", f"model.path={sft_run}/model",
                      "data.toy.n_pairs=2000", "method.args.save_strategy=no", "report_to=none")
