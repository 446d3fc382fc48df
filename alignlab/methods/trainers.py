"""The TRL-backed stages: one table of what each needs, and one builder for its trainer.

The methods (``method=<name>``; ``method.args`` are the fields of the TRL config class):

- ``sft``: supervised fine-tuning on demonstrations with TRL's SFTTrainer.
  ``method.args.assistant_only_loss=true`` trains on the assistant's replies only (a ChatML
  template gets the markers TRL needs: :mod:`alignlab.templates`).
- ``reward``: a reward model, a one-logit sequence classifier trained on preference pairs (TRL
  RewardTrainer), initialised from ``model.path`` (e.g. the SFT model). Reports held-out pair
  accuracy before and after training.
- ``dpo``: Direct Preference Optimization on (prompt, chosen, rejected) with TRL's DPOTrainer.
  ``method.args.loss_type`` selects the variant (sigmoid, ipo, robust, hinge, sft, ... or a
  list).
- ``kto``: Kahneman-Tversky Optimization on unpaired good/bad examples with TRL's KTOTrainer.
  Needs only a thumbs-up or thumbs-down per response (``label``), not pairs.
- ``orpo``: ORPO (trl.experimental's ORPOTrainer) on pairs: SFT plus an odds-ratio preference
  term in one loss, no reference model.
- ``grpo`` and ``rloo``: online RL with TRL's GRPOTrainer / RLOOTrainer, rewarded by
  ``method.reward_model=<reward run>/model`` and/or ``method.reward_funcs=[toy_judge]`` (scores
  add up). The reference for the KL term (``method.args.beta``) is the starting policy, or
  ``method.reference``; see :func:`load_online` for why it must be set explicitly.
  ``generation_batch_size`` must be divisible by ``num_generations``.

The policy stages save the model to ``run_dir/model`` and report the toy judge (and, with a
reference, the held-out KL to it) on the toy world; DPO and KTO train against an explicit,
frozen reference (the starting policy, or ``method.reference``).

Each row of :data:`TABLE` (a :class:`TrlMethod`) names the TRL trainer and its config class
(the dataclass that ``method.args`` fill), the data kind it trains on, the models it loads, how
:func:`alignlab.lengths.check` counts its rows, and its per-method hooks. :func:`build` takes
the same steps for every row: the training data first (cheap errors), the trainer's config, then
the heavy trainer import, the tokenizer and models, and the trainer itself under
:func:`alignlab.training.setup_errors` (TRL's ValueErrors are config mistakes: exit code 2).
:meth:`TrlMethod.run` trains and then reports: :func:`train_policy` for a policy,
:func:`train_reward` for a reward model.

What a row's ``models`` loads:

- ``policy``: the model at ``model.path``, trained whole or with LoRA;
- ``reward``: a one-logit sequence classifier initialised from ``model.path``;
- ``policy+reference``: the policy and an explicit, frozen reference: ``method.reference``, else
  the starting policy (:func:`alignlab.models.load_policy`; none with LoRA, whose reference is
  the base with adapters off);
- ``online``: the policy, its rewards (``method.reward_model`` and/or ``method.reward_funcs``)
  and the reference chosen by name (:func:`load_online`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from alignlab import checks, data, evaluation, lengths, models, rewards, runs, templates, training
from alignlab import watch as watching
from alignlab.errors import AlignlabError
from alignlab.methods import spec as specs

log = logging.getLogger("alignlab")


def train_policy(spec: TrlMethod, trainer: Any, cfg: Any, run_dir: Path) -> dict[str, Any]:
    """``training.train`` for a policy stage, then a quick evaluation on the toy world unless
    ``quick_eval=false``: the toy judge of the trained policy and of its starting point (the
    reference when that is the start, else the start reloaded), the win rate against the start,
    the KL to the reference, written to ``eval.json`` and ``samples.jsonl``. An online row
    (``spec.watched``) runs the over-optimisation watch along training."""
    watch = watch_rl(trainer, cfg) if spec.watched else None
    metrics = training.train(trainer, cfg, run_dir, step_keys=spec.step_keys)
    if watch is not None:
        metrics["watch"] = watch.summary()
    if cfg.quick_eval and data.source(cfg.data).rule is not None and runs.is_main_process():
        reference = getattr(trainer, "ref_model", None)
        start = reference if reference is not None and not cfg.method.reference \
            else load_start(cfg, trainer.model)
        result, samples = evaluation.evaluate(cfg, trainer.model, trainer.processing_class,
                                              reference=reference, start=start, progress=False)
        evaluation.write(run_dir, result, samples)
        metrics.update(result.pick("judge", "kl", "baseline"))
    return metrics


def watch_rl(trainer: Any, cfg: Any) -> Any:
    """GRPO/RLOO's held-out judge (:mod:`alignlab.watch`) as a trainer callback, every
    ``watch.every`` optimizer steps; the training reward is the last one TRL logged."""
    from transformers import TrainerCallback

    args = trainer.args
    watch = watching.create(cfg, max_new_tokens=args.max_completion_length,
                            temperature=args.temperature)
    if watch is None:
        return None

    class Watched(TrainerCallback):
        """Due at a step, the judge runs at the first log from then on (TRL logs the training
        reward every ``logging_steps``): the proxy beside it is that step's."""

        pending = False

        def on_step_end(self, targs: Any, state: Any, control: Any, **kw: Any) -> None:
            self.pending = self.pending or watch.due(state.global_step)

        def on_log(self, targs: Any, state: Any, control: Any, logs: Any = None,
                   **kw: Any) -> None:
            if not self.pending or "reward" not in (logs or {}):
                return
            self.pending = False
            if watch.check(state.global_step, trainer.model, trainer.processing_class,
                           proxy=logs.get("reward"), kl=logs.get("kl"),
                           main=state.is_world_process_zero):
                control.should_training_stop = True

    trainer.add_callback(Watched())
    return watch


