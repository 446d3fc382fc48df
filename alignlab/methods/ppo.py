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

from alignlab import checks
from alignlab.methods.spec import LR_KEYS, Method, logged

ARGS_CLASS = "alignlab.ppo.config:PPOConfig"
DATA_KIND = "prompts"


def run(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Train with PPO, save the policy to ``run_dir/model``, report before/after evaluation."""
    # Here, not at the top: the methods registry imports this module for `--cfg job` and config
    # errors, which must not import torch (the trainer does at its top).
    from alignlab.ppo import trainer

    return trainer.train(cfg, run_dir, step_keys=SPEC.step_keys)


SPEC = Method(
    name="ppo", args_class=ARGS_CLASS, data_kind=DATA_KIND, stage=run, needs_reward=True,
    starts_from_sft=True, reads_reference=True,
    no_sharding="alignlab's PPO runs under DDP only, its rollouts cannot generate from "
                "FSDP/ZeRO weights.",
    step_keys=(("objective/scores", "score"), ("objective/kl", "kl"), *LR_KEYS),
    curve_keys=("objective/scores", "objective/rlhf_reward", "objective/kl", "objective/entropy",
                "objective/non_score_reward", "policy/entropy", "policy/entropy_avg",
                "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg",
                "loss/value_avg"),
    headline=logged(("objective/scores", "score"), ("objective/kl", "KL")),
    arg_rules={"temperature": checks.SAMPLING_TEMPERATURE})
