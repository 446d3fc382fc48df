"""SFT: supervised fine-tuning on demonstrations with TRL's SFTTrainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARGS_CLASS = "trl.trainer.sft_config:SFTConfig"
DATA_KIND = "sft"


def build(cfg: Any, run_dir: Path) -> Any:
    """The SFTTrainer for this config: data first (cheap errors), then the model."""
    from alignlab import data, lengths, models, templates, training

    train = data.load(cfg.data, DATA_KIND, "train")
    args = training.trainer_config(cfg, ARGS_CLASS, run_dir)
    from trl import SFTTrainer  # a heavy import: after the data passed its checks

    path = models.resolve_path(cfg.model, cfg.seed)
    tokenizer = models.load_tokenizer(cfg.model, path)
    if args.assistant_only_loss:
        templates.for_assistant_only_loss(tokenizer, str(cfg.model.path))
    lengths.check(train, tokenizer, "sft", args.max_length, cfg.data.max_dropped, "SFTTrainer")
    model = models.load_model(cfg.model, path, cfg.hardware)
    with training.setup_errors("SFTTrainer"):
        return SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                          peft_config=models.lora_config(cfg.model))


def run(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Train, save the model to ``run_dir/model``, report the toy judge on the toy world."""
    from alignlab import training

    return training.train_policy(build(cfg, run_dir), cfg, run_dir)
