"""A new user's first commands: the headline command starts DPO from the toy-SFT checkpoint
(built once, cached), ends with the toy judge before -> after, and the console stays quiet."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import alignlab

GAIN = re.compile(r"^\[alignlab\] dpo: toy judge (\d\.\d\d) \[\d\.\d\d, \d\.\d\d\] at the start "
                  r"-> (\d\.\d\d) \[\d\.\d\d, \d\.\d\d\] trained \(([+-]\d+) points; 126 samples "
                  r"of 42 prompts, 95 % intervals\); report: (\S+report\.html)$", re.M)
# A short DPO: the point is the start, the console and the summary, not the gain's size.
SHORT_DPO = ["method=dpo", "model=llama-small", "method.args.max_steps=4",
             "method.args.logging_steps=2", "method.args.save_strategy=no", "report_to=none"]


def test_headline_command_starts_from_cached_toy_sft(tmp_path: Path) -> None:
    """From a clean cache: the toy SFT is trained once (its steps capped by the documented
    ALIGNLAB_TOY_SFT_MAX_STEPS), DPO starts from it and says so, the last line per stage is
    the toy judge before -> after with intervals and the report; a second run (``-q``) reuses
    the checkpoint without training it again and prints no bars or step lines."""
    cache = tmp_path / "cache"
    env = {"ALIGNLAB_CACHE": str(cache), "ALIGNLAB_TOY_SFT_MAX_STEPS": "10"}
    first = alignlab(f"hydra.run.dir={tmp_path / 'one'}", *SHORT_DPO, env=env)
    out = first.stdout
    assert "training the toy SFT of llama-small once (10 steps" in out
    assert "dpo starts from llama-small's toy-SFT checkpoint" in out
    assert "model.from_sft=false" in out and "model.path=" in out
    gain = GAIN.search(out)
    assert gain, out
    assert Path(gain.group(4)) == tmp_path / "one" / "report.html" and Path(gain.group(4)).exists()
    built = [p for p in cache.iterdir() if p.is_dir() and "-sft-" in p.name]
    assert len(built) == 1 and (built[0] / "DONE").exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp folder left
    start = yaml.safe_load((tmp_path / "one" / "config.yaml").read_text())["model"]["path"]
    assert start == str(built[0] / "model")
    evals = json.loads((tmp_path / "one" / "eval.json").read_text())
    assert evals["baseline"]["role"] == "start"
    assert f"{evals['baseline']['judge']['score']:.2f}" == gain.group(1)
    assert f"{evals['judge']['score']:.2f}" == gain.group(2)

    # Console: one short line per logging step (1 of the SFT's 10 steps, logged every 10; DPO's 4
    # every 2), no trainer dict printed a second time, no FutureWarning; cli.log has it all.
    console = out + first.stderr
    steps = [ln for ln in out.splitlines() if ln.startswith("[alignlab] step ")]
    assert len(steps) == len(set(steps)) == 1 + 1 + 2 + 1, steps  # + each trainer's closing
    assert "{'loss'" not in console and "'grad_norm'" not in console
    assert "FutureWarning" not in console and "Loading weights" not in console
    log = (tmp_path / "one" / "cli.log").read_text()
    assert "'grad_norm'" in log and "training the toy SFT" in log
    assert "`gradient_checkpointing` is deprecated" not in log  # alignlab's own arguments
    # Every line alignlab printed goes through the console module, so cli.log has it too (the
    # report's path and the run directory were printed past it).
    missing = [ln for ln in out.splitlines() if ln.startswith("[alignlab] ") and ln not in log]
    assert not missing, missing

    second = alignlab("-q", f"hydra.run.dir={tmp_path / 'two'}", *SHORT_DPO, env=env)
    assert "training the toy SFT" not in second.stdout
    assert str(built[0] / "model") in second.stdout
    assert GAIN.search(second.stdout), second.stdout
    assert "[alignlab] step " not in second.stdout and "%|" not in second.stderr
    assert [p for p in cache.iterdir() if p.is_dir() and "-sft-" in p.name] == built


def _cfg(*overrides: str) -> Any:
    from alignlab import cli

    return cli.compose([*overrides, "run_dir=/tmp/unused"])


@pytest.mark.parametrize(("overrides", "says"), [
    (["method=dpo", "model.from_sft=false"], "as model.from_sft=false asks"),
    (["method=kto", "data=hh-rlhf"], "the toy SFT does not apply to data=hh-rlhf"),
])
def test_other_untrained_starts_warn_once(overrides: list[str], says: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from alignlab import toy_start

    cfg = _cfg(*overrides)
    toy_start.resolve_start(cfg)
    out = capsys.readouterr().out
    assert cfg.model.path == "builtin:llama-small"  # left as the expert asked
    assert out.count("\n") == 1 and "warning" in out and says in out
    assert "model.path=<an SFT run>/model" in out


def test_sft_and_given_paths_are_left_alone(capsys: pytest.CaptureFixture[str]) -> None:
    from alignlab import models, toy_start

    given = models.build_builtin("llama-small", 42)  # any model folder (no training)
    for cfg in (_cfg(), _cfg("method=dpo", f"model.path={given}")):
        before = cfg.model.path
        toy_start.resolve_start(cfg)
        assert cfg.model.path == before
    assert capsys.readouterr().out == ""


def test_cache_key_is_the_sft_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyed by what makes the SFT: seed and SFT settings change it, DPO's data sizes and
    settings do not; a capped (test) build never stands in for the real one."""
    from alignlab import toy_start

    def key(*overrides: str) -> str:
        return toy_start.checkpoint_dir(_cfg("method=dpo", *overrides)).name

    monkeypatch.delenv(toy_start.STEPS_ENV, raising=False)  # the real build
    base = key()
    assert key("data.toy.n_pairs=2000", "method.args.beta=0.5", "model.lora=true") == base
    assert key("seed=1") != base and key("data.toy.error_rate=0.1") != base
    monkeypatch.setenv(toy_start.STEPS_ENV, "20")
    assert key() != base


