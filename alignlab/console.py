"""What the console shows, and what only the run's log file (``cli.log``) gets.

The console gets one progress bar per stage, one short line per logging step (rounded figures)
and one summary line when a stage ends (its headline metric before -> after, with the 95 %
interval, and where the report is). The log file keeps everything: the trainers' full log
dicts, library warnings, tracebacks. ``-q``/``--quiet`` (``quiet=true``) drops the bars and
step lines too; Hydra's own ``hydra.verbose=true`` puts everything back on the console.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.results import Interval

QUIET_FLAGS = ("-q", "--quiet")
log = logging.getLogger("alignlab")

_state = {"quiet": False, "verbose": False}

# A record with ``extra={FILE_ONLY: True}`` goes to the log file, not the console.
FILE_ONLY = "alignlab_file_only"


def quiet_flags(argv: list[str]) -> list[str]:
    """``-q``/``--quiet`` -> the override ``quiet=true`` (Hydra's parser knows no such flag)."""
    return ["quiet=true" if arg in QUIET_FLAGS else arg for arg in argv]


def is_quiet() -> bool:
    """Whether the console shows results only (no progress bars, no step lines)."""
    return _state["quiet"]


def is_verbose() -> bool:
    """Whether the console shows everything the log file gets (``hydra.verbose``)."""
    return _state["verbose"]


class _ConsoleFilter(logging.Filter):
    """Keeps the console to alignlab's own lines; the rest is in the log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _state["verbose"]:
            return True
        if getattr(record, FILE_ONLY, False) or record.name == "py.warnings":
            return False
        if record.name == "alignlab" or record.name.startswith(("alignlab.", "hydra")):
            return record.levelno >= (logging.WARNING if _state["quiet"] else logging.INFO)
        # Libraries' notes (e.g. bitsandbytes without its CPU kernels) are not the user's
        # business unless something failed.
        return record.levelno >= logging.ERROR


def setup(quiet: bool, verbose: bool = False) -> None:
    """Route the console as described in the module docstring (call once per job, under
    Hydra's logging, before the heavy libraries are imported)."""
    _state.update(quiet=bool(quiet), verbose=bool(verbose))
    if not verbose:
        # Read when the libraries are imported: their loading/saving/tokenising bars go.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    logging.captureWarnings(True)  # warnings become records: in the log file, off the console
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            continue
        if isinstance(handler, logging.StreamHandler) and \
                not any(isinstance(f, _ConsoleFilter) for f in handler.filters):
            handler.addFilter(_ConsoleFilter())


def note(text: str) -> None:
    """One line for the user: printed, and kept in the log file."""
    print(text, flush=True)
    log.info(text, extra={FILE_ONLY: True})


def bar_note(bar: Any, text: str) -> None:
    """:func:`note` above a progress bar: written by the bar (tqdm's ``write``), so the bar
    stays whole below it, and kept in the log file."""
    bar.write(text)
    log.info(text, extra={FILE_ONLY: True})


def number(value: Any) -> str:
    """A figure rounded for the console: 3 significant digits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}"


# Trainer log keys shown on the console when the caller names none (a method's row names its
# own: alignlab.methods.spec.Method.step_keys), with their short names, in display order.
STEP_KEYS = (("loss", "loss"), ("learning_rate", "lr"), ("lr", "lr"))
_END_KEYS = (("train_loss", "train loss"), ("train_runtime", "s"))


def step_line(step: int, max_steps: int | None, logs: Mapping[str, Any],
              keys: Sequence[tuple[str, str]] | None = None) -> str:
    """One short line for a trainer log: ``step 5/150: loss 6.82 · reward acc 0.54 · ...``,
    of the (log key, label) pairs ``keys`` (default :data:`STEP_KEYS`)."""
    where = f"step {step}/{max_steps}" if max_steps else f"step {step}"
    if "train_runtime" in logs:  # the trainer's closing summary
        parts = [f"train loss {number(logs['train_loss'])}"] if "train_loss" in logs else []
        parts.append(f"{number(logs['train_runtime'])} s")
        return f"[alignlab] {where}: done, " + ", ".join(parts)
    parts, seen = [], set()
    for key, label in keys or STEP_KEYS:
        value = logs.get(key)
        if label in seen or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        seen.add(label)
        parts.append(f"{label} {number(value)}")
    return f"[alignlab] {where}: " + " · ".join(parts)


def _figure(section: Mapping[str, Any], key: str = "score") -> str:
    figure = Interval.read(section, (key, "mean"))
    return figure.text() if figure is not None else "?"


# What a recipe's metrics keep of each stage: the toy judge, the reward model's figures, PPO's
# evaluations before and after, and the wall time.
KEPT_KEYS = ("judge", "reward", "eval", "wall_seconds")


@dataclass(frozen=True)
class Summary:
    """A stage's headline figures, picked out of its metrics in one place (:func:`summarise`)."""

    kept: dict[str, Any]  # the metrics of KEPT_KEYS it has, as they are
    # (what, before, after) of its headline metric, if it has one (see :func:`summarise`)
    change: tuple[str, Mapping[str, Any], Mapping[str, Any]] | None = None
    rule: Any = None  # the toy world's rule ("judge": score with its interval, per category)
    reward: Any = None  # the reward model's pair accuracy before and after (method=reward)
    train_loss: Any = None
    wall_seconds: Any = 0

    def line(self) -> str:
        """The figures after ``finished``: ``train_loss=0.1234, toy_judge=0.600, wall=12s``."""
        parts = []
        if self.train_loss is not None:
            parts.append(f"train_loss={self.train_loss:.4f}")
        if self.rule is not None:
            parts.append(f"toy_judge={self.rule['score']:.3f}")
        if self.reward is not None:
            r = self.reward
            parts.append(f"pair_accuracy {r['accuracy_before']:.3f} -> {r['accuracy']:.3f}")
        parts.append(f"wall={self.wall_seconds:.0f}s")
        return ", ".join(parts)


def summarise(metrics: Mapping[str, Any]) -> Summary:
    """The headline figures of a stage's (or a recipe's) metrics.

    Its headline change (``Summary.change``): the toy judge of the starting model vs the trained
    one, else (PPO's evaluations before and after) the toy judge or the reward model's score.
    """
    train = metrics.get("train") or {}
    return Summary(kept={k: metrics[k] for k in KEPT_KEYS if k in metrics},
                   change=_change(metrics), rule=metrics.get("judge"),
                   reward=metrics.get("reward"), train_loss=train.get("train_loss"),
                   wall_seconds=metrics.get("wall_seconds", 0))


def _change(metrics: Mapping[str, Any]) -> tuple[str, Mapping, Mapping] | None:
    after = metrics.get("judge")
    baseline = metrics.get("baseline") or {}
    if isinstance(after, Mapping) and baseline.get("role") == "start" and "judge" in baseline:
        return "toy judge", baseline["judge"], after
    evals = metrics.get("eval") or {}  # PPO: {"before": eval.json, "after": eval.json}
    before, later = evals.get("before") or {}, evals.get("after") or {}
    for key, what in (("judge", "toy judge"), ("reward", "RM score")):
        if isinstance(before.get(key), Mapping) and isinstance(later.get(key), Mapping):
            return what, before[key], later[key]
    return None


def before_after(metrics: Mapping[str, Any]) -> tuple[str, Mapping, Mapping] | None:
    """(what, before, after) of a stage's headline metric from its metrics, if it has one
    (:attr:`Summary.change`)."""
    return summarise(metrics).change


def stage_summary(name: str, metrics: Mapping[str, Any], report: Any = None) -> str:
    """The line that ends a stage: headline before -> after with intervals, and the report."""
    where = f"; report: {report}" if report else ""
    summary = summarise(metrics)
    if summary.change is not None:
        what, before, after = summary.change
        key = "score" if what == "toy judge" else "mean"
        text = f"{what} {_figure(before, key)} at the start -> {_figure(after, key)} trained"
        b, a = before.get(key, before.get("mean")), after.get(key, after.get("mean"))
        details = []
        if isinstance(a, int | float) and isinstance(b, int | float):
            details.append(f"{100 * (a - b):+.0f} points" if what == "toy judge"
                           else f"{a - b:+.3g}")
        n, prompts = after.get("n"), after.get("n_prompts")
        if n:
            details.append(f"{n} samples" + (f" of {prompts} prompts" if prompts else "")
                           + ", 95 % intervals")
        text += f" ({'; '.join(details)})" if details else ""
        return f"[alignlab] {name}: {text}{where}"
    reward = summary.reward
    if isinstance(reward, Mapping) and "accuracy_before" in reward:
        n = f" on {reward['n']} held-out pairs" if reward.get("n") else ""
        return (f"[alignlab] {name}: reward-model pair accuracy {reward['accuracy_before']:.2f} "
                f"-> {reward['accuracy']:.2f}{n}{where}")
    if isinstance(summary.rule, Mapping):
        return f"[alignlab] {name}: toy judge {_figure(summary.rule)}{where}"
    return f"[alignlab] {name}: done{where}"
