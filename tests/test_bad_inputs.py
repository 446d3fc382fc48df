"""Bad input, as a user types it: one line naming the problem and the fix, exit code 2, no
traceback, and no run directory left behind.

The table runs each case as ``python -m alignlab ...`` in a fresh process. Nearly all of them
fail in the up-front validation, before torch is imported (about a second each).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, alignlab, one_error_line

PAIR = {"prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "hello"}],
        "rejected": [{"role": "assistant", "content": "go away"}]}
GOOD_LINE = json.dumps(PAIR)
CONSTITUTION = ("principles:\n  - name: p\n    critique: Is it harmful?\n"
                "    revision: Make it harmless.\n")


def _write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return make


def _files(*makers: Callable[[Path], None]) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        for m in makers:
            m(tmp)
    return make


_CONFIG = _write("m/config.json", '{"model_type": "llama"}')
_WEIGHTS = _write("m/model.safetensors", b"\0" * 8)
_TOKENIZER = _write("m/tokenizer.json", "{}")

# What each case needs on disk, by name; ``{tmp}`` in the arguments is the test's tmp_path.
FILES: dict[str, Callable[[Path], None]] = {
    "latin1": _write("d.jsonl", (GOOD_LINE + "\n" + '{"prompt": "caf\xe9"}\n').encode("latin-1")),
    "broken-line": _write("d.jsonl", f"{GOOD_LINE}\n{GOOD_LINE}\n" + '{"prompt": "x", \n'),
    "huge-line": _write("d.jsonl", json.dumps({**PAIR, "prompt": "x" * (2 << 20)}) + "\n"),
    "empty": _write("d.jsonl", ""),
    "blank": _write("d.jsonl", "\n  \n\n"),
    "csv": _write("d.csv", "prompt,chosen\nhi,hello\n"),
    "no-chosen": _write("d.jsonl", '{"prompt": "hi", "answer": "hello"}\n'),
    "broken-list": _write("d.json", "[\n" + GOOD_LINE + ",\n" + GOOD_LINE + "\n"),
    "latin1-list": _write("d.json", ("[\n" + GOOD_LINE + ",\n" + '{"prompt": "caf\xe9"}]')
                          .encode("latin-1")),
    "fake-parquet": _write("d.parquet", "this is not parquet\n"),
    "folder-broken": _files(_write("dir/a.jsonl", GOOD_LINE + "\n"),
                            _write("dir/b.jsonl", GOOD_LINE + "\n{oops\n")),
    "only-weights": _WEIGHTS,
    "weights-file": _WEIGHTS,
    "no-weights": _files(_CONFIG, _TOKENIZER),
    "pickle-only": _files(_CONFIG, _TOKENIZER, _write("m/pytorch_model.bin", b"\0")),
    "no-tokenizer": _files(_CONFIG, _WEIGHTS),
    "run-dir": _files(_write("run/model/config.json", "{}"),
                      _write("run/model/model.safetensors", b"\0")),
    "empty-folder": _write("m/.keep", ""),
    "const-bad-yaml": _write("c.yaml", "principles: [unclosed\n"),
    "const-list": _write("c.yaml", "- one\n- two\n"),
    "const-empty": _write("c.yaml", "principles: []\n"),
    "const-unknown-key": _write("c.yaml", CONSTITUTION + "principels: []\n"),
    "const-no-choice": _write("c.yaml", CONSTITUTION),
    "a-file": _write("f", "x"),
}

DPO_LOCAL = ["data=local", "method=dpo"]
GRPO = ["method=grpo", "method.reward_funcs=[toy_judge]"]

# (case id, arguments, a fragment the message must contain, files to create)
Case = tuple[str, list[str], str, str | None]
CASES: list[Case] = [
    # --- trainer arguments out of range (checked before TRL or torch would reject them)
    ("lr-negative", ["method.args.learning_rate=-1"], "learning_rate=-1", None),
    ("lr-zero", ["method.args.learning_rate=0"], "learning_rate=0", None),
    ("batch-size-zero", ["method.args.per_device_train_batch_size=0"], ">= 1", None),
    ("grad-accum-zero", ["method.args.gradient_accumulation_steps=0"], ">= 1", None),
    ("epochs-zero", ["method.args.num_train_epochs=0"], "num_train_epochs", None),
    ("max-steps-minus-2", ["method.args.max_steps=-2"], "-1 (train for", None),
    ("max-steps-zero", ["method.args.max_steps=0"], "max_steps=0", None),
    ("dpo-beta-zero", ["method=dpo", "method.args.beta=0"], "beta=0", None),
    ("kto-beta-negative", ["method=kto", "method.args.beta=-0.1"], "beta=-0.1", None),
    ("grpo-temperature-negative", [*GRPO, "method.args.temperature=-1"], "temperature", None),
    ("grpo-temperature-zero", [*GRPO, "method.args.temperature=0"], "temperature", None),
    # --- choices and bounds declared on alignlab's argument dataclasses (Literal, metadata)
    ("judge-gate-typo", ["method=judge", "method.args.gate=wran"], "Did you mean 'warn'", None),
    ("orpo-reference-ignored", ["method=orpo", "method.reference=builtin:llama-small"],
     "loads no reference model", None),
    ("judge-min-margin-half", ["method=judge", "method.args.min_margin=0.5"], "below 0.5", None),
    ("cai-sft-fraction-above-1", ["method=cai", "method.args.sft_fraction=1.5"], "at most 1",
     None),
    ("ppo-temperature-zero", ["method=ppo", "method.reward_model=builtin:llama-small",
                              "method.args.temperature=0"], "temperature=0", None),
    ("cai-backend-typo", ["method=cai", "method.args.backend=vlm"], "Did you mean 'vllm'", None),
    ("eval-split-typo", ["method=eval", "method.args.split=tset"], "Did you mean 'test'", None),
    ("judge-one-candidate", ["method=judge", "method.args.num_candidates=1"],
     "num_candidates=1 must be at least 2", None),
    ("eval-concurrency-zero", ["method=eval", "method.args.judge_concurrency=0"],
     "judge_concurrency=0 must be at least 1", None),
    ("grpo-one-generation", [*GRPO, "method.args.num_generations=1"], "num_generations", None),
    ("grpo-top-p-zero", [*GRPO, "method.args.top_p=0"], "top_p", None),
    ("weight-decay-negative", ["method.args.weight_decay=-0.1"], "weight_decay", None),
    ("max-grad-norm-negative", ["method.args.max_grad_norm=-1"], "max_grad_norm", None),
    ("logging-steps-zero", ["method.args.logging_steps=0"], "logging_steps", None),
    ("dpo-label-smoothing", ["method=dpo", "method.args.label_smoothing=0.9"], "0.5", None),
    ("hardware-args-lr", ["hardware.args.learning_rate=-1"], "hardware.args", None),
    ("model-train-args-batch", ["model.train_args.default.per_device_train_batch_size=0"],
     "model.train_args", None),
    ("lr-wrong-type", ["method.args.learning_rate=fast"], "wrong type", None),
    ("unknown-trainer-arg", ["method=dpo", "method.args.betta=0.1"], "Did you mean 'beta'", None),
    # --- data values
    ("max-samples-zero", ["data.max_samples=0"], "data.max_samples", None),
    ("max-samples-negative", ["data.max_samples=-5"], "data.max_samples", None),
    ("max-dropped-above-one", ["data.max_dropped=1.5"], "data.max_dropped", None),
    ("data-columns-twice", ["data.columns.chosen=a", "data.columns.rejected=a"], "data.columns",
     None),
    ("toy-no-demos", ["data.toy.n_sft=0"], "data.toy.n_sft", None),
    ("toy-rate-above-1", ["data.toy.error_rate=1.5"], "between 0 and 1", None),
    ("toy-test-fraction-1", ["data.toy.test_fraction=1"], "test_fraction", None),
    ("toy-unknown-skill", ["data.toy.n_skills=10", "data.toy.skills=[critque]"], "critique",
     None),
    # --- overrides and presets
    ("unknown-method", ["method=dpoo"], "Did you mean 'dpo'", None),
    ("unknown-group", ["modell=llama-small"], "not a config key", None),
    ("unknown-model-preset", ["model=smollm"], "Did you mean 'smollm2-135m'", None),
    ("unknown-hardware-preset", ["hardware=tpu"], "hardware preset", None),
    ("unknown-data-format", ["data.format=jsonl"], "data.format", None),
    ("seed-not-a-number", ["seed=abc"], "seed=abc", None),
    ("unknown-builtin-model", ["model.path=builtin:llama-huge"], "built-in model", None),
    ("lora-typo", ["model.lora.alhpa=8"], "Did you mean 'alpha'", None),
    ("lora-rank-zero", ["model.lora.r=0"], "model.lora.r=0", None),
    ("lora-rank-zero-after-true", ["model.lora=true", "model.lora.r=0"], "model.lora.r=0", None),
    ("lora-dropout-above-1", ["model.lora.dropout=1.5"], "model.lora.dropout", None),
    ("lora-not-understood", ["model.lora=maybe"], "not understood", None),
    ("reward-missing", ["method=grpo"], "needs a reward", None),
    # --- data files
    ("data-path-missing", ["data=local"], "needs data.path", None),
    ("data-path-not-found", [*DPO_LOCAL, "data.path={tmp}/nope.jsonl"], "does not exist", None),
    ("data-not-utf8", [*DPO_LOCAL, "data.path={tmp}/d.jsonl"], "not UTF-8", "latin1"),
    ("data-broken-line", [*DPO_LOCAL, "data.path={tmp}/d.jsonl"], "line 3", "broken-line"),
    ("data-huge-line", [*DPO_LOCAL, "data.path={tmp}/d.jsonl"], "line 1 is longer",
     "huge-line"),
    ("data-empty-file", [*DPO_LOCAL, "data.path={tmp}/d.jsonl"], "is empty", "empty"),
    ("data-blank-file", [*DPO_LOCAL, "data.path={tmp}/d.jsonl"], "is empty", "blank"),
    ("data-csv", [*DPO_LOCAL, "data.path={tmp}/d.csv"], "unsupported type", "csv"),
    ("data-broken-json-list", [*DPO_LOCAL, "data.path={tmp}/d.json"], "line 4", "broken-list"),
    ("data-list-not-utf8", [*DPO_LOCAL, "data.path={tmp}/d.json"], "line 3", "latin1-list"),
    ("data-fake-parquet", [*DPO_LOCAL, "data.path={tmp}/d.parquet"], "not a Parquet",
     "fake-parquet"),
    ("data-folder-broken-file", [*DPO_LOCAL, "data.path={tmp}/dir"], "line 2", "folder-broken"),
    # --- model folders
    ("model-path-missing", ["model.path=/nonexistent/model"], "does not exist", None),
    # a relative run folder was taken for a hub id, so nothing checked it before loading
    ("model-path-relative-missing", ["model.path=runs/no-such-run/model"], "does not exist",
     None),
    ("model-only-weights", ["model.path={tmp}/m"], "no config.json", "only-weights"),
    ("model-path-is-a-file", ["model.path={tmp}/m/model.safetensors"], "is a file",
     "weights-file"),
    ("model-no-weights", ["model.path={tmp}/m"], "no weights", "no-weights"),
    ("model-pickle-only", ["model.path={tmp}/m"], "allow_pickle", "pickle-only"),
    ("model-no-tokenizer", ["model.path={tmp}/m"], "no tokenizer", "no-tokenizer"),
    ("model-run-dir", ["model.path={tmp}/run"], "Did you mean", "run-dir"),
    ("model-empty-folder", ["model.path={tmp}/m"], "no config.json", "empty-folder"),
    ("reference-not-a-model", ["method=dpo", "method.reference={tmp}/m"], "method.reference",
     "empty-folder"),
    ("reward-model-is-a-file", [*GRPO, "method.reward_model={tmp}/m/model.safetensors"],
     "is a file", "weights-file"),
    # --- constitutions
    ("constitution-missing", ["method=cai", "constitution.path={tmp}/nope.yaml"], "not found",
     None),
    ("constitution-bad-yaml", ["method=cai", "constitution.path={tmp}/c.yaml"], "not valid YAML",
     "const-bad-yaml"),
    ("constitution-a-list", ["method=cai", "constitution.path={tmp}/c.yaml"], "mapping",
     "const-list"),
    ("constitution-no-principles", ["method=cai", "constitution.path={tmp}/c.yaml"],
     "no principles", "const-empty"),
    ("constitution-unknown-key", ["method=cai", "constitution.path={tmp}/c.yaml"],
     "not a constitution key", "const-unknown-key"),
    ("constitution-judge-no-choice", ["method=judge", "constitution.path={tmp}/c.yaml"],
     "choice", "const-no-choice"),
    # --- recipes
    ("recipe-unknown", ["recipe=dpoo"], "Did you mean 'dpo'", None),
    ("recipe-stage-method-typo", ["recipe=dpo", "stages.dpo.method=dppo"], "stage 'dpo'", None),
    ("recipe-stage-arg-typo", ["recipe=dpo", "stages.dpo.args.betta=0.1"], "Did you mean 'beta'",
     None),
    ("recipe-stage-beta-zero", ["recipe=dpo", "stages.dpo.args.beta=0"], "beta=0", None),
    ("recipe-later-stage-arg", ["recipe=instructgpt", "stages.eval.args.num_samples=0"],
     "stage 'eval'", None),
    ("recipe-link-to-later-stage", ["recipe=instructgpt", "stages.reward.init=ppo"],
     "earlier stage: sft", None),
    ("recipe-first-stage-link", ["recipe=dpo", "stages.sft.init=dpo"], "first stage", None),
    ("recipe-link-typo", ["recipe=instructgpt", "stages.ppo.reward_model=rewrd"],
     "Did you mean 'reward'", None),
    ("recipe-from-stage-typo", ["recipe=dpo", "from_stage=dop"], "from_stage", None),
    ("recipe-from-stage-needs-input", ["recipe=dpo", "from_stage=dpo"], "inputs.sft", None),
    ("recipe-input-missing", ["recipe=dpo", "from_stage=dpo", "inputs.sft=/nonexistent/sft"],
     "does not exist", None),
    # --- hardware
    ("hardware-gpu-without-cuda", ["hardware=gpu"], "NVIDIA GPU", None),
    ("hardware-qlora-without-cuda", ["hardware=qlora"], "NVIDIA GPU", None),
    ("hardware-machines-without-ip", ["hardware.num_machines=2"], "main_process_ip", None),
    ("hardware-bad-quantization", ["model.quantization=3bit"], "quantization", None),
    ("hardware-zero-without-deepspeed", ["hardware=zero2", "hardware.device=cpu"], "DeepSpeed",
     None),
    # --- run directories
    ("run-dir-is-a-file", ["hydra.run.dir={tmp}/f"], "existing file", "a-file"),
    ("run-dir-under-a-file", ["hydra.run.dir={tmp}/f/run"], "which is a file", "a-file"),
    ("run-dir-under-proc", ["hydra.run.dir=/proc/alignlab/run"], "cannot be created", None),
    ("run-dir-name-too-long", ["hydra.run.dir={tmp}/" + "r" * 300], "File name too long", None),
    ("data-path-name-too-long", [*DPO_LOCAL, "data.path={tmp}/" + "d" * 300 + ".jsonl"],
     "File name too long", None),
    # --- secrets: keys come from the environment, never from the command line
    ("secret-hub-token", ["method.args.hub_token=hf_abcdefghijklmnopqrstuvwxyz0123456789"],
     "environment", None),
    ("secret-key-as-api-key-env", ["method=judge", "method.args.api_key_env=my-key-1234"],
     "name of an environment variable", None),
    ("secret-api-key-arg", ["method=judge", "method.args.api_key=abc"], "api_key", None),
]

HEAVY = ("torch", "transformers", "trl")


def _run_case(tmp_path: Path, args: list[str],
              files: str | None) -> tuple[subprocess.CompletedProcess, Path, set[str]]:
    if files:
        FILES[files](tmp_path)
    run_dir = tmp_path / "run-out"
    argv = [f"hydra.run.dir={run_dir}", *(a.format(tmp=tmp_path) for a in args)]
    # Same entry point as `python -m alignlab`, with a report of the heavy modules it imported.
    code = textwrap.dedent(f"""
        import sys, atexit
        atexit.register(lambda: sys.stdout.write(
            "\\nHEAVY=" + ",".join(m for m in {HEAVY!r} if m in sys.modules) + "\\n"))
        sys.argv = ["alignlab", *{argv!r}]
        from alignlab.cli import main
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    heavy = proc.stdout.rpartition("HEAVY=")[2].strip()
    return proc, run_dir, {m for m in heavy.split(",") if m}


