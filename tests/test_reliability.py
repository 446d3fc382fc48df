"""Reliability: secrets never reach disk, saved configs reproduce their run, run directories
are named and locked, and the final model save is atomic."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from alignlab import cli, config, runs
from alignlab.errors import AlignlabError
from tests.conftest import ROOT, alignlab

# Shaped like real credentials (an HF token is "hf_" + 34 letters), so value-based checks
# see them; never valid anywhere.
HF_SECRET = "hf_" + "AlignlabTestSecretDoNotUseXyzAbcdQ"
SK_SECRET = "sk-" + "alignlabTestSecret0123456789abcdef"
# A tiny SFT: two updates on a small toy set, a checkpoint after each (about 15 s).
TINY_SFT = ["method.args.max_steps=2", "method.args.save_steps=1", "quick_eval=false",
            "report_to=none", "data.toy.n_sft=64"]


def files_containing(root: Path, needle: str) -> list[Path]:
    """Every file under ``root`` (binary ones too) whose bytes contain ``needle``."""
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


# Item 8: secrets ------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    [f"method.args.hub_token={HF_SECRET}"],  # a credential key
    [f"method.args.run_name={HF_SECRET}"],  # a credential-looking value under any key
    [f"method.args.hub_token={SK_SECRET}"],
    ["-m", f"method.args.hub_token={HF_SECRET}"],  # a sweep saves its overrides too
])
def test_secret_override_is_refused_before_anything_is_written(tmp_path: Path,
                                                               args: list[str]) -> None:
    run_dir = tmp_path / "run"
    proc = alignlab(*args, f"hydra.run.dir={run_dir}", f"hydra.sweep.dir={run_dir}",
                    check=False, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "HF_TOKEN environment variable" in err and "\n" not in err, err
    assert HF_SECRET not in proc.stdout + proc.stderr and SK_SECRET not in proc.stderr
    assert not run_dir.exists()


def test_secret_in_a_recipe_stage_or_yaml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AlignlabError, match=r"stages\.dpo\.args\.hub_token"):
        cli.compose(["recipe=dpo", f"stages.dpo.args.hub_token={HF_SECRET}",
                     f"run_dir={tmp_path}"])
    with pytest.raises(AlignlabError, match="HF_TOKEN"):  # resolved from the env at run time
        cli.compose(["method.args.hub_token=${oc.env:HF_TOKEN}", f"run_dir={tmp_path}"])
    cli.compose(["method.args.hub_token=null", f"run_dir={tmp_path}"])  # no secret: fine


@pytest.mark.slow
def test_env_token_reaches_no_file_of_the_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {"HF_TOKEN": HF_SECRET, "HUGGING_FACE_HUB_TOKEN": HF_SECRET, "OPENAI_API_KEY": SK_SECRET}
    proc = alignlab(f"hydra.run.dir={run_dir}", *TINY_SFT, env=env)
    assert (run_dir / runs.MARKER).exists()
    assert (run_dir / "model" / "training_args.bin").exists()
    assert (run_dir / "checkpoints" / "checkpoint-1" / "training_args.bin").exists()
    for secret in (HF_SECRET, SK_SECRET):
        assert files_containing(run_dir, secret) == []
        assert secret not in proc.stdout + proc.stderr


# Item 9: redaction keeps what reproduces the run ----------------------------------------------


def test_saved_config_keeps_token_counts_special_tokens_and_env_names(tmp_path: Path) -> None:
    cfg = cli.compose(["method.args.pad_token='<|pad|>'", "method.args.eos_token='<|im_end|>'",
                       f"run_dir={tmp_path}"])
    runs.write_config(tmp_path, cfg)
    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert saved.method.args.pad_token == "<|pad|>"
    assert saved.method.args.eos_token == "<|im_end|>"

    cfg = cli.compose(["method=cai", "method.args.max_new_tokens=64", f"run_dir={tmp_path}"])
    runs.write_config(tmp_path, cfg)
    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert saved.method.args.max_new_tokens == 64
    assert saved.method.args.api_key_env == "OPENAI_API_KEY"
    assert "<redacted>" not in (tmp_path / "config.yaml").read_text()


def test_redact_blanks_credentials_only() -> None:
    out = runs.redact({"hub_token": "abc", "api_key": "k", "password": "p", "token": "t",
                       "max_new_tokens": 32, "pad_token": "<pad>", "api_key_env": "MY_KEY",
                       "average_tokens_across_devices": True, "hub_token_unset": None,
                       "url": f"https://x.test/?key={HF_SECRET}", "nested": [{"secret": "s"}],
                       "path": "/data/task-" + "x" * 40})
    assert out["hub_token"] == out["api_key"] == out["password"] == out["token"] == "<redacted>"
    assert out["nested"] == [{"secret": "<redacted>"}]
    assert out["url"] == "https://x.test/?key=<redacted>"
    assert (out["max_new_tokens"], out["pad_token"], out["api_key_env"]) == (32, "<pad>", "MY_KEY")
    assert out["average_tokens_across_devices"] is True
    assert out["path"] == "/data/task-" + "x" * 40  # "sk-" inside a word is no key


# Item 10: runs/<method or recipe>/<timestamp> -------------------------------------------------


@pytest.mark.parametrize(("overrides", "parent"), [
    ([], "sft"), (["method=dpo"], "dpo"), (["recipe=instructgpt"], "instructgpt"),
])
def test_run_dir_is_named_after_the_method_or_recipe(overrides: list[str], parent: str) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config.register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config.conf_dir()), version_base=None):
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    run_dir = Path(OmegaConf.select(cfg, "hydra.run.dir"))
    assert run_dir.parts[:2] == ("runs", parent), run_dir
    assert run_dir.name == config.run_id()


# Item 12: one run per run directory ----------------------------------------------------------


@pytest.mark.slow
def test_second_run_on_the_same_dir_is_refused_and_the_first_finishes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "alignlab", f"hydra.run.dir={run_dir}", "seed=7",
         "method.args.max_steps=40", "method.args.save_strategy=no", "quick_eval=false",
         "report_to=none", "data.toy.n_sft=256"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = run_dir / ".hydra" / "overrides.yaml"  # Hydra's job has begun
        deadline = time.time() + 120
        while not started.exists() and first.poll() is None:
            assert time.time() < deadline, "the first run never started"
            time.sleep(0.1)
        second = alignlab(f"hydra.run.dir={run_dir}", "seed=8", *TINY_SFT, check=False,
                          timeout=120)
        recipe = alignlab(f"hydra.run.dir={run_dir}", "recipe=dpo", check=False, timeout=120)
        assert first.poll() is None, "the first run ended before the test could race it"
        for proc in (second, recipe):
            err = proc.stderr.strip()
            assert proc.returncode == 2, proc.stdout + proc.stderr
            assert "is in use by another alignlab run" in err and "\n" not in err, err
            assert str(first.pid) in err
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out[-2000:] + err[-3000:]
    assert (run_dir / runs.MARKER).exists() and (run_dir / "model" / "config.json").exists()
    assert "seed=7" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "seed=8" not in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert OmegaConf.load(run_dir / "config.yaml").seed == 7
    assert runs.read_json(run_dir / "metrics.json")["train"]["train_loss"] > 0
    assert not list(run_dir.glob("checkpoints/checkpoint-*"))  # nothing of the refused run


def test_lock_is_released_when_the_holder_dies(tmp_path: Path) -> None:
    code = (f"import os; from alignlab import runs; runs.lock_run_dir({str(tmp_path)!r}); "
            "os._exit(0)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
    runs.lock_run_dir(tmp_path)  # free again: the kernel dropped the dead process's lock
    runs.lock_run_dir(tmp_path)  # and this process may take it again without blocking itself


# Item 13: the final save is atomic -----------------------------------------------------------


@pytest.mark.slow
def test_kill_during_final_save_leaves_no_done_and_no_half_model(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    killed = alignlab(f"hydra.run.dir={run_dir}", *TINY_SFT, check=False,
                      env={"ALIGNLAB_TEST_KILL_IN_SAVE": "1"})
    assert killed.returncode == 75, killed.stdout[-2000:] + killed.stderr[-3000:]
    assert not (run_dir / runs.MARKER).exists()
    assert not (run_dir / "model").exists(), sorted(p.name for p in (run_dir / "model").iterdir())
    assert (run_dir / "checkpoints" / "checkpoint-2").is_dir()

    env = {k: v for k, v in os.environ.items() if k != "ALIGNLAB_TEST_KILL_IN_SAVE"}
    resumed = subprocess.run([sys.executable, "-m", "alignlab", f"hydra.run.dir={run_dir}",
                              *TINY_SFT, "resume=true"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert (run_dir / runs.MARKER).exists()
    model = run_dir / "model"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md"):
        assert (model / name).exists(), name
    assert not runs.partial_dir(model).exists()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(model)
    AutoTokenizer.from_pretrained(model)


def test_models_are_freed_before_the_report_renders(tmp_path: Path) -> None:
    """The trainer and its models sit in reference cycles that reference counting never frees;
    the stage collects them before the report renders (and before a recipe's next stage), so
    the report does not run next to the training's weights. Checked in a fresh interpreter
    (pytest's own log and warning capture would keep objects alive)."""
    code = textwrap.dedent(f"""
        import gc, sys
        from pathlib import Path
        from alignlab import cli, stage

        def probe(run_dir):
            from transformers import PreTrainedModel
            alive = [type(o).__name__ for o in gc.get_objects() if isinstance(o, PreTrainedModel)]
            print("ALIVE", len(alive), alive)

        cfg = cli.compose(["method.args.max_steps=2", "method.args.save_strategy=no",
                           "report_to=none", "quick_eval=false", "run_dir={tmp_path}"])
        stage.run_stage(cfg, Path({str(tmp_path)!r}), render=probe)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ALIVE 0 []" in proc.stdout, proc.stdout[-1000:]