def load_start(cfg: Any, like: Any) -> Any:
    """The starting policy as ``cfg.model.path`` gives it (None, logged, when it cannot be
    loaded), on the device of ``like``: what the quick evaluation compares the trained one to."""
    try:
        path = models.resolve_path(cfg.model, cfg.seed)
        model = models.load_model(cfg.model, path, cfg.hardware)
        return model.to(next(like.parameters()).device).eval().requires_grad_(False)
    except Exception as err:  # the comparison is extra: the trained model is what matters
        log.warning("quick evaluation: could not load the starting model %s to compare with: "
                    "%s", cfg.model.path, err)
        return None


def train_reward(spec: TrlMethod, trainer: Any, cfg: Any, run_dir: Path) -> dict[str, Any]:
    """``training.train`` for a reward model, with its held-out pair accuracy before and after."""
    test = data.load(cfg.data, "pairs", "test")
    tok = trainer.processing_class
    before = evaluation.reward_accuracy(trainer.model, tok, test)
    metrics = training.train(trainer, cfg, run_dir, step_keys=spec.step_keys)
    metrics["reward"] = {"accuracy_before": before,
                         "accuracy": evaluation.reward_accuracy(trainer.model, tok, test),
                         "n": len(test)}
    return metrics


def assistant_only_loss(cfg: Any, args: Any, tokenizer: Any) -> None:
    """SFT's tokenizer hook: with ``assistant_only_loss`` a ChatML template gets the
    ``{% generation %}`` markers that TRL needs (:mod:`alignlab.templates`)."""
    if args.assistant_only_loss:
        templates.for_assistant_only_loss(tokenizer, str(cfg.model.path))


@dataclass(frozen=True, kw_only=True)
class TrlMethod(specs.Method):
    """One TRL-backed stage: a row of :data:`TABLE`, run by :func:`build`."""

    trainer: str  # "module:Class" of the trainer (a class in ``trl`` or ``trl.experimental``)
    models: str  # policy | reward | policy+reference | online (see the module doc)
    # How lengths.check counts rows (as this trainer drops or cuts them); None: prompts only.
    lengths: Literal["sft", "reward", "dpo", "kto", "orpo"] | None
    # trains, then reports: (row, trainer, cfg, run_dir) -> metrics
    finish: Callable[[TrlMethod, Any, Any, Path], dict[str, Any]] = train_policy
    prepare_tokenizer: Callable[[Any, Any, Any], None] | None = None  # (cfg, args, tokenizer)
    watched: bool = False  # the over-optimisation watch runs along training (online RL)
    starts_from_sft: bool = True  # all but sft refine a policy

    @property
    def trainer_name(self) -> str:
        return self.trainer.rpartition(":")[2]

    def build(self, cfg: Any, run_dir: Path) -> Any:
        """The TRL trainer for this config (:func:`build`)."""
        return build(self, cfg, run_dir)

    def run(self, cfg: Any, run_dir: Path) -> dict[str, Any]:
        """Train, save the model to ``run_dir/model``, report: the metrics for metrics.json."""
        return self.finish(self, self.build(cfg, run_dir), cfg, run_dir)


