"""What GRPO and RLOO share (not a method: the registry skips ``_`` modules).

TRL 1.16's GRPOTrainer and RLOOTrainer take no ``ref_model``: with ``beta != 0`` and no LoRA they
build the reference with ``from_pretrained(model.config._name_or_path)``, a folder on disk that
need not hold the policy being trained. So the reference is chosen by pointing that name at the
right folder while the trainer is built:
``method.reference`` if set, else the folder the policy was loaded from. With LoRA the
reference is the base with adapters off; with ``beta=0`` there is none.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError


@contextlib.contextmanager
def _named(model: Any, name: str) -> Iterator[None]:
    saved = model.config._name_or_path
    model.config._name_or_path = name
    try:
        yield
    finally:
        model.config._name_or_path = saved


def build(cfg: Any, run_dir: Path, trainer: str, args_class: str) -> Any:
    """TRL's ``trainer`` (GRPOTrainer/RLOOTrainer, by name) with the in-memory policy, the right
    reference and the rewards of ``method.reward_model`` / ``method.reward_funcs``."""
    from alignlab import data, models, rewards, training

    train = data.load(cfg.data, "prompts", "train")
    args = training.trainer_config(cfg, args_class, run_dir)
    trainer_cls = getattr(importlib.import_module("trl"), trainer)  # heavy: after the data checks
    lora = models.lora_config(cfg.model)
    path = models.resolve_path(cfg.model, cfg.seed)
    other = cfg.method.reference and \
        Path(cfg.method.reference).expanduser().resolve() != Path(path).expanduser().resolve()
    if other and (lora is not None or args.beta == 0.0):
        why = "model.lora=true (the reference is the base with adapters off)" if lora \
            else "method.args.beta=0 (no KL penalty, so no reference)"
        raise AlignlabError(f"method.reference is another model than model.path, but unused "
                            f"with {why}. Remove method.reference, or set method.args.beta > 0 "
                            "without LoRA.")
    tokenizer = models.load_tokenizer(cfg.model, path)
    policy = models.load_model(cfg.model, path, cfg.hardware)
    funcs, classes = rewards.trl_reward_funcs(cfg)
    reference = str(Path(cfg.method.reference).expanduser()) if cfg.method.reference else path
    if cfg.model.revision and not cfg.method.reference:
        args.model_init_kwargs = {**(args.model_init_kwargs or {}),
                                  "revision": cfg.model.revision}
    with _named(policy, reference), training.setup_errors(trainer):
        return trainer_cls(model=policy, reward_funcs=funcs, args=args, train_dataset=train,
                           processing_class=tokenizer, reward_processing_classes=classes,
                           peft_config=lora)


def run(cfg: Any, run_dir: Path, trainer: str, args_class: str) -> dict[str, Any]:
    """Train, save, and report the toy judge and KL to the reference (``train_policy``)."""
    from alignlab import training

    return training.train_policy(build(cfg, run_dir, trainer, args_class), cfg, run_dir)
