"""Which samples a run page shows: a few per category, where the policy and the model it is
compared with answer differently first."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alignlab.report.figures import is_number as _is_number

SAMPLES_PER_CATEGORY = 3
MAX_TEXT = 800  # characters of a prompt/response shown in the samples table


def clip(text: Any, limit: int = MAX_TEXT) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _differs(sample: Mapping[str, Any]) -> bool:
    ref = sample.get("reference_response")
    return ref is not None and str(ref).strip() != str(sample.get("response") or "").strip()


def _failed(sample: Mapping[str, Any]) -> bool:
    score = sample.get("score")
    return _is_number(score) and score < 1


def _improved(sample: Mapping[str, Any]) -> bool:
    score, ref = sample.get("score"), sample.get("reference_score")
    return _is_number(score) and _is_number(ref) and score > ref


def _take(pool: list[dict[str, Any]], chosen: list[dict[str, Any]], test: Any,
          limit: int) -> bool:
    """Add samples of ``pool`` that pass ``test`` (new prompts only) to ``chosen`` until it
    holds ``limit``; whether it does."""
    for sample in pool:
        if len(chosen) >= limit:
            break
        if test(sample) and str(sample.get("prompt")) not in {str(c.get("prompt"))
                                                              for c in chosen}:
            chosen.append(sample)
    return len(chosen) >= limit


def pick_samples(samples: list[dict[str, Any]],
                 per_category: int = SAMPLES_PER_CATEGORY) -> list[dict[str, Any]]:
    """The samples worth reading: up to ``per_category`` of every category, distinct prompts,
    where policy and reference (or start) answer differently first: one the policy got better
    at, one it fails, then other differences, other failures, the rest. The first rows of
    samples.jsonl were the same easy prompts of one category every time."""
    by_cat: dict[str, list[dict[str, Any]]] = {}
    for sample in samples:
        by_cat.setdefault(str(sample.get("category") or ""), []).append(sample)
    order = ("helpful", "harmful", "borderline")
    cats = [c for c in order if c in by_cat] + sorted(c for c in by_cat if c not in order)
    # One of each of the first two kinds (a failure even where policy and start agree), then
    # the rest in order of preference.
    once = ((lambda s: _differs(s) and _improved(s),),
            (lambda s: _differs(s) and _failed(s), _failed))
    fill = (_differs, _failed, lambda s: True)
    picked: list[dict[str, Any]] = []
    for cat in cats:
        chosen: list[dict[str, Any]] = []
        for alternatives in once:
            limit = min(per_category, len(chosen) + 1)
            any(_take(by_cat[cat], chosen, test, limit) for test in alternatives)
        for test in fill:
            _take(by_cat[cat], chosen, test, per_category)
        picked += chosen
    return picked


def sample_rows(samples: list[dict[str, Any]],
                 other: str = "reference") -> tuple[list[str], list[list[Any]]]:
    shown = pick_samples(samples)
    has_ref = any(s.get("reference_response") is not None for s in shown)
    has_score = any(_is_number(s.get("score")) for s in shown)
    has_ref_score = any(_is_number(s.get("reference_score")) for s in shown)
    has_cat = any(s.get("category") for s in shown)
    headers = ["#"] + (["category"] if has_cat else []) + ["prompt", "response"]
    headers += ["score"] if has_score else []
    headers += [f"{other} response"] if has_ref else []
    headers += [f"{other} score"] if has_ref_score else []
    rows = []
    for i, sample in enumerate(shown):
        row: list[Any] = [i + 1]
        if has_cat:
            row.append(str(sample.get("category") or ""))
        row += [clip(sample.get("prompt")), clip(sample.get("response"))]
        if has_score:
            score = sample.get("score")
            row.append(score if _is_number(score) else "")
        if has_ref:
            row.append(clip(sample.get("reference_response")))
        if has_ref_score:
            score = sample.get("reference_score")
            row.append(score if _is_number(score) else "")
        rows.append(row)
    return headers, rows
