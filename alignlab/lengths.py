"""Say what TRL will do to rows longer than ``max_length``, before it silently does it.

TRL 1.16 handles long rows differently per trainer, and says nothing:
- ``RewardTrainer`` drops every pair whose chosen or rejected conversation is over ``max_length``;
- ``DPOTrainer`` drops rows whose prompt alone fills ``max_length`` and cuts the end off the rest;
- ``SFTTrainer`` and ``KTOTrainer`` truncate, and so does trl.experimental's ``ORPOTrainer``
  (the reply; a prompt that fills ``max_length`` leaves it empty, and the row stays).
Real multi-turn data is long: with ``max_length=128`` only ~13 % of HH-RLHF's pairs fit, so a
reward model could train on a handful of the pairs it was given. :func:`check` counts, prints one
line, and refuses when more than ``data.max_dropped`` of the rows would be dropped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from alignlab.errors import AlignlabError

log = logging.getLogger("alignlab")


@dataclass(frozen=True)
class LengthReport:
    """How many of ``rows`` TRL will drop or truncate at ``max_length`` tokens."""

    rows: int
    max_length: int | None
    dropped: int
    truncated: int
    fits_95: int  # the length that keeps 95 % of the rows whole


def _text(tokenizer: Any, value: Any, prompt: bool = False) -> str:
    if isinstance(value, str):
        return value
    return tokenizer.apply_chat_template(list(value), tokenize=False,
                                         add_generation_prompt=prompt)


def _lengths(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _joined(tokenizer: Any, prompt: Any, completion: Any) -> str:
    if isinstance(prompt, str):
        return prompt + (completion if isinstance(completion, str) else _text(tokenizer,
                                                                           completion))
    return _text(tokenizer, list(prompt) + list(completion))


def measure(dataset: Any, tokenizer: Any, method: str, max_length: int | None) -> LengthReport:
    """Token counts of ``dataset`` as ``method``'s TRL trainer will see it."""
    cols = set(dataset.column_names)
    rows = len(dataset)
    if "prompt" in cols and "chosen" in cols:  # pairs (explicit prompt)
        prompts = _lengths(tokenizer, [_text(tokenizer, p, prompt=True)
                                       for p in dataset["prompt"]])
        chosen = _lengths(tokenizer, [_joined(tokenizer, p, c) for p, c in
                                      zip(dataset["prompt"], dataset["chosen"], strict=True)])
        rejected = _lengths(tokenizer, [_joined(tokenizer, p, r) for p, r in
                                        zip(dataset["prompt"], dataset["rejected"], strict=True)])
        longest = [max(c, r) for c, r in zip(chosen, rejected, strict=True)]
    elif "chosen" in cols:  # implicit-prompt pairs
        chosen = _lengths(tokenizer, [_text(tokenizer, c) for c in dataset["chosen"]])
        rejected = _lengths(tokenizer, [_text(tokenizer, r) for r in dataset["rejected"]])
        prompts = [0] * rows
        longest = [max(c, r) for c, r in zip(chosen, rejected, strict=True)]
    elif "messages" in cols:
        longest = _lengths(tokenizer, [_text(tokenizer, m) for m in dataset["messages"]])
        prompts = [0] * rows
    elif "prompt" in cols and "completion" in cols:
        longest = _lengths(tokenizer, [_joined(tokenizer, p, c) for p, c in
                                       zip(dataset["prompt"], dataset["completion"], strict=True)])
        prompts = [0] * rows
    elif "text" in cols:
        longest = _lengths(tokenizer, list(dataset["text"]))
        prompts = [0] * rows
    else:  # a layout this check does not know: nothing to say
        return LengthReport(rows, max_length, 0, 0, 0)
    fits_95 = sorted(longest)[max(0, math.ceil(0.95 * rows) - 1)] if rows else 0
    if max_length is None:
        return LengthReport(rows, None, 0, 0, fits_95)
    over = [n > max_length for n in longest]
    if method == "reward":
        dropped, truncated = sum(over), 0
    elif method == "dpo":
        gone = [p >= max_length for p in prompts]
        dropped = sum(gone)
        truncated = sum(o and not g for o, g in zip(over, gone, strict=True))
    else:
        dropped, truncated = 0, sum(over)
    return LengthReport(rows, max_length, dropped, truncated, fits_95)


