"""What alignlab never does to a user's disk: delete or overwrite what it did not create, save a
broken model as done, or lose the work a stopped run had saved.

Every run here is a real ``python -m alignlab`` process (signals are real signals).
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, alignlab, one_error_line
from tests.test_bad_inputs import CASES, FILES

TINY_SFT = ["method.args.max_steps=2", "method.args.save_strategy=no", "report_to=none",
            "quick_eval=false"]


def _user_folder(path: Path) -> dict[str, str]:
    """A folder holding a user's work; returns what must still be there afterwards."""
    files = {"thesis.tex": "\\documentclass{article}\n", "src/main.py": "print('mine')\n",
             "notes/.hidden": "x"}
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return files


def _intact(path: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        assert (path / name).read_text() == text, f"{name} was lost or changed"


def test_user_folder_survives_every_refusal_in_the_table(tmp_path: Path) -> None:
    """Each bad-input case, run with a folder of the user's as hydra.run.dir (in one process,
    one folder per case): the case is refused and the folder keeps every file."""
    cases = []
    for case, args, _expect, files in CASES:
        if any(a.startswith("hydra.run.dir=") for a in args):
            continue  # those cases are about the run directory itself
        where = tmp_path / case
        where.mkdir()
        if files:
            FILES[files](where)
        user = where / "project"
        user.mkdir()
        cases.append((case, str(user), [a.format(tmp=where) for a in args]))
        files = _user_folder(user)
    code = textwrap.dedent(f"""
        import sys
        from alignlab import cli
        codes = {{}}
        for case, user, args in {cases!r}:
            try:
                cli.main(["hydra.run.dir=" + user, *args])
                codes[case] = 0
            except SystemExit as done:
                codes[case] = done.code
        print("CODES=" + repr(codes))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    codes = ast.literal_eval(proc.stdout.rpartition("CODES=")[2].strip())
    assert len(codes) == len(cases) and all(c == 2 for c in codes.values()), codes
    for _case, user, _ in cases:
        _intact(Path(user), files)


def test_failure_after_set_up_keeps_the_users_folder(tmp_path: Path) -> None:
    """A mistake found once the run directory is set up (a data file without the columns,
    read by `datasets` after Hydra wrote .hydra/): an existing folder keeps all its files, and
    a folder this run created is removed again."""
    (tmp_path / "d.jsonl").write_text('{"prompt": "hi", "answer": "hello"}\n')
    args = ["method=dpo", "data=local", f"data.path={tmp_path / 'd.jsonl'}"]
    user = tmp_path / "project"
    user.mkdir()
    files = _user_folder(user)
    line = one_error_line(alignlab(f"hydra.run.dir={user}", *args, check=False),
                          ours_only=True)
    assert "'chosen'" in line
    _intact(user, files)
    fresh = tmp_path / "fresh"
    one_error_line(alignlab(f"hydra.run.dir={fresh}", *args, check=False), ours_only=True)
    assert not fresh.exists()
    # the working directory is a folder that existed before, too
    cwd = subprocess.run([sys.executable, "-m", "alignlab", "hydra.run.dir=.", *args],
                         cwd=user, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    one_error_line(cwd, ours_only=True)
    _intact(user, files)


@pytest.mark.parametrize("failure", [
    'AlignlabError("The server refused a request: the prompt is too long.")',
    'RuntimeError("the connection to the server was reset")'])  # a crash: exit 1
def test_rows_written_before_a_failing_chunk_are_kept_and_resume(failure: str,
                                                                 tmp_path: Path) -> None:
    """A generation stage whose second chunk fails (as an over-long prompt at a server does,
    or as a crash) keeps the rows of the first, says how to resume, and resume=true finishes
    the rest."""
    run = tmp_path / "run"
    args = ["method=cai", "constitution=toy", "method.args.max_new_tokens=6",
            "method.args.batch_size=2", "method.args.max_prompts=3", "model.from_sft=false",
            f"hydra.run.dir={run}"]
    code = textwrap.dedent(f"""
        from alignlab import rows
        from alignlab.errors import AlignlabError
        real = rows.run_rows
        def failing(items, work, folder, **kw):
            calls = []
            def second_fails(chunk):
                calls.append(1)
                if len(calls) == 2:
                    raise {failure}
                return work(chunk)
            return real(items, second_fails, folder, **kw)
        rows.run_rows = failing
        from alignlab import cli
        cli.main({args!r})
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    if failure.startswith("AlignlabError"):
        line = one_error_line(proc, ours_only=True)
    else:  # a crash: exit 1, one line pointing at the traceback in the log, and the rows
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("alignlab: ")]
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
        line = lines[0]
        assert line.startswith("alignlab: crashed: RuntimeError") and "Traceback" not in \
            proc.stderr, proc.stderr[-2000:]
    assert "resume=true" in line and "rows written so far" in line, line
    kept = [json.loads(x) for p in sorted((run / "rows").glob("shard-*.jsonl"))
            for x in p.read_text().splitlines()]
    assert len(kept) == 2 and not (run / "DONE").exists()
    alignlab(*args, "resume=true")
    after = [json.loads(x) for p in sorted((run / "rows").glob("shard-*.jsonl"))
             for x in p.read_text().splitlines()]
    keys = [r["key"] for r in after]
    assert after[:2] == kept and len(set(keys)) == len(keys)  # kept as they were, none redone
    assert len(keys) == json.loads((run / "metrics.json").read_text())["rows"] > 2
    assert (run / "DONE").exists()


def test_a_finished_run_is_refused_unless_overwrite(tmp_path: Path) -> None:
    run = tmp_path / "run"
    alignlab(f"hydra.run.dir={run}", *TINY_SFT)
    weights = run / "model" / "model.safetensors"
    before = {p: p.stat().st_mtime_ns for p in [weights, *run.glob(".hydra/*"),
                                                 run / "metrics.json", run / "config.yaml"]}
    line = one_error_line(alignlab(f"hydra.run.dir={run}", *TINY_SFT, "seed=3", check=False),
                          ours_only=True)
    assert "finished run" in line and "overwrite=true" in line
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing rewritten
    alignlab(f"hydra.run.dir={run}", *TINY_SFT, "seed=3", "overwrite=true")
    assert weights.stat().st_mtime_ns != before[weights] and (run / "DONE").exists()
    assert "seed: 3" in (run / "config.yaml").read_text()


def test_a_refused_recipe_rerun_changes_nothing(tmp_path: Path) -> None:
    """A finished stage made with another config: refused before Hydra writes anything."""
    run = tmp_path / "recipe"
    (run / "sft").mkdir(parents=True)
    (run / "sft" / "DONE").write_text(json.dumps({"method": "sft", "fingerprint": "other"}))
    (run / ".hydra").mkdir()
    mine = {run / "config.yaml": "seed: 1\n", run / ".hydra" / "overrides.yaml": "- seed=1\n"}
    for path, text in mine.items():
        path.write_text(text)
    line = one_error_line(alignlab(f"hydra.run.dir={run}", "recipe=dpo", check=False),
                          ours_only=True)
    assert "different config" in line
    assert {p: p.read_text() for p in mine} == mine
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "config.yaml", "sft"]


