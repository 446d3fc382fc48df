"""A regular (non-editable) install works from any folder: the wheel carries the Hydra
configs, the recipes and the accelerate presets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
         timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_wheel_install_runs_from_another_folder(tmp_path: Path) -> None:
    # Build from a copy, as `pip install .` would, so the shared checkout gets no build/.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "alignlab", src / "alignlab", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    dist, site = tmp_path / "dist", tmp_path / "site"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", str(dist), str(src)], cwd=tmp_path)
    wheel = next(dist.glob("alignlab-*.whl"))
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
          str(wheel)], cwd=tmp_path)
    shutil.rmtree(src)  # nothing of the source may be used from here on

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed copy first on the path (before the dev checkout's editable install).
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = _run([sys.executable, "-c", "import alignlab; print(alignlab.__file__)"],
                 cwd=elsewhere, env=env).stdout.strip()
    assert Path(where).is_relative_to(site), where
    installed = site / "alignlab"
    for path in ("conf/config.yaml", "conf/recipe/dpo.yaml", "conf/hardware/cpu-ddp.yaml",
                 "conf/hydra/launcher/alignlab_slurm.yaml", "accelerate/ddp.yaml",
                 "assets/llama-small/tokenizer.json", "assets/card/model_card.md.jinja",
                 "report/templates/page.md.j2", "report/templates/page.html.j2",
                 "report/templates/style.css"):
        assert (installed / path).is_file(), path

    cfg = _run([sys.executable, "-m", "alignlab", "--cfg", "job", "recipe=dpo",
                "hardware=cpu-ddp"], cwd=elsewhere, env=env).stdout
    assert "name: dpo" in cfg and "cpu-ddp" in cfg

    run_dir = tmp_path / "run"
    _run([sys.executable, "-m", "alignlab", f"hydra.run.dir={run_dir}",
          "method.args.max_steps=2", "quick_eval=false", "report_to=none", "data.toy.n_sft=64"],
         cwd=elsewhere, env=env)
    assert (run_dir / "DONE").exists() and (run_dir / "model" / "model.safetensors").exists()
    assert "## Training" in (run_dir / "report.md").read_text()  # the templates came along
    assert not (elsewhere / "runs").exists()