def check(dataset: Any, tokenizer: Any, method: str, max_length: int | None,
          max_dropped: float, trainer: str) -> LengthReport:
    """Measure, print one line when rows are cut or dropped, refuse when too many are dropped."""
    report = measure(dataset, tokenizer, method, max_length)
    if not report.dropped and not report.truncated:
        if report.max_length is not None and report.rows:
            log.info("Lengths: all %d rows fit in max_length=%d tokens", report.rows,
                     report.max_length)
        return report
    fix = (f"95 % of the rows fit in {report.fits_95} tokens: set method.args.max_length="
           f"{report.fits_95} (within the model's context), or shorten the data")
    if report.dropped and report.dropped > max_dropped * report.rows:
        raise AlignlabError(
            f"{report.dropped} of {report.rows} training rows are longer than max_length="
            f"{report.max_length} tokens and {trainer} would drop them, leaving "
            f"{report.rows - report.dropped}. {fix}; or allow it with "
            f"data.max_dropped={report.dropped / report.rows:.2f}.")
    parts = []
    if report.dropped:
        parts.append(f"{trainer} drops {report.dropped}")
    if report.truncated:
        parts.append(f"{trainer} truncates {report.truncated}")
    log.warning("Lengths: %d of %d rows are longer than max_length=%d tokens: %s. %s.",
                report.dropped + report.truncated, report.rows, report.max_length,
                " and ".join(parts), fix)
    return report


def context_length(model: Any, tokenizer: Any) -> int | None:
    """The longest sequence ``model`` takes: its position limit, capped by the tokenizer's
    ``model_max_length`` (None when neither states one; tokenizers say 10**30 for "unset")."""
    limits = [getattr(getattr(model, "config", None), "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    known = [int(n) for n in limits if isinstance(n, int) and 0 < n < 10**8]
    return min(known) if known else None


def fit_left(turns: Sequence[dict[str, str]],
             fits: Any) -> tuple[list[dict[str, str]] | None, bool]:
    """``turns`` cut from the left until ``fits(turns)``: the oldest turns go first (a leading
    system message stays, and what is left starts with a user turn); the last user turn is
    never cut. Returns (turns, whether any were cut), or (None, True) when even the last
    turn does not fit."""
    turns = list(turns)
    if fits(turns):
        return turns, False
    system = [m for m in turns[:1] if m["role"] == "system"]
    rest = turns[len(system):]
    while len(rest) > 1:
        rest = rest[1:]
        while len(rest) > 1 and rest[0]["role"] != "user":
            rest = rest[1:]
        if fits([*system, *rest]):
            return [*system, *rest], True
    return None, True


@dataclass
class Fitted:
    """What fitting rows to a context did: how many were cut from the left, which skipped."""

    rows: int
    context: int | None
    cut: int = 0
    skipped: list[str] = field(default_factory=list)  # keys of the skipped rows

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "context": self.context, "cut": self.cut,
                "skipped": len(self.skipped)}

    def check(self, what: str, max_dropped: float, fix: str) -> None:
        """Refuse when more than ``max_dropped`` of the rows would be skipped."""
        skipped = len(self.skipped)
        if skipped and skipped > max_dropped * self.rows:
            context = f"{self.context}-token context" if self.context else \
                "served model's context"
            raise AlignlabError(
                f"{skipped} of {self.rows} {what} are longer than the {context} even with "
                f"their oldest turns cut, and would be skipped. {fix}; or "
                f"allow it with data.max_dropped={skipped / self.rows:.2f}.")

    def line(self, what: str) -> str | None:
        """One line naming what was cut and skipped (None when every row fitted whole)."""
        skipped = self.skipped
        if not self.cut and not skipped:
            return None
        named = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        context = f"{self.context}-token context" if self.context else "served model's context"
        return (f"{self.cut + len(skipped)} of {self.rows} {what} were longer than the "
                f"{context}: {self.cut} cut from the left (their oldest "
                f"turns dropped), {len(skipped)} skipped" + (f" ({named})" if skipped else "")
                + ".")