def test_diverged_training_saves_no_model_and_no_done(tmp_path: Path) -> None:
    """A finite but absurd learning rate blows the weights up: one line, exit 2, no model."""
    run = tmp_path / "run"
    line = one_error_line(alignlab(f"hydra.run.dir={run}", *TINY_SFT,
                                    "method.args.max_steps=4", "method.args.learning_rate=1e30",
                                    "method.args.max_grad_norm=0", check=False), ours_only=True)
    assert "diverged" in line and "learning_rate" in line
    assert not (run / "model").exists() and not (run / "DONE").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_signal_checkpoints_and_resume_continues(tmp_path: Path, sig: signal.Signals) -> None:
    """SLURM preemption (SIGTERM) and Ctrl-C (SIGINT) during training: one line, a checkpoint
    of the step just done, an entry in cli.log, the lock released; resume=true finishes."""
    run = tmp_path / "run"
    args = [f"hydra.run.dir={run}", "method.args.max_steps=40", "method.args.logging_steps=1",
            "method.args.save_strategy=no", "report_to=none", "quick_eval=false"]
    out, err_file = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as fo, err_file.open("w") as fe:
        proc = subprocess.Popen([sys.executable, "-m", "alignlab", *args], cwd=ROOT,
                                stdout=fo, stderr=fe, text=True)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None \
                and "step 2/40" not in out.read_text():
            time.sleep(0.1)  # the console line of step 2: training is under way
        proc.send_signal(sig)
        proc.wait(timeout=300)
    err = err_file.read_text()
    assert proc.returncode == 128 + sig, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("alignlab: ")]
    assert len(lines) == 1 and f"interrupted by {sig.name}" in lines[0], err[-3000:]
    assert "resume=true" in lines[0] and "Traceback" not in err
    ckpt = sorted((run / "checkpoints").glob("checkpoint-*"))
    assert ckpt and (ckpt[-1] / "trainer_state.json").exists()
    stopped_at = int(ckpt[-1].name.split("-")[1])
    assert 0 < stopped_at < 40 and not (run / "DONE").exists()
    assert f"interrupted by {sig.name}" in (run / "cli.log").read_text()
    resumed = alignlab(*args, "resume=true")
    assert f"resuming from {ckpt[-1]}" in resumed.stdout + resumed.stderr
    history = json.loads((run / "metrics.json").read_text())["log_history"]
    assert max(row.get("step", 0) for row in history) == 40  # it went on to the last step
    assert (run / "DONE").exists() and (run / "model" / "model.safetensors").exists()


def test_sweep_members_are_checked_before_the_first_trains(tmp_path: Path) -> None:
    """A typo in any member is one line before anything runs, and leaves no sweep folder."""
    sweep = tmp_path / "sweep"
    for args, expect in ((["method=dpo,dpoo"], "Did you mean 'dpo'"),
                         (["method.args.learning_rate=1e-4,-1"], "learning_rate=-1"),
                         (["method.args.learning_rate=range("], "Bad sweep override")):
        line = one_error_line(alignlab("-m", f"hydra.sweep.dir={sweep}", *TINY_SFT, *args,
                                        check=False), ours_only=True)
        assert expect in line, line
        assert not sweep.exists()


def test_unwritable_cache_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    proc = alignlab(f"hydra.run.dir={tmp_path / 'run'}", check=False,
                    env={"ALIGNLAB_CACHE": str(tmp_path / "file" / "cache")})
    assert "ALIGNLAB_CACHE" in one_error_line(proc, ours_only=True)
    assert not (tmp_path / "run").exists()
