"""The method registry: every module in this package is one stage.

A stage module declares, at import time and without heavy imports:
    ARGS_CLASS = "trl.trainer.dpo_config:DPOConfig"   # dataclass that ``method.args`` fill
    DATA_KIND = "pairs"                                # sft | pairs | unpaired | prompts
    NEEDS_REWARD = False                               # True: reward_model or reward_funcs
and a function ``run(cfg, run) -> dict`` that trains and returns final metrics.
Adding a method is one module here plus one YAML in conf/method/.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType

from alignlab.errors import AlignlabError, did_you_mean


@dataclass(frozen=True)
class MethodInfo:
    name: str
    module: str
    args_class: str
    data_kind: str
    needs_reward_model: bool


def names() -> list[str]:
    """All registered method names."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name: str) -> ModuleType:
    """Import a stage module by method name."""
    if name not in names():
        raise AlignlabError(f"Unknown method '{name}'.{did_you_mean(name, names())}")
    return importlib.import_module(f"{__name__}.{name}")


def method_info(name: str) -> MethodInfo:
    """What a method needs, read from its module's constants."""
    mod = load(name)
    return MethodInfo(name=name, module=mod.__name__, args_class=mod.ARGS_CLASS,
                      data_kind=mod.DATA_KIND,
                      needs_reward_model=getattr(mod, "NEEDS_REWARD", False))
