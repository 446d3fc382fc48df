"""The method registry: every stage alignlab runs, written out by name in :data:`REGISTRY`.

A stage is something with ``run(cfg, run_dir) -> dict`` (train or generate, return the final
metrics). The TRL-backed stages (sft, reward, dpo, kto, grpo, rloo) are rows of one table in
:mod:`alignlab.methods.trainers`, built by one builder. The others are modules here that
declare, at import time and without heavy imports:
    ARGS_CLASS = "alignlab.evaluation:EvalArgs"   # dataclass that ``method.args`` fill
    DATA_KIND = "prompts"                          # sft | pairs | unpaired | prompts
    NEEDS_REWARD = False                           # True: reward_model or reward_funcs
Adding a method is a row in that table (or a module here), its line in :data:`REGISTRY`, and
one YAML in conf/method/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignlab.errors import AlignlabError, did_you_mean
from alignlab.methods import cai, judge, ppo, trainers
from alignlab.methods import eval as evaluate
from alignlab.methods import export as export_stage

REGISTRY: dict[str, Any] = {
    "sft": trainers.TABLE["sft"],
    "reward": trainers.TABLE["reward"],
    "dpo": trainers.TABLE["dpo"],
    "kto": trainers.TABLE["kto"],
    "grpo": trainers.TABLE["grpo"],
    "rloo": trainers.TABLE["rloo"],
    "ppo": ppo,
    "cai": cai,
    "judge": judge,
    "eval": evaluate,
    "export": export_stage,
}


@dataclass(frozen=True)
class MethodInfo:
    name: str
    module: str
    args_class: str
    data_kind: str
    needs_reward_model: bool


def names() -> list[str]:
    """All registered method names."""
    return sorted(REGISTRY)


def load(name: str) -> Any:
    """The stage of a method name: a :class:`trainers.TrlMethod` or a module, both with
    ``run(cfg, run_dir)``."""
    if name not in REGISTRY:
        raise AlignlabError(f"Unknown method '{name}'.{did_you_mean(name, names())}")
    return REGISTRY[name]


def method_info(name: str) -> MethodInfo:
    """What a method needs: its table row, or its module's constants."""
    stage = load(name)
    if isinstance(stage, trainers.TrlMethod):
        return MethodInfo(name=name, module=trainers.__name__, args_class=stage.args_class,
                          data_kind=stage.data_kind, needs_reward_model=stage.needs_reward)
    return MethodInfo(name=name, module=stage.__name__, args_class=stage.ARGS_CLASS,
                      data_kind=stage.DATA_KIND,
                      needs_reward_model=getattr(stage, "NEEDS_REWARD", False))
