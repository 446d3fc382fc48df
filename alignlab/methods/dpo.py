"""DPO: Direct Preference Optimization on (prompt, chosen, rejected) with TRL's DPOTrainer.

``method.args.loss_type`` selects the variant (sigmoid, ipo, robust, hinge, sft, ... or a list).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARGS_CLASS = "trl.trainer.dpo_config:DPOConfig"
DATA_KIND = "pairs"


def build(cfg: Any, run_dir: Path) -> Any:
    """The DPOTrainer with an explicit reference (the starting policy, frozen)."""
    from alignlab import data, lengths, models, training

    train = data.load(cfg.data, DATA_KIND, "train")
    args = training.trainer_config(cfg, ARGS_CLASS, run_dir)
    from trl import DPOTrainer  # a heavy import: after the data passed its checks

    policy, tokenizer, reference = models.load_policy(cfg)
    lengths.check(train, tokenizer, "dpo", args.max_length, cfg.data.max_dropped, "DPOTrainer")
    with training.setup_errors("DPOTrainer"):
        return DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=train,
                          processing_class=tokenizer, peft_config=models.lora_config(cfg.model))


def run(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Train, save the model to ``run_dir/model``, report the toy judge on the toy world."""
    from alignlab import training

    return training.train_policy(build(cfg, run_dir), cfg, run_dir)
