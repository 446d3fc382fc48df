"""Rewards by name for the RL stages (PPO, GRPO, RLOO).

Two kinds, usable together (their scores add up):
- a reward-model folder (``method.reward_model``): a one-logit sequence classifier, such as the
  ``model/`` of a ``method=reward`` run, scored on the chat-templated conversation as TRL's
  RewardTrainer formatted it in training (``evaluation.reward_scores``; TRL's GRPO/RLOO do the
  same);
- Python functions (``method.reward_funcs``) with TRL's signature
  ``f(prompts, completions, **kw) -> list[float]``, named from :data:`FUNCTIONS` (``toy_judge``:
  the toy world's rule) or as ``package.module:function``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alignlab import models
from alignlab.errors import AlignlabError, did_you_mean

# Built-in reward functions: name -> "module:function". Both names are public (config values,
# and TRL logs each function by its own name: ``rewards/judge_reward/mean``).
FUNCTIONS = {"toy_judge": "alignlab.data.toy:judge_reward"}


def function(name: str) -> Callable[..., list[float]]:
    """The reward function called ``name`` (a key of FUNCTIONS, or ``module:function``)."""
    target = FUNCTIONS.get(name, name)
    module, sep, attr = target.partition(":")
    if not sep:
        raise AlignlabError(f"Unknown reward function '{name}'.{did_you_mean(name, FUNCTIONS)} "
                            "Or name your own as package.module:function.")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise AlignlabError(f"Could not import reward function '{name}' ({err}). Check "
                            "method.reward_funcs: package.module:function.") from None
    if not callable(fn):
        raise AlignlabError(f"Reward function '{name}' is not callable.")
    return fn


def functions(names: Sequence[str]) -> list[Callable[..., list[float]]]:
    """The reward functions named in ``method.reward_funcs``."""
    return [function(str(n)) for n in names]


def load_reward_model(cfg: Any, path: str, dtype: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a reward-model folder, frozen, in eval mode.

    Loads like every model (safetensors only, same trust settings as ``cfg.model``), as a
    one-logit ``AutoModelForSequenceClassification``; ``dtype`` overrides the model's dtype
    (e.g. ``bfloat16``: the RM only runs forward).
    """
    from omegaconf import OmegaConf

    folder = Path(path).expanduser()
    # A LoRA reward model (method=reward model.lora=true) is an adapter folder: models.load_model
    # merges it into its base, score head included.
    if not (folder / "config.json").exists() and not (folder / "adapter_config.json").exists():
        raise AlignlabError(f"method.reward_model='{path}' is not a model folder (no "
                            "config.json). Point it at the model/ folder of a method=reward run.")
    model_cfg = OmegaConf.merge(cfg.model, {"path": str(folder), "quantization": None,
                                            "lora": False})
    if dtype:
        model_cfg.dtype = dtype
    tokenizer = models.load_tokenizer(model_cfg, str(folder))
    model = models.load_model(model_cfg, str(folder), cfg.hardware, kind="reward")
    model.eval().requires_grad_(False)
    return model, tokenizer


def trl_reward_funcs(cfg: Any) -> tuple[list[Any], list[Any]]:
    """``reward_funcs`` and ``reward_processing_classes`` for TRL's GRPO/RLOO trainers.

    The reward model (if any) is passed as a loaded model object with its own tokenizer, so TRL
    does not load it again from a path with its own (less strict) settings.
    """
    funcs: list[Any] = []
    classes: list[Any] = []
    if cfg.method.reward_model:
        model, tok = load_reward_model(cfg, str(cfg.method.reward_model))
        funcs.append(model)
        classes.append(tok)
    for fn in functions(list(cfg.method.reward_funcs or [])):
        funcs.append(fn)
        classes.append(None)
    if not funcs:
        raise AlignlabError(f"method={cfg.method.name} needs a reward. Set method.reward_model="
                            "<reward run>/model or method.reward_funcs=[toy_judge].")
    return funcs, classes
