"""Reward model: a one-logit sequence classifier trained on preference pairs (TRL RewardTrainer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARGS_CLASS = "trl.trainer.reward_config:RewardConfig"
DATA_KIND = "pairs"


def build(cfg: Any, run_dir: Path) -> Any:
    """The RewardTrainer, its reward model initialised from ``model.path`` (e.g. the SFT model)."""
    from alignlab import data, lengths, models, training

    train = data.load(cfg.data, DATA_KIND, "train")
    args = training.trainer_config(cfg, ARGS_CLASS, run_dir)
    from trl import RewardTrainer  # a heavy import: after the data passed its checks

    path = models.resolve_path(cfg.model, cfg.seed)
    tokenizer = models.load_tokenizer(cfg.model, path)
    lengths.check(train, tokenizer, "reward", args.max_length, cfg.data.max_dropped,
                  "RewardTrainer")
    model = models.load_model(cfg.model, path, cfg.hardware, kind="reward")
    with training.setup_errors("RewardTrainer"):
        return RewardTrainer(model=model, args=args, train_dataset=train,
                             processing_class=tokenizer,
                             peft_config=models.lora_config(cfg.model, task_type="SEQ_CLS"))


def run(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Train and report held-out pair accuracy before and after."""
    from alignlab import data, evaluation, training

    trainer = build(cfg, run_dir)
    test = data.load(cfg.data, DATA_KIND, "test")
    tok = trainer.processing_class
    before = evaluation.reward_accuracy(trainer.model, tok, test)
    metrics = training.train(trainer, cfg, run_dir)
    metrics["reward"] = {"accuracy_before": before,
                         "accuracy": evaluation.reward_accuracy(trainer.model, tok, test),
                         "n": len(test)}
    return metrics
