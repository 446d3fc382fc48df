"""KTO: Kahneman-Tversky Optimization on unpaired good/bad examples with TRL's KTOTrainer.

Needs only a thumbs-up or thumbs-down per response (``label``), not pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARGS_CLASS = "trl.trainer.kto_config:KTOConfig"
DATA_KIND = "unpaired"


def build(cfg: Any, run_dir: Path) -> Any:
    """The KTOTrainer with an explicit reference (the starting policy, frozen)."""
    from alignlab import data, lengths, models, training

    train = data.load(cfg.data, DATA_KIND, "train")
    args = training.trainer_config(cfg, ARGS_CLASS, run_dir)
    from trl import KTOTrainer  # a heavy import: after the data passed its checks

    policy, tokenizer, reference = models.load_policy(cfg)
    lengths.check(train, tokenizer, "kto", args.max_length, cfg.data.max_dropped, "KTOTrainer")
    with training.setup_errors("KTOTrainer"):
        return KTOTrainer(model=policy, ref_model=reference, args=args, train_dataset=train,
                          processing_class=tokenizer, peft_config=models.lora_config(cfg.model))


def run(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Train, save the model to ``run_dir/model``, report the toy judge on the toy world."""
    from alignlab import training

    return training.train_policy(build(cfg, run_dir), cfg, run_dir)
