"""What a method is, in one typed row: :class:`Method`.

Everything the rest of alignlab needs to know about a method lives in its row: the dataclass
that ``method.args`` fill, the data it reads, what it needs before it can start (a reward, a
constitution, an SFT'd start), which trainer-log keys its console lines and report curves show,
and how its report headline reads its metrics. Validation, the console and the report ask the
row; none of them names a method. Light on purpose (no torch, no TRL): the registry is imported
for config errors and ``--cfg job``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab import checks

# A figure of a headline: (label, value) or (label, (before, after)).
Figure = tuple[str, Any]
Headline = Callable[[Mapping[str, Any], Mapping[str, Any]], list[Figure]]  # (metrics, eval.json)
Keys = tuple[tuple[str, str], ...]  # (trainer-log key, short label), in display order

LR_KEYS: Keys = (("learning_rate", "lr"), ("lr", "lr"))
PREFERENCE_KEYS: Keys = (("loss", "loss"), ("rewards/accuracies", "reward acc"),
                         ("rewards/margins", "margin"), ("kl", "kl"), *LR_KEYS)
PREFERENCE_CURVES = ("loss", "eval_loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                     "rewards/accuracies", "kl")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def last_logged(history: Any, key: str) -> Any:
    """The last finite value of ``key`` in a trainer log history (None if never logged)."""
    values = [e[key] for e in history if isinstance(e, Mapping) and _finite(e.get(key))] \
        if isinstance(history, list) else []
    return values[-1] if values else None


def final_loss(metrics: Mapping[str, Any], evals: Mapping[str, Any]) -> list[Figure]:
    """The last logged training loss, else the trainer's closing ``train_loss``; a stage that
    trained nothing: its evaluation's judge score (a Mapping with the interval)."""
    loss = last_logged(metrics.get("log_history"), "loss")
    train = metrics.get("train") if isinstance(metrics.get("train"), Mapping) else {}
    loss = loss if loss is not None else train.get("train_loss")
    if _finite(loss):
        return [("final loss", loss)]
    judge = evals.get("judge")
    if isinstance(judge, Mapping) and _finite(judge.get("score")):
        return [("judge", judge)]
    return []


def logged(*pairs: tuple[str, str]) -> Headline:
    """A headline of the last logged value of each (log key, label) the run logged (none of
    them: :func:`final_loss`)."""
    def headline(metrics: Mapping[str, Any], evals: Mapping[str, Any]) -> list[Figure]:
        found = [(label, last_logged(metrics.get("log_history"), key)) for key, label in pairs]
        return [(label, value) for label, value in found if value is not None] \
            or final_loss(metrics, evals)
    return headline


def pair_accuracy(metrics: Mapping[str, Any], evals: Mapping[str, Any]) -> list[Figure]:
    """A reward model's held-out pair accuracy before -> after training."""
    reward = metrics.get("reward")
    if isinstance(reward, Mapping) and "accuracy" in reward:
        return [("pair accuracy", (reward.get("accuracy_before"), reward["accuracy"]))]
    return final_loss(metrics, evals)


@dataclass(frozen=True, kw_only=True)
class Method:
    """One method (``method=<name>``): what it is, what it needs, how its results read."""

    name: str
    args_class: str  # "module:Class" of the dataclass that ``method.args`` fill
    data_kind: str  # sft | pairs | unpaired | prompts | none
    stage: Callable[[Any, Path], dict[str, Any]] | None = None  # run(cfg, run_dir) -> metrics
    needs_reward: bool = False  # method.reward_model or method.reward_funcs is required
    reads_constitution: bool = False  # the constitution group is loaded (checked up front)
    needs_choice: bool = False  # ... and must hold the AI judge's choice question
    starts_from_sft: bool = False  # refines or scores a policy: a built-in model starts SFT'd
    reads_reference: bool = False  # method.reference is a model it loads (else: refused)
    # Why it cannot run with sharded weights (FSDP/ZeRO), one sentence; "": it can.
    no_sharding: str = ""
    step_keys: Keys = (("loss", "loss"), *LR_KEYS)  # the console's line per trainer log
    curve_keys: Sequence[str] = ("loss", "eval_loss")  # the report's training curves
    headline: Headline = final_loss  # the report's figures for this stage
    shows_change: bool = True  # the headline adds the toy judge start -> trained when known
    check_args: Callable[[Mapping[str, Any]], None] | None = None  # its own checks of args
    # Stricter ranges than the generic ones of alignlab.checks for some of its arguments.
    arg_rules: Mapping[str, checks.Rule] = field(default_factory=dict)

    def run(self, cfg: Any, run_dir: Path) -> dict[str, Any]:
        """Run the stage into ``run_dir``: the metrics for metrics.json."""
        if self.stage is None:
            raise NotImplementedError(f"method {self.name} has no stage")
        return self.stage(cfg, run_dir)
