"""What a run measured, as the report shows it: the headline (start -> trained and the paired
difference), the start-vs-trained table per category, and the detail rows of eval.json.

Every figure is read through :class:`alignlab.results.Interval` (eval.json's one schema) and
the method's own row (:mod:`alignlab.methods.spec`); nothing here names a method.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from alignlab import card, console, methods
from alignlab.methods import spec as specs
from alignlab.report.blocks import format_number
from alignlab.report.load import Run, get
from alignlab.results import Interval, bounds

# eval.json sections: (key, label, candidate keys for the headline value).
EVAL_SECTIONS = (
    ("judge", "Judge score", ("score", "mean")),
    ("win_rate", "Win rate", ("win_rate", "mean")),
    ("kl", "KL to reference", ("kl", "mean", "k1")),
    ("reward", "Reward", ("mean",)),
    ("length", "Length", ("mean",)),
    # The model the policy is compared with (start or reference; eval.json "baseline").
    ("baseline_judge", "Baseline judge score", ("score", "mean")),
    ("baseline_reward", "Baseline reward", ("mean",)),
    # Sections drawn out of nested ones by _with_baseline (the LLM judge, pairs, safety).
    ("lc_win_rate", "Win rate, length-controlled", ("lc_win_rate",)),
    ("pair_accuracy", "Pair accuracy", ("accuracy",)),
    ("over_refusal", "Over-refusal (safe prompts refused)", ("mean",)),
    ("unsafe_compliance", "Unsafe prompts complied with", ("mean",)),
)
_CI_KEYS = {"ci_low", "ci_high", "n", "n_prompts"}
_WTL_KEYS = {"wins", "ties", "losses"}
# The KL's standard errors and k3 estimate: notes of the KL's own row, not rows of their own.
_KL_DETAIL = ("stderr", "kl_k3", "stderr_k3")
# Per-category figures the start-vs-trained table shows, when the page has it.
_PER_CATEGORY = ("per_category", "per_category_n", "refusals")
# Keys that qualify a sibling figure X (``X_n``, ``X_ci_low``...) rather than being figures.
_QUALIFIERS = ("_n_prompts", "_ci_low", "_ci_high", "_n")
# Top-level eval.json numbers that describe how the evaluation ran, not what it measured.
EVAL_SETTINGS = ("n_prompts", "samples_per_prompt", "temperature")
_Z95 = 1.959963984540054


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def ci_text(section: Mapping[str, Any]) -> str:
    """``[low, high]`` of an eval.json object with bounds (in the tables' number format)."""
    found = bounds(section)
    return f"[{format_number(found[0])}, {format_number(found[1])}]" if found else ""


def finite_bounds(section: Any) -> tuple[float, float] | None:
    """(low, high) of an eval.json object when both are finite, else None."""
    found = bounds(section)
    return found if found and all(math.isfinite(b) for b in found) else None


def _headline_value(section: Mapping[str, Any], keys: Iterable[str]) -> tuple[str | None, Any]:
    for key in keys:
        if is_number(section.get(key)):
            return key, section[key]
    return None, None


# --------------------------------------------------------------------------- headline


@dataclass(frozen=True)
class Change:
    """The run's headline: what it is scored by, at the start and trained, and (paired on
    the same prompts) their difference; ``by_category``: the same per category."""

    what: str
    start: Interval | None
    trained: Interval
    diff: Interval | None
    by_category: tuple[card.Comparison, ...] = ()
    other: str = "start"  # the model compared with: the start, or the reference (PPO's)

    @property
    def at_other(self) -> str:
        return "at the start" if self.other == "start" else "for the reference"


def _before_after(run: Run) -> tuple[str, Mapping[str, Any], Mapping[str, Any]] | None:
    """:func:`alignlab.console.before_after` of the run's metrics with its eval.json's toy
    judge and baseline (start or reference)."""
    return console.before_after({**run.metrics, **{k: run.eval[k] for k in ("judge", "baseline")
                                                   if isinstance(run.eval.get(k), Mapping)}})


def change(run: Run) -> Change | None:
    """From samples.jsonl where it pairs the start's scores with the trained model's (each
    category too), else eval.json's start and trained figures (no paired difference)."""
    evals = run.eval
    pair = _before_after(run)
    what = pair[0] if pair is not None else "score"
    rows = card.comparisons(run.samples)
    # Only where samples.jsonl holds every sample eval.json's score is the mean of (it
    # always has; a copy cut short would give other figures than eval.json's).
    judge_n = get(evals, "judge.n")
    complete = rows and (not is_number(judge_n) or rows[0].n == judge_n)
    if complete and rows[0].start is not None:
        other = "reference" if get(evals, "baseline.role") == "reference" else "start"
        return Change(what, rows[0].start, rows[0].trained, rows[0].diff, tuple(rows[1:]),
                      other)
    if pair is None:
        return None
    keys = ("score", "mean") if what == "toy judge" else ("mean",)
    start, trained = Interval.read(pair[1], keys), Interval.read(pair[2], keys)
    if trained is None or start is None or not (finite(start.mean) and finite(trained.mean)):
        return None
    return Change(what, start, trained, None)


def _spec(c: Change) -> str:
    """Two decimals for scores of order one (the toy judge, shares), else 3 significant."""
    values = [ci.mean for ci in (c.start, c.trained) if ci is not None]
    return ".2f" if all(abs(v) <= 10 for v in values) else ".3g"


def _text(ci: Interval | None, spec: str, signed: bool = False) -> str:
    if ci is None:
        return "—"
    return ci.text(("+" if signed else "") + spec)


def headline_text(c: Change) -> str:
    spec = _spec(c)
    text = (f"{c.what.capitalize()}: {_text(c.start, spec)} {c.at_other} → "
            f"{_text(c.trained, spec)} trained")
    if c.diff is not None:
        text += f"; difference {_text(c.diff, spec, signed=True)}"
    return text


def headline_details(run: Run, c: Change | None) -> list[str]:
    """The lines under the headline: how it was measured, the method's own figures."""
    lines = []
    if c is not None:
        n, prompts = c.trained.n, c.trained.n_prompts
        paired = " (the difference paired: the same prompts for both)" \
            if c.diff is not None else ""
        size = f"{n} samples" + (f" of {prompts} prompts" if prompts else "") if n else ""
        lines.append(f"95 % intervals in brackets, clustered by prompt{paired}"
                     + (f"; {size}" if size else "") + ".")
    figures = stage_figures(run)
    if figures:
        lines.append(f"{run.method or 'Run'}: {figures}.")
    return lines


# --------------------------------------------------------------------------- tables


def category_rows(run: Run, c: Change) -> list[list[Any]]:
    """The start-vs-trained table: per category, n, start, trained and their difference with
    intervals, and the share refused (start -> trained) where eval.json has it."""
    judge = run.eval.get("judge") if isinstance(run.eval.get("judge"), Mapping) else {}
    base = get(run.eval, "baseline.judge", {})
    refused = judge.get("refusals") if isinstance(judge.get("refusals"), Mapping) else {}
    base_refused = base.get("refusals") if isinstance(base, Mapping) and isinstance(
        base.get("refusals"), Mapping) else {}
    safety = get(run.eval, "safety.per_category", {})
    rows, spec = [], _spec(c)
    overall = card.Comparison("overall", c.trained.n or 0, c.trained, c.start, c.diff)
    for cmp in (overall, *c.by_category):
        n = f"{cmp.n} ({cmp.trained.n_prompts} prompts)" if cmp.trained.n_prompts else cmp.n
        row = [cmp.name, n, _text(cmp.start, spec), _text(cmp.trained, spec),
               _text(cmp.diff, spec, signed=True)]
        after = refused.get(cmp.name)
        if after is None and isinstance(safety, Mapping):
            after = get(safety, f"{cmp.name}.refused")
        before = base_refused.get(cmp.name)
        row.append(f"{before:.2f} → {after:.2f}" if is_number(before) and is_number(after)
                   else f"{after:.2f}" if is_number(after) else "")
        rows.append(row)
    if not any(r[-1] for r in rows):
        rows = [r[:-1] for r in rows]
    return rows


def category_headers(c: Change) -> tuple[str, ...]:
    return ("category", "n", c.other, "trained", "difference", f"refused: {c.other} → trained")


def _qualified(section: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The interval and n of figure ``key`` in ``section``: its ``key_ci_low``... siblings."""
    figure = Interval.sibling(section, key)
    own = figure.to_json() if figure is not None else {}
    return {k: v for k, v in own.items() if k != "mean" and v is not None
            and (k == "ci_low" or k == "ci_high" or f"{key}_{k}" in section)}


def _is_qualifier(section: Mapping[str, Any], key: str) -> bool:
    return any(key.endswith(q) and key[: -len(q)] in section for q in _QUALIFIERS)


def n_cell(section: Mapping[str, Any]) -> Any:
    """The n column: samples, and the prompts they came from when the interval is clustered."""
    n, prompts = section.get("n"), section.get("n_prompts")
    if not is_number(n):
        return ""
    return f"{n} ({prompts} prompts)" if is_number(prompts) else n


def _kl_row(label: str, section: Mapping[str, Any], main: Any) -> tuple[str, list[str]]:
    """The KL's interval (its standard error's normal 95 % interval) and its k3 note."""
    se, k3, se3 = (section.get(k) for k in _KL_DETAIL)
    ci = f"[{format_number(main - _Z95 * se)}, {format_number(main + _Z95 * se)}]" \
        if finite(main) and finite(se) else ""
    notes = [f"± {format_number(se)} s.e."] if finite(se) else []
    if is_number(k3):
        notes.append(f"k3 estimator {format_number(k3)}"
                     + (f" ± {format_number(se3)} s.e." if is_number(se3) else ""))
    return ci, notes


def eval_rows(evals: Mapping[str, Any], *, by_category: bool = False) -> list[list[Any]]:
    """Rows: metric, value, 95 % CI, n, notes. Unknown sections are shown generically.

    A figure's n is its own (``X_n``, or per category ``per_category_n``) where eval.json has
    one, else its section's: the samples every figure of the section is computed from.
    ``by_category``: the page has the start-vs-trained table, which shows the per-category
    scores and refusals, so they are not rows here.
    """
    rows: list[list[Any]] = []
    evals = _with_baseline(evals, by_category)
    known = {key for key, _, _ in EVAL_SECTIONS}
    sections = [s for s in EVAL_SECTIONS if s[0] in evals]
    sections += [
        (key, key, ("value", "mean", "score"))
        for key in evals
        if key not in known and key not in EVAL_SETTINGS
    ]
    for key, label, headline_keys in sections:
        section = evals[key]
        if is_number(section):
            rows.append([label, section, "", "", ""])
            continue
        if not isinstance(section, Mapping):
            continue
        main_key, main = _headline_value(section, headline_keys)
        notes = []
        ci = ci_text(section)
        skip = _CI_KEYS | ({main_key} if main_key else set())
        if key == "kl":
            kl_ci, kl_notes = _kl_row(label, section, main)
            ci, notes = ci or kl_ci, kl_notes
            skip |= set(_KL_DETAIL)
        if key == "win_rate" and all(is_number(section.get(k)) for k in _WTL_KEYS):
            notes.append(f"W/T/L {section['wins']}/{section['ties']}/{section['losses']}")
            skip |= _WTL_KEYS
        if by_category and key in ("judge", "baseline_judge"):
            skip |= set(_PER_CATEGORY)
        for sub, value in section.items():
            if isinstance(value, str):
                notes.append(f"vs {value}" if sub == "reference" else f"{sub}: {value}")
        n = n_cell(section)
        rows.append([label, main, ci, n, "; ".join(notes)])
        for sub, value in section.items():
            if sub in skip or _is_qualifier(section, sub):
                continue
            if sub == "mean" and value == main:  # judge.score and judge.mean are one figure
                continue
            if is_number(value):
                own = _qualified(section, sub)
                rows.append([f"{label}: {sub}", value, ci_text(own), n_cell(own) if own else n,
                             ""])
            elif isinstance(value, Mapping):
                # e.g. judge.per_category: one row per category, n from per_category_n; the
                # refusal shares are per category of the same samples, so they share those n.
                counts = section.get(f"{sub}_n", section.get("per_category_n"))
                counts = counts if isinstance(counts, Mapping) else {}
                for cat, cat_value in value.items():
                    if is_number(cat_value):
                        cat_n = counts.get(cat, "")
                        name = f"{label}: {cat}" if sub == "per_category" else \
                            f"{label}: {sub} {cat}"
                        rows.append([name, cat_value, "", cat_n, sub])
    return rows


def eval_settings(evals: Mapping[str, Any]) -> str:
    """One line on how the evaluation ran (prompts, samples per prompt, temperature)."""
    parts = [f"{key} {format_number(evals[key])}" for key in EVAL_SETTINGS
             if is_number(evals.get(key))]
    text = ("Settings: " + ", ".join(parts) + ".") if parts else ""
    if any(isinstance(v, Mapping) and is_number(v.get("n_prompts")) for v in evals.values()):
        # Said once here rather than in every row: why n shows prompts beside samples.
        text += (" 95 % intervals are clustered by prompt: the samples of one prompt are "
                 "correlated, so they count for less than independent ones.")
    return text.strip()


def _with_baseline(evals: Mapping[str, Any], by_category: bool = False) -> dict[str, Any]:
    """eval.json with its ``baseline`` (the start or the reference, scored on the same prompts)
    as sections of their own, each noting which model it is."""
    out = _drawn_out(dict(evals), by_category)
    base = out.pop("baseline", None)
    if isinstance(base, Mapping):
        who = "the starting model" if base.get("role") == "start" else "the reference"
        for key in ("judge", "reward"):
            if isinstance(base.get(key), Mapping):
                out[f"baseline_{key}"] = {**base[key], "model": who}
    return out


def _drawn_out(out: dict[str, Any], by_category: bool = False) -> dict[str, Any]:
    """eval.json's nested figures (the LLM judge's length-controlled win rate, the pair
    benchmark's categories and calibration, the safety measures) as sections of their own,
    each with its interval and n."""
    win = out.get("win_rate")
    if isinstance(win, Mapping) and isinstance(win.get("length_controlled"), Mapping):
        win = dict(win)
        lc = Interval.read(win.pop("length_controlled"), ("lc_win_rate",))
        if lc is not None:
            out["lc_win_rate"] = lc.to_json("lc_win_rate")
        asked = win.pop("judgements", None)
        if isinstance(asked, Mapping):
            win["verdicts"] = ", ".join(f"{v} {k}" for k, v in asked.items())
        win.pop("too_long", None)
        out["win_rate"] = win
    pairs = out.pop("pairs", None)
    if isinstance(pairs, Mapping):
        main = {k: v for k, v in pairs.items() if is_number(v) or isinstance(v, str)}
        calibration = pairs.get("calibration") or {}
        if is_number(calibration.get("ece")):
            main["calibration_error"] = calibration["ece"]
        out["pair_accuracy"] = main
        for cat, c in (pairs.get("per_category") or {}).items():
            figure = Interval.read(c, ("accuracy",))
            if figure is not None:
                out[f"Pair accuracy: {cat}"] = figure.to_json()
        for b in calibration.get("buckets") or []:
            low, high = b["confidence"]
            figure = Interval.read(b, ("accuracy",))
            if figure is not None:
                out[f"Pair accuracy at confidence {low:g}-{high:g}"] = {
                    **figure.to_json(), "mean confidence": f"{b['mean_confidence']:.3f}"}
    safety = out.pop("safety", None)
    if isinstance(safety, Mapping):
        for key in ("over_refusal", "unsafe_compliance"):
            if isinstance(safety.get(key), Mapping):
                out[key] = {**safety[key], "decided by": str(safety.get("decided_by"))}
        for cat, c in ({} if by_category else safety.get("per_category") or {}).items():
            out[f"Refused: {cat} ({c.get('safety')})"] = {"mean": c["refused"], "n": c["n"]}
    return out


# --------------------------------------------------------------------------- one line per run


def summary(evals: Mapping[str, Any]) -> dict[str, Any]:
    """Headline numbers of an eval.json: judge, win rate, KL, reward mean (None if absent)."""
    out: dict[str, Any] = {}
    for key, _, headline_keys in EVAL_SECTIONS[:4]:
        section = evals.get(key)
        if is_number(section):
            out[key] = section
        elif isinstance(section, Mapping):
            out[key] = _headline_value(section, headline_keys)[1]
        else:
            out[key] = None
    return out


def _figure_text(label: str, value: Any) -> str:
    """``label value``: a number, a (before, after) pair, or a section with its interval."""
    if isinstance(value, tuple):
        return f"{label} {format_number(value[0])} → {format_number(value[1])}"
    if isinstance(value, Mapping):
        return f"{label} {format_number(value.get('score'))} {ci_text(value)}".strip()
    return f"{label} {format_number(value)}"


def stage_figures(run: Run) -> str:
    """The method's own headline figures (:attr:`alignlab.methods.spec.Method.headline`:
    SFT's final loss, the reward model's pair accuracy, a preference method's reward accuracy
    and margin, PPO's score and KL, ...)."""
    spec = methods.find(run.method)
    figures = (spec.headline if spec is not None else specs.final_loss)(run.metrics, run.eval)
    return "; ".join(_figure_text(label, value) for label, value in figures)


def stage_headline(run: Run) -> str:
    """What a stage is judged by, from its own files: its method's headline figures, with the
    toy judge at the start -> after training when known."""
    figures = stage_figures(run)
    parts = [figures] if figures else []
    spec = methods.find(run.method)
    pair = _before_after(run)
    if pair is not None and (spec is None or spec.shows_change):
        what, before, after = pair
        key = ("score", "mean")
        b, a = _headline_value(before, key)[1], _headline_value(after, key)[1]
        if finite(b) and finite(a):
            parts.append(f"{what} {format_number(b)} → {format_number(a)}")
    return "; ".join(parts) or "-"
