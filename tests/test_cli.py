"""The command line before any training: help, config printing and config errors.

These must answer fast and must not import torch, transformers or trl.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT, alignlab

HEAVY = ("torch", "transformers", "trl", "datasets")


def run_and_list_modules(*args: str) -> tuple[int, str, str, set[str]]:
    """Run the CLI in a fresh interpreter and report which heavy modules it imported."""
    code = textwrap.dedent(f"""
        import sys, atexit
        def report():
            heavy = [m for m in {HEAVY!r} if m in sys.modules]
            sys.stderr.write("HEAVY=" + ",".join(heavy) + "\\n")
        atexit.register(report)
        sys.argv = ["alignlab", *{list(args)!r}]
        from alignlab.cli import main
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    heavy_line = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY=")][-1]
    heavy = {m for m in heavy_line[len("HEAVY="):].split(",") if m}
    stderr = "\n".join(ln for ln in proc.stderr.splitlines() if not ln.startswith("HEAVY="))
    return proc.returncode, proc.stdout, stderr, heavy


def test_help_is_light() -> None:
    code, out, _, heavy = run_and_list_modules("--help")
    assert code == 0 and "Usage: python -m alignlab" in out
    assert "method: " in out and "dpo" in out and "recipe: " in out
    assert not heavy


def test_cfg_job_is_light_and_shows_overrides() -> None:
    code, out, _, heavy = run_and_list_modules("--cfg", "job", "method=dpo",
                                               "method.args.beta=0.05")
    assert code == 0, out
    assert "name: dpo" in out and "beta: 0.05" in out
    assert not heavy


def test_cfg_job_composes_once_and_prints_what_hydra_prints(monkeypatch, capsys) -> None:
    """``--cfg job`` prints the config it has just composed and checked instead of handing
    over to Hydra, which would compose it again (half of the command's time). The text is
    exactly Hydra's: ``-p _global_`` selects the same config but goes through Hydra."""
    import hydra

    from alignlab import cli

    def no_second_compose(**_: object) -> None:
        raise AssertionError("--cfg job went through hydra.main")

    args = ["--cfg", "job", "method=dpo", "model=smollm2-135m", "method.args.beta=0.05"]
    with monkeypatch.context() as m:
        m.setattr(hydra, "main", no_second_compose)
        cli.main(list(args))
    fast = capsys.readouterr().out
    proc = subprocess.run([sys.executable, "-m", "alignlab", *args, "-p", "_global_"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert fast == proc.stdout
    assert "beta: 0.05" in fast and "name: smollm2-135m" in fast


def test_a_plain_run_composes_and_validates_its_config_once(tmp_path) -> None:
    """A run with no Hydra flag composes its config once (it composed four times: checked,
    its run directory planned, Hydra's mode read, then run) and validates it once (twice);
    the run directory, .hydra/ and cli.log are what hydra.main made."""
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        import atexit, sys
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from alignlab import validation
        calls = {{"compose": 0, "validate": 0}}
        def counted(name, fn):
            def wrapper(*a, **k):
                calls[name] += 1
                return fn(*a, **k)
            return wrapper
        ConfigLoaderImpl.load_configuration = counted("compose",
                                                      ConfigLoaderImpl.load_configuration)
        validation.validate = counted("validate", validation.validate)
        atexit.register(lambda: sys.stderr.write(f"CALLS={{calls}}\\n"))
        from alignlab.cli import main
        main(["method=sft", "model=llama-small", "method.args.max_steps=1", "quick_eval=false",
              "report_to=none", "data.toy.n_sft=32", "hydra.run.dir={run}"])
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CALLS={'compose': 1, 'validate': 1}" in proc.stderr, proc.stderr[-2000:]
    assert (run / "DONE").exists() and (run / "cli.log").exists()
    assert "++method.args.max_steps=1" in (run / ".hydra" / "overrides.yaml").read_text()
    hydra_cfg = (run / ".hydra" / "hydra.yaml").read_text()
    assert "name: cli" in hydra_cfg and "mode: RUN" in hydra_cfg
    assert "[alignlab] run directory:" in (run / "cli.log").read_text()


def test_cfg_job_imports_no_numpy() -> None:
    code, _, _, _ = run_and_list_modules("--cfg", "job")
    probe = subprocess.run([sys.executable, "-c", "import sys; sys.argv = ['alignlab', '--cfg', "
                            "'job']\nfrom alignlab.cli import main\ntry:\n    main()\n"
                            "finally:\n    print('NUMPY', 'numpy' in sys.modules)"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert code == 0 and "NUMPY False" in probe.stdout, probe.stdout[-500:]


@pytest.mark.parametrize(("args", "expect"), [
    (["method=dpoo"], "Did you mean 'dpo'"),
    (["method=dpo", "method.args.betta=0.1"], "Did you mean 'beta'"),
    (["method.args.learning_rate=fast"], "wrong type"),
    (["model.path=/nope"], "does not exist"),
    (["hardware=gpu"], "needs an NVIDIA GPU"),
    (["modell=llama-small"], "not a config key"),
    (["model.lora.alhpa=8"], "Did you mean 'alpha'"),
    (["data.format=jsonl"], "data.format"),
    (["model=smollm"], "Did you mean 'smollm2-135m'"),
])
def test_config_errors_are_one_clear_line(args: list[str], expect: str) -> None:
    code, _, err, heavy = run_and_list_modules(*args)
    assert code == 2
    assert expect in err
    assert "Traceback" not in err and err.count("\n") <= 1
    assert not heavy, f"config error path imported {heavy}"


def test_error_leaves_no_run_directory(tmp_path) -> None:
    run_dir = tmp_path / "run"
    proc = alignlab(f"hydra.run.dir={run_dir}", "method=dpoo", check=False)
    assert proc.returncode == 2
    assert not run_dir.exists()
