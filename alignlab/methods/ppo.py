"""PPO: RLHF against a reward model with a KL penalty to the reference (alignlab's own trainer).

TRL 1.16 has no PPOTrainer any more; :mod:`alignlab.ppo` implements it (Ouyang et al. 2022 App. C;
Huang et al. 2024, arXiv 2403.17031). Start from
an SFT model (``model.path=<sft run>/model``) with a reward model
(``method.reward_model=<reward run>/model``) and/or reward functions (``method.reward_funcs``).
``method.args`` are :class:`alignlab.ppo.config.PPOConfig` fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARGS_CLASS = "alignlab.ppo.config:PPOConfig"
DATA_KIND = "prompts"
NEEDS_REWARD = True


def run(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Train with PPO, save the policy to ``run_dir/model``, report before/after evaluation."""
    # Here, not at the top: the methods registry imports this module for `--cfg job` and config
    # errors, which must not import torch (the trainer does at its top).
    from alignlab.ppo import trainer

    return trainer.train(cfg, run_dir)
