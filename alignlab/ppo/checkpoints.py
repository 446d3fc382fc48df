"""PPO's checkpoints: ``checkpoints/checkpoint-<step>`` (accelerate's state: trainable weights,
optimizer, scheduler, every process's RNG) and ``trainer_state.json`` (:class:`TrainState`), the
oldest dropped beyond ``save_total_limit``; a resume checks it finds the same trainable weights.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from alignlab import runs
from alignlab.errors import AlignlabError


@dataclass
class TrainState:
    """What a checkpoint's ``trainer_state.json`` holds besides the step."""

    kl_coef: float  # beta now (it moves with adaptive_kl)
    log_history: list[dict[str, float]]  # the logged rows so far
    max_steps: int
    trainable: list[str] | None  # names of the trainable weights: a resume must find the same

    def to_json(self, step: int) -> dict[str, Any]:
        return {**asdict(self), "global_step": step}

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> TrainState:
        return cls(kl_coef=saved["kl_coef"], log_history=saved["log_history"],
                   max_steps=saved["max_steps"], trainable=saved.get("trainable"))


def save_checkpoint(accelerator: Any, run_dir: Path, step: int, state: TrainState,
                    limit: int | None) -> None:
    """Write ``checkpoints/checkpoint-<step>`` and drop the oldest beyond ``limit``."""
    ckpt = run_dir / "checkpoints" / f"checkpoint-{step}"
    accelerator.save_state(str(ckpt))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        runs.write_json(ckpt / "trainer_state.json", state.to_json(step))
        done = sorted((p for p in ckpt.parent.glob("checkpoint-*")
                       if (p / "trainer_state.json").exists()),
                      key=lambda p: int(p.name.split("-")[-1]))
        for old in done[:-limit] if limit else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator: Any, ckpt: Path, trainable: set[str]) -> tuple[TrainState, int]:
    """Restore the trainable weights, optimizer, scheduler and every process's RNG states from
    ``ckpt``; returns its TrainState and step."""
    accelerator.load_state(str(ckpt), strict=False)
    saved = runs.read_json(ckpt / "trainer_state.json")
    state = TrainState.from_json(saved)
    if sorted(trainable) != state.trainable:
        raise AlignlabError(f"{ckpt} was written by a different model setup (LoRA or "
                            "model changed). Resume with the same config, or start a new "
                            "run directory.")
    return state, saved["global_step"]


def save_only_trainable(accelerator: Any, model: nn.Module) -> set[str]:
    """Make ``save_state`` keep only trainable weights (LoRA: adapters + value head, not the
    frozen base, which is reloaded from ``model.path``). Returns their names."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}

    def keep(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
        weights[:] = [{k: v for k, v in w.items() if k in names} for w in weights]

    accelerator.register_save_state_pre_hook(keep)
    return names