Loaded = tuple[dict[str, Any], contextlib.AbstractContextManager[Any]]


def build(spec: TrlMethod, cfg: Any, run_dir: Path) -> Any:
    """``spec``'s trainer for this config: the data first (cheap errors), then the models."""
    train = data.load(cfg.data, spec.data_kind, "train")
    args = training.trainer_config(cfg, spec.args_class, run_dir)
    # method.args.eval_strategy=steps (TRL's convention): the data's test split is the
    # eval_dataset, so log_history holds held-out figures along training (a learning curve).
    held_out = data.load(cfg.data, spec.data_kind, "test") if evaluates(args) else None
    module, _, name = spec.trainer.partition(":")
    trainer_cls = getattr(importlib.import_module(module), name)  # heavy: after the data
    kwargs, naming = _LOADERS[spec.models](spec, cfg, args, train)
    if held_out is not None:
        kwargs["eval_dataset"] = held_out
    with naming, training.setup_errors(spec.trainer_name):
        return trainer_cls(args=args, train_dataset=train, **kwargs)


def evaluates(args: Any) -> bool:
    """Whether the trainer's config asks for evaluation during training."""
    return getattr(args, "eval_strategy", "no") != "no"  # IntervalStrategy is a str enum


def _tokenizer(spec: TrlMethod, cfg: Any, args: Any, path: str) -> Any:
    tokenizer = models.load_tokenizer(cfg.model, path)
    if spec.prepare_tokenizer is not None:
        spec.prepare_tokenizer(cfg, args, tokenizer)
    return tokenizer


def _check_lengths(spec: TrlMethod, cfg: Any, args: Any, train: Any, tokenizer: Any) -> None:
    if spec.lengths is not None:
        lengths.check(train, tokenizer, spec.lengths, args.max_length, cfg.data.max_dropped,
                      spec.trainer_name)


def load_one(spec: TrlMethod, cfg: Any, args: Any, train: Any) -> Loaded:
    """``policy`` and ``reward``: one model from ``model.path``; lengths checked before it."""
    path = models.resolve_path(cfg.model, cfg.seed)
    tokenizer = _tokenizer(spec, cfg, args, path)
    _check_lengths(spec, cfg, args, train, tokenizer)
    if spec.models == "reward":
        model = models.load_model(cfg.model, path, cfg.hardware, kind="reward")
        lora = models.lora_config(cfg.model, task_type="SEQ_CLS")
    else:
        model = models.load_model(cfg.model, path, cfg.hardware)
        lora = models.lora_config(cfg.model)
    return {"model": model, "processing_class": tokenizer,
            "peft_config": lora}, contextlib.nullcontext()


def load_with_reference(spec: TrlMethod, cfg: Any, args: Any, train: Any) -> Loaded:
    """``policy+reference``: the policy and its explicit, frozen reference."""
    policy, tokenizer, reference = models.load_policy(cfg)
    _check_lengths(spec, cfg, args, train, tokenizer)
    return {"model": policy, "ref_model": reference, "processing_class": tokenizer,
            "peft_config": models.lora_config(cfg.model)}, contextlib.nullcontext()


@contextlib.contextmanager
def _named(model: Any, name: str) -> Iterator[None]:
    saved = model.config._name_or_path
    model.config._name_or_path = name
    try:
        yield
    finally:
        model.config._name_or_path = saved


def load_online(spec: TrlMethod, cfg: Any, args: Any, train: Any) -> Loaded:
    """``online`` (GRPO, RLOO): the in-memory policy, the rewards of ``method.reward_model`` /
    ``method.reward_funcs``, and the reference, chosen by name.

    TRL 1.16's GRPOTrainer and RLOOTrainer take no ``ref_model``: with ``beta != 0`` and no
    LoRA they build the reference with ``from_pretrained(model.config._name_or_path)``, a folder
    on disk that need not hold the policy being trained. So the reference is chosen by pointing
    that name at the right folder while the trainer is built (the context returned):
    ``method.reference`` if set, else the folder the policy was loaded from. With LoRA the
    reference is the base with adapters off; with ``beta=0`` there is none.
    """
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
    tokenizer = _tokenizer(spec, cfg, args, path)
    policy = models.load_model(cfg.model, path, cfg.hardware)
    funcs, classes = rewards.trl_reward_funcs(cfg)
    reference = str(Path(cfg.method.reference).expanduser()) if cfg.method.reference else path
    if cfg.model.revision and not cfg.method.reference:
        args.model_init_kwargs = {**(args.model_init_kwargs or {}),
                                  "revision": cfg.model.revision}
    return {"model": policy, "reward_funcs": funcs, "processing_class": tokenizer,
            "reward_processing_classes": classes, "peft_config": lora}, _named(policy, reference)


