"""Multi-process runs: ``python -m alignlab hardware=multi-gpu`` re-launches itself under
``accelerate launch`` (as the ``trl`` CLI does); ``accelerate launch -m alignlab`` works directly.

All ranks share one run directory: the parent exports ``ALIGNLAB_RUN_ID`` before launching, so
every rank resolves the same ``hydra.run.dir``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from alignlab import config, console

ACCELERATE_CONFIGS = Path(__file__).resolve().parent / "accelerate"


def already_launched() -> bool:
    """True inside a process started by accelerate/torchrun (or any torch.distributed launcher)."""
    return "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ


def visible_gpus() -> int:
    """Number of GPUs this process may use, without importing torch."""
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if devices is not None:
        return len([d for d in devices.split(",") if d.strip()])
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return len([ln for ln in out.stdout.splitlines() if ln.startswith("GPU ")])


def processes_per_machine(hw: Any) -> int:
    return hw.num_processes if hw.num_processes > 0 else max(1, visible_gpus())


def needs_launch(hw: Any) -> bool:
    return not already_launched() and (processes_per_machine(hw) > 1 or hw.num_machines > 1)


def accelerate_config_file(name: str) -> Path:
    path = ACCELERATE_CONFIGS / f"{name}.yaml"
    return path if path.exists() else Path(name).expanduser()


def launch_command(hw: Any, argv: list[str]) -> list[str]:
    """The ``accelerate launch`` command that runs ``python -m alignlab ARGV`` on every rank."""
    per_machine = processes_per_machine(hw)
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if hw.accelerate_config:
        cmd += ["--config_file", str(accelerate_config_file(hw.accelerate_config))]
    elif hw.device == "cpu":
        # `--cpu` would start ONE process; --multi_gpu + ACCELERATE_USE_CPU gives DDP over gloo.
        cmd += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        cmd += ["--multi_gpu"]
    cmd += ["--num_processes", str(per_machine * hw.num_machines),
            "--num_machines", str(hw.num_machines)]
    if hw.num_machines > 1:
        cmd += ["--machine_rank", str(hw.machine_rank), "--main_process_ip",
                str(hw.main_process_ip), "--main_process_port", str(hw.main_process_port)]
    return [*cmd, "-m", "alignlab", *argv]


def launch_env(hw: Any) -> dict[str, str]:
    env = dict(os.environ)
    env["ALIGNLAB_RUN_ID"] = config.run_id()
    if hw.device == "cpu":
        env["ACCELERATE_USE_CPU"] = "true"
    return env


def relaunch(hw: Any, argv: list[str]) -> int:
    """Run this command again on every rank; returns the launcher's exit code."""
    cmd = launch_command(hw, argv)
    console.note(f"[alignlab] launching {processes_per_machine(hw) * hw.num_machines} "
                 "processes: " + " ".join(cmd[1:]))
    return subprocess.call(cmd, env=launch_env(hw))