def test_two_processes_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Racing builds: one trains (in a temp folder, renamed when complete), the other waits
    for it and reuses it; no temp folder is left."""
    from alignlab import methods, toy_start

    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path))
    calls = []

    class FakeSft:
        @staticmethod
        def run(cfg: Any, run_dir: Path) -> dict[str, Any]:
            calls.append(run_dir)
            (run_dir / "model").mkdir()
            (run_dir / "model" / "model.safetensors").write_bytes(b"weights")
            return {"method": "sft"}

    cfg = _cfg("method=dpo")  # composed (and validated) before the fake method goes in
    monkeypatch.setattr(methods, "load", lambda name: FakeSft)
    found: list[Path] = []
    threads = [threading.Thread(target=lambda: found.append(toy_start.toy_sft_checkpoint(cfg)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and found[0] == found[1] and (found[0] / "DONE").exists()
    assert (found[0] / "model" / "model.safetensors").read_bytes() == b"weights"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_stage_metrics_are_summarised_in_one_place() -> None:
    """``console.summarise`` picks a stage's headline figures for every place that shows them:
    the ``finished`` line, what a recipe keeps of the stage, and the toy judge before -> after."""
    from alignlab import console

    judge = {"score": 0.6, "ci_low": 0.5, "ci_high": 0.7, "n": 30, "n_prompts": 10}
    start = {"score": 0.4, "ci_low": 0.3, "ci_high": 0.5}
    metrics = {"method": "dpo", "train": {"train_loss": 0.12345}, "judge": judge,
               "baseline": {"role": "start", "judge": start}, "kl": {"kl": 0.1},
               "wall_seconds": 12.4}
    summary = console.summarise(metrics)
    assert summary.line() == "train_loss=0.1235, toy_judge=0.600, wall=12s"
    assert summary.kept == {"judge": judge, "wall_seconds": 12.4}
    assert summary.change == ("toy judge", start, judge)
    assert console.stage_summary("dpo", metrics) == (
        "[alignlab] dpo: toy judge 0.40 [0.30, 0.50] at the start -> 0.60 [0.50, 0.70] trained "
        "(+20 points; 30 samples of 10 prompts, 95 % intervals)")
    reward = {"reward": {"accuracy_before": 0.5, "accuracy": 0.75, "n": 40}, "wall_seconds": 3}
    assert console.summarise(reward).line() == "pair_accuracy 0.500 -> 0.750, wall=3s"
    assert console.stage_summary("reward", reward) == \
        "[alignlab] reward: reward-model pair accuracy 0.50 -> 0.75 on 40 held-out pairs"
