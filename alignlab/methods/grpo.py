"""GRPO: online RL with TRL's GRPOTrainer, rewarded by a reward model and/or functions.

``method.reward_model=<reward run>/model`` and/or ``method.reward_funcs=[toy_judge]`` (scores
add up). The reference for the KL term (``method.args.beta``) is the starting policy, or
``method.reference``; see :mod:`alignlab.methods._online` for why it must be set explicitly.
``generation_batch_size`` must be divisible by ``num_generations``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARGS_CLASS = "trl.trainer.grpo_config:GRPOConfig"
DATA_KIND = "prompts"
NEEDS_REWARD = True


def run(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Train, save the policy to ``run_dir/model``, report the toy judge and held-out KL."""
    from alignlab.methods import _online

    return _online.run(cfg, run_dir, "GRPOTrainer", ARGS_CLASS)