@pytest.mark.parametrize(("args", "expect", "files"),
                         [pytest.param(a, e, f, id=i) for i, a, e, f in CASES])
def test_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], expect: str,
                                     files: str | None, request: pytest.FixtureRequest) -> None:
    """Exit code 2, exactly one stderr line starting ``alignlab: error:``, no traceback, no
    run directory, and the answer comes before torch, transformers or trl is imported."""
    case = request.node.callspec.id
    proc, run_dir, heavy = _run_case(tmp_path, args, files)
    line = one_error_line(proc)
    assert expect in line, line
    assert not run_dir.exists()
    assert not heavy, f"{case} imported {heavy} before refusing the input"
    if "hydra.run.dir={tmp}/f" in args[0]:
        assert (tmp_path / "f").is_file()  # the file in the way is left alone


def test_dataset_without_the_columns_fails_before_training(tmp_path: Path) -> None:
    """Read by `datasets` (its progress bar shares stderr), refused before TRL's trainers."""
    FILES["no-chosen"](tmp_path)
    run_dir = tmp_path / "run"
    proc = alignlab(f"hydra.run.dir={run_dir}", *DPO_LOCAL, f"data.path={tmp_path}/d.jsonl",
                    check=False, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last.startswith("alignlab: error: ") and "'chosen'" in last
    assert not run_dir.exists()


def test_table_is_large_enough() -> None:
    """The README quotes the number of cases; keep it honest."""
    readme = (ROOT / "README.md").read_text()
    assert len(CASES) >= 60 and f"{len(CASES)} bad-input cases" in readme
    assert len({c[0] for c in CASES}) == len(CASES)


# ---------------------------------------------------------------------------------------------
# LoRA: every spelling the README shows means what it says (composed in-process: fast).


def _lora(*overrides: str) -> dict[str, Any]:
    from alignlab import cli, config

    cfg = cli.compose(list(overrides))
    return config.normalize_lora(config.to_plain(cfg.model.lora))


@pytest.mark.parametrize("overrides", [
    ["model.lora=true", "model.lora.r=8"],
    ["model.lora.r=8", "model.lora=true"],
    ["model.lora.r=8"],
    ["model.lora={r:8}"],
], ids=["true-then-r", "r-then-true", "r-alone", "mapping"])
def test_lora_spellings_turn_lora_on_with_r(overrides: list[str]) -> None:
    lora = _lora(*overrides)
    assert lora["enabled"] is True and lora["r"] == 8


@pytest.mark.parametrize("overrides", [
    ["model.lora.r=8", "model.lora=false"],
    ["model.lora=false", "model.lora.r=8"],
    ["model.lora.enabled=false", "model.lora.r=8"],
    [],
], ids=["r-then-false", "false-then-r", "enabled-false", "default"])
def test_lora_off_when_said_so(overrides: list[str]) -> None:
    assert _lora(*overrides)["enabled"] is False


def test_lora_true_keeps_defaults_and_qlora_keeps_r() -> None:
    assert _lora("model.lora=true") == {"enabled": True, "r": 16, "alpha": 32, "dropout": 0.05,
                                        "target_modules": "all-linear"}
    from alignlab import cli

    assert cli.lora_overrides(["model.lora=true,false"]) == ["++model.lora.enabled=true,false"]


# ---------------------------------------------------------------------------------------------
# Recipes: link messages list the stages a link may name.


def test_link_to_a_later_stage_lists_the_earlier_ones() -> None:
    from alignlab import cli
    from alignlab.errors import AlignlabError

    with pytest.raises(AlignlabError) as err:
        cli.compose(["recipe=instructgpt", "stages.ppo.reward_model=eval"])
    assert "runs later" in str(err.value) and "earlier stage: sft, reward" in str(err.value)
    assert "Valid choices: ." not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Run time: what the trainer rejects while it is set up is a mistake (exit 2); anything else is
# a crash (exit 1, traceback in the run's log, run directory kept).


class _FakeTrainer:
    """Just enough of a transformers Trainer for ``training.train``'s set-up boundary."""

    def __init__(self, begin_first: bool) -> None:
        from types import SimpleNamespace

        self.begin_first, self.callbacks = begin_first, []
        self.args = SimpleNamespace(disable_tqdm=True)

    def add_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def remove_callback(self, callback: Any) -> None:
        pass

    def train(self, resume_from_checkpoint: Any = None) -> None:
        if self.begin_first:
            for cb in self.callbacks:
                cb.on_train_begin(None, None, None)
        raise ValueError("Invalid learning rate: -1")


def test_value_error_before_the_first_step_is_a_mistake(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from alignlab import training
    from alignlab.errors import AlignlabError

    cfg = OmegaConf.create({"resume": False, "method": {"name": "sft"}})
    with pytest.raises(AlignlabError, match="rejected the configuration: Invalid learning"):
        training.train(_FakeTrainer(begin_first=False), cfg, tmp_path)
    with pytest.raises(ValueError):  # once training has begun it is a crash
        training.train(_FakeTrainer(begin_first=True), cfg, tmp_path)
    with pytest.raises(AlignlabError, match="DPOTrainer rejected"), \
            training.setup_errors("DPOTrainer"):
        raise ValueError("multi\nline")


def test_crash_keeps_traceback_in_log_and_run_dir(tmp_path: Path) -> None:
    """An unknown error: one console line pointing at cli.log, which holds the traceback."""
    run_dir = tmp_path / "run"
    code = textwrap.dedent(f"""
        import sys
        from alignlab import cli
        def boom(*args, **kwargs):
            raise RuntimeError("boom inside a stage")
        cli.run_stage = boom
        sys.argv = ["alignlab", "hydra.run.dir={run_dir}"]
        cli.main()
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("alignlab: crashed: RuntimeError: boom")
    assert str(run_dir / "cli.log") in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Traceback" in (run_dir / "cli.log").read_text()


def test_failed_recipe_stage_keeps_finished_stages(tmp_path: Path) -> None:
    from alignlab import cli, runs

    (tmp_path / "sft" / "model").mkdir(parents=True)
    (tmp_path / "sft" / "model" / "model.safetensors").write_bytes(b"\0")
    (tmp_path / "dpo" / "checkpoints").mkdir(parents=True)  # the trainer's empty output dir
    cli._remove_unfinished(tmp_path)
    assert (tmp_path / "sft" / "model").is_dir()
    lone = tmp_path / "lone"
    runs.note_created(lone)  # as lock_run_dir records a folder this process creates
    (lone / "checkpoints").mkdir(parents=True)
    cli._remove_unfinished(lone)
    assert not lone.exists()
    mine = tmp_path / "mine"  # a folder that existed before the run is never removed
    (mine / "checkpoints").mkdir(parents=True)
    cli._remove_unfinished(mine)
    assert mine.is_dir()
    rows = tmp_path / "rows-run"  # nor one holding rows a generation stage wrote
    runs.note_created(rows)
    (rows / "labels").mkdir(parents=True)
    (rows / "labels" / "shard-00000.jsonl").write_text('{"key": "a"}\n')
    cli._remove_unfinished(rows)
    assert (rows / "labels" / "shard-00000.jsonl").exists()