_LOADERS: dict[str, Callable[[TrlMethod, Any, Any, Any], Loaded]] = {
    "policy": load_one, "reward": load_one, "policy+reference": load_with_reference,
    "online": load_online}

ONLINE_KEYS: specs.Keys = (("loss", "loss"), ("reward", "reward"), ("kl", "kl"), *specs.LR_KEYS)

# The TRL-backed methods (what each does and its options: the module doc).
TABLE: dict[str, TrlMethod] = {m.name: m for m in (
    TrlMethod(name="sft", trainer="trl:SFTTrainer", args_class="trl.trainer.sft_config:SFTConfig",
              data_kind="sft", models="policy", lengths="sft", starts_from_sft=False,
              prepare_tokenizer=assistant_only_loss,
              step_keys=(("loss", "loss"), ("mean_token_accuracy", "token acc"), *specs.LR_KEYS)),
    TrlMethod(name="reward", trainer="trl:RewardTrainer",
              args_class="trl.trainer.reward_config:RewardConfig", data_kind="pairs",
              models="reward", lengths="reward", finish=train_reward,
              step_keys=(("loss", "loss"), ("accuracy", "acc"), *specs.LR_KEYS),
              curve_keys=("loss", "eval_loss", "eval_accuracy"), headline=specs.pair_accuracy),
    TrlMethod(name="dpo", trainer="trl:DPOTrainer", args_class="trl.trainer.dpo_config:DPOConfig",
              data_kind="pairs", models="policy+reference", lengths="dpo", reads_reference=True,
              step_keys=specs.PREFERENCE_KEYS, curve_keys=specs.PREFERENCE_CURVES,
              headline=specs.logged(("rewards/accuracies", "reward accuracy"),
                                    ("rewards/margins", "margin"), ("kl", "KL")),
              arg_rules={"beta": checks.POSITIVE_BETA}),
    TrlMethod(name="kto", trainer="trl:KTOTrainer", args_class="trl.trainer.kto_config:KTOConfig",
              data_kind="unpaired", models="policy+reference", lengths="kto",
              reads_reference=True,
              step_keys=specs.PREFERENCE_KEYS, curve_keys=specs.PREFERENCE_CURVES,
              headline=specs.logged(("rewards/accuracies", "reward accuracy"),
                                    ("rewards/margins", "margin"), ("kl", "KL")),
              arg_rules={"beta": checks.POSITIVE_BETA}),
    # ORPO (Hong et al. 2024): SFT and a log-odds-ratio preference term in one loss, no
    # reference model; trl.experimental's trainer on the pinned TRL.
    TrlMethod(name="orpo", trainer="trl.experimental.orpo:ORPOTrainer",
              args_class="trl.experimental.orpo.orpo_config:ORPOConfig", data_kind="pairs",
              models="policy", lengths="orpo",
              step_keys=(*specs.PREFERENCE_KEYS[:3], ("log_odds_ratio", "log odds"),
                         *specs.LR_KEYS),
              curve_keys=(*specs.PREFERENCE_CURVES[:-1], "nll_loss", "log_odds_ratio"),
              headline=specs.logged(("rewards/accuracies", "reward accuracy"),
                                    ("rewards/margins", "margin"), ("nll_loss", "NLL"))),
    TrlMethod(name="grpo", trainer="trl:GRPOTrainer",
              args_class="trl.trainer.grpo_config:GRPOConfig", data_kind="prompts",
              models="online", lengths=None, needs_reward=True, watched=True,
              reads_reference=True,
              step_keys=ONLINE_KEYS, curve_keys=("loss", "reward", "kl"),
              headline=specs.logged(("reward", "reward"), ("kl", "KL")),
              arg_rules={"temperature": checks.SAMPLING_TEMPERATURE}),
    TrlMethod(name="rloo", trainer="trl:RLOOTrainer",
              args_class="trl.trainer.rloo_config:RLOOConfig", data_kind="prompts",
              models="online", lengths=None, needs_reward=True, watched=True,
              reads_reference=True,
              step_keys=ONLINE_KEYS, curve_keys=("loss", "reward", "kl"),
              headline=specs.logged(("reward", "reward"), ("kl", "KL")),
              arg_rules={"temperature": checks.SAMPLING_TEMPERATURE}),
)}
