"""The pages: a run's (headline first, then per category, then the detail), a recipe's (one row
per stage) and a sweep's (one row per member, the reward-vs-KL frontier)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from alignlab import card, methods
from alignlab.errors import AlignlabError
from alignlab.report import figures, plots
from alignlab.report.blocks import (
    Heading,
    Headline,
    Image,
    Links,
    Notes,
    Page,
    Paragraph,
    format_number,
    table,
    write,
)
from alignlab.report.figures import finite, finite_bounds, is_number
from alignlab.report.load import (
    Run,
    detect_kind,
    flatten,
    get,
    is_stage_dir,
    load_run,
    numbered_members,
    read_yaml,
)
from alignlab.report.samples import SAMPLES_PER_CATEGORY, clip, sample_rows

# Config keys that differ between sweep members for bookkeeping reasons, not by design.
_NOISY_CONFIG_LEAVES = {"output_dir", "run_dir", "logging_dir", "dir", "run_name"}
MAX_ARGS = 16  # method.args rows in the config table


# --------------------------------------------------------------------------- run page


def _model_name(config: Mapping[str, Any]) -> Any:
    name, path = get(config, "model.name"), get(config, "model.path")
    if name and path and str(name) != str(path):
        return f"{name} ({path})"
    return name or path


def _config_rows(run: Run) -> list[list[Any]]:
    config, metrics = run.config, run.metrics
    rows: list[list[Any]] = [
        ["method", run.method],
        ["stage", metrics.get("stage")],
        ["model", _model_name(config)],
        ["data", get(config, "data.name")],
        ["seed", config.get("seed")],
    ]
    rows = [r for r in rows if r[1] is not None]
    args = get(config, "method.args")
    if isinstance(args, Mapping):
        flat = flatten(args)
        for key in list(flat)[:MAX_ARGS]:
            value = flat[key]
            if isinstance(value, list | dict):
                value = json.dumps(value)
            rows.append([f"method.args.{key}", value])
        if len(flat) > MAX_ARGS:
            rows.append(["…", f"{len(flat) - MAX_ARGS} more method.args in config.yaml"])
    return rows


def _subtitle(run: Run) -> str | None:
    """``Method sft · model llama-small (...) · data toy · seed 42``."""
    parts = [f"{label} {value}" for label, value in (
        ("method", run.method), ("model", _model_name(run.config)),
        ("data", get(run.config, "data.name")), ("seed", run.config.get("seed")))
        if value is not None]
    text = " · ".join(parts)
    return text[:1].upper() + text[1:] if text else None


def _curve_keys(run: Run) -> tuple[str, ...]:
    """The run's method's curve keys; every method's for a run of no known method."""
    spec = methods.find(run.method)
    return tuple(spec.curve_keys) if spec is not None else methods.curve_keys()


def _curve_series(log_history: Iterable[Any],
                  keys: tuple[str, ...]) -> dict[str, tuple[list[float], list[float]]]:
    """Per key, (x, y) points from a HF ``log_history`` (x = step, else entry index)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for index, entry in enumerate(log_history):
        if not isinstance(entry, Mapping):
            continue
        x = entry.get("step")
        x = x if finite(x) else index
        for key in keys:
            value = entry.get(key)
            if finite(value):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(float(x))
                ys.append(float(value))
    return {key: series[key] for key in keys if key in series}


def _bounds(ci: Any) -> tuple[float, float] | None:
    return (ci.low, ci.high) if ci is not None and ci.has_bounds else None


def _change_plot(root: Path, change: figures.Change) -> list[Any]:
    """Start vs trained bars with intervals: overall and per category where the samples have
    categories, else the overall figure alone."""
    if change.start is None:
        return []
    if change.by_category:
        groups = [("overall", change.start, change.trained)]
        groups += [(c.name, c.start, c.trained) for c in change.by_category if c.start]
        png = root / "by_category.png"
        plots.grouped_bars(
            [g[0] for g in groups],
            {change.other: ([g[1].mean for g in groups], [_bounds(g[1]) for g in groups]),
             "trained": ([g[2].mean for g in groups], [_bounds(g[2]) for g in groups])},
            f"{change.what}: {change.other} vs trained", change.what, png)
        return [Image(png, f"{change.what} {change.at_other} and trained, per category")]
    png = root / "before_after.png"
    plots.bars([change.other, "trained"], [change.start.mean, change.trained.mean],
               f"{change.what}: {change.other} vs trained", change.what, png,
               intervals=[_bounds(change.start), _bounds(change.trained)])
    return [Image(png, f"{change.what} at the start and after training")]


def _training_rows(metrics: Mapping[str, Any]) -> list[list[Any]]:
    """Trainer figures with their names and units, then any other trainer key as it is."""
    rows = [list(r) for r in card.training_rows(dict(metrics))]
    train = metrics.get("train")
    if isinstance(train, Mapping):
        rows += [[k, v] for k, v in train.items() if k not in card.TRAINING
                 and (is_number(v) or isinstance(v, str))]
    return rows


def _run_page(root: Path) -> Page:
    run = load_run(root)
    page = Page(f"alignlab run: {root.name}" + (f" ({run.method})" if run.method else ""))
    subtitle = _subtitle(run)
    if subtitle:
        page.add(Paragraph(subtitle))

    change = figures.change(run)
    details = figures.headline_details(run, change)
    if change is not None:
        page.add(Headline(figures.headline_text(change), tuple(details)))
        page.add(*_change_plot(root, change))
    elif details:
        page.add(Headline(details[-1]))
    if change is not None and change.diff is not None:
        rows = figures.category_rows(run, change)
        page.add(Heading(f"By category: {change.other} vs trained"),
                 table(figures.category_headers(change)[:len(rows[0])], rows),
                 Paragraph("Means with 95 % intervals clustered by prompt; the difference is "
                           "paired: the same prompts scored for both models."))

    page.add(Heading("Evaluation"))
    rows = figures.eval_rows(run.eval, by_category=change is not None and change.diff is not None)
    if rows:
        page.add(table(["metric", "value", "95% CI", "n", "notes"], rows))
        settings = figures.eval_settings(run.eval)
        if settings:
            page.add(Paragraph(settings))
    else:
        page.add(Paragraph("No evaluation results (eval.json missing or empty)."))

    page.add(Heading("Training"))
    train_rows = _training_rows(run.metrics)
    if train_rows:
        page.add(table(["figure", "value"], train_rows))
    history = run.metrics.get("log_history")
    series = _curve_series(history, _curve_keys(run)) if isinstance(history, list) else {}
    if series:
        png = root / "training_curves.png"
        plots.curves(series, png)
        page.add(Image(png, "training curves"))
    else:
        page.add(Paragraph("No training curves: no known metric in metrics.json log_history "
                           "(or no file)."))

    page.add(Heading("Configuration"))
    config_rows = _config_rows(run)
    page.add(table(["key", "value"], config_rows) if config_rows
             else Paragraph("No config.yaml found."))

    if run.samples:
        other = "start" if get(run.eval, "baseline.role") == "start" else "reference"
        headers, sample_table = sample_rows(run.samples, other)
        page.add(Heading(f"Samples ({len(sample_table)} of {len(run.samples)})"),
                 Paragraph(f"Up to {SAMPLES_PER_CATEGORY} prompts per category, where the "
                           f"policy and the {other} model answer differently first (one the "
                           "policy does better, one it fails), side by side; every sample is "
                           "in samples.jsonl."),
                 table(headers, sample_table))
    if run.notes:
        page.add(Heading("Notes"), Notes(tuple(run.notes)))
    return page


# --------------------------------------------------------------------------- recipe / sweep


def _render_child(path: Path, notes: list[str]) -> bool:
    """Render a stage/member report; a broken child becomes a note, not a failed parent."""
    try:
        render(path)
    except AlignlabError as exc:
        notes.append(f"{path.name}: {exc}")
        return False
    return True


def _recipe_spec(root: Path, notes: list[str]) -> Any:
    """recipe.yaml, or None (with one note) when it cannot be read."""
    path = root / "recipe.yaml"
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        notes.append(f"Could not read recipe.yaml ({exc.strerror or exc}); the stages shown are "
                     "the stage folders found here.")
    except UnicodeDecodeError:
        notes.append("recipe.yaml is not UTF-8 text; the stages shown are the stage folders "
                     "found here.")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        notes.append(f"recipe.yaml is not valid YAML ({problem}{where}); the stages shown are "
                     "the stage folders found here. Rerun the recipe to rewrite it.")
    return None


def _recipe_stages(root: Path, notes: list[str]) -> list[str]:
    spec = _recipe_spec(root, notes)
    stages = spec.get("stages") if isinstance(spec, Mapping) else None
    names: list[str] = []
    if isinstance(stages, list):
        for stage in stages:
            name = stage.get("name") if isinstance(stage, Mapping) else stage
            if name is not None:
                names.append(str(name))
    elif isinstance(stages, Mapping):
        names = [str(k) for k in stages]
    hidden = [n for n in names if n.startswith((".", "_")) or "/" in n]
    if hidden:
        notes.append(f"Ignored {', '.join(hidden)} in recipe.yaml: not a stage name.")
        names = [n for n in names if n not in hidden]
    if not names:
        if spec is not None:
            notes.append("recipe.yaml lists no stages; showing every stage folder with results.")
        found = [p.name for p in root.iterdir() if is_stage_dir(p)]
        # In the recipe's order where its config.yaml still says it (recipe.stages).
        config = read_yaml(root / "config.yaml", notes) if (root / "config.yaml").is_file() \
            else None
        order = get(config, "recipe.stages")
        order = [str(n) for n in order] if isinstance(order, list) else []
        names = sorted(found, key=lambda n: (order.index(n) if n in order else len(order), n))
    return names


def _recipe_page(root: Path) -> Page:
    notes: list[str] = []
    page = Page(f"alignlab recipe: {root.name}")
    rows: list[list[Any]] = []
    links: list[tuple[str, str]] = []
    bars: list[tuple[str, float, tuple[float, float] | None]] = []
    clustered_judge = True  # every plotted interval clustered by prompt
    for name in _recipe_stages(root, notes):
        stage_dir = root / name
        if not stage_dir.is_dir():
            rows.append([name, "", "", "", "", "", "", "missing"])
            notes.append(f"Stage '{name}' has no directory {stage_dir}.")
            continue
        rendered = _render_child(stage_dir, notes)
        if rendered:
            links.append((name, f"{name}/report"))
        run = load_run(stage_dir)
        s = figures.summary(run.eval)
        rows.append([name, run.method or "", s["judge"], s["win_rate"], s["kl"], s["reward"],
                     figures.stage_headline(run), "ok" if rendered else "no results"])
        if finite(s["judge"]):
            interval = finite_bounds(run.eval.get("judge"))
            bars.append((name, float(s["judge"]), interval))
            if interval is not None:
                clustered_judge &= is_number(get(run.eval, "judge.n_prompts"))

    page.add(Heading("Stages"),
             table(["stage", "method", "judge score", "win rate", "KL", "reward mean",
                    "headline", "status"], rows))
    if bars:
        png = root / "judge_by_stage.png"
        plots.bars([b[0] for b in bars], [b[1] for b in bars], "Judge score per stage",
                   "judge score", png, intervals=[b[2] for b in bars])
        page.add(Image(png, "judge score per stage"))
        if any(b[2] for b in bars):
            clustered = ", clustered by prompt" if clustered_judge else ""
            page.add(Paragraph(f"Error bars: the judge score's 95 % interval{clustered}."))
    else:
        page.add(Paragraph("No stage has a judge score, so there is no judge-score plot."))
    if links:
        page.add(Heading("Stage reports"), Links(tuple(links)))
    if notes:
        page.add(Heading("Notes"), Notes(tuple(notes)))
    return page


def _parse_overrides(overrides: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            continue
        parsed[key.lstrip("+~")] = value
    return parsed


def _member_params(runs: list[Run]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns that vary across members: Hydra overrides if every member has them, else
    the config leaves that differ (minus per-run bookkeeping such as output_dir)."""
    if runs and all(r.overrides is not None for r in runs):
        params = [_parse_overrides(r.overrides or []) for r in runs]
    else:
        params = [{k: v for k, v in flatten(r.config).items()
                   if not k.startswith("hydra.")
                   and k.rsplit(".", 1)[-1] not in _NOISY_CONFIG_LEAVES} for r in runs]
    keys: list[str] = []
    for p in params:
        keys += [k for k in p if k not in keys]
    varying = [k for k in keys if len({json.dumps(p.get(k), default=str) for p in params}) > 1]
    # A one-member sweep (or identical members) varies nothing; show its overrides instead.
    if not varying and runs and all(r.overrides for r in runs):
        varying = keys
    return varying, params


def _short(value: Any) -> str:
    return clip(value if isinstance(value, str) else format_number(value), 24)


def _sweep_page(root: Path) -> Page:
    notes: list[str] = []
    page = Page(f"alignlab sweep: {root.name}")
    members = numbered_members(root)
    if not members:
        return page.add(Paragraph("This sweep has no numbered member directories yet."))

    runs, rendered = [], []
    for member in members:
        rendered.append(_render_child(member, notes))
        runs.append(load_run(member))
    varying, params = _member_params(runs)
    summaries = [figures.summary(r.eval) for r in runs]
    rows = [[run.path.name, *[_short(p.get(k, "")) for k in varying], s["judge"], s["win_rate"],
             s["kl"], s["reward"]] for run, p, s in zip(runs, params, summaries, strict=True)]
    page.add(Heading("Members"),
             table(["member", *varying, "judge score", "win rate", "KL", "reward mean"], rows))

    # y axis: reward mean when any member has it next to a KL, else the judge score.
    y_key = "reward" if any(finite(s["kl"]) and finite(s["reward"]) for s in summaries) \
        else "judge"
    y_label = "reward mean" if y_key == "reward" else "judge score"
    points = []
    for run, p, s in zip(runs, params, summaries, strict=True):
        if finite(s["kl"]) and finite(s[y_key]):
            label = run.path.name
            if varying:
                label += ": " + ", ".join(
                    f"{k.rsplit('.', 1)[-1]}={_short(p.get(k, ''))}" for k in varying[:2])
            points.append((float(s["kl"]), float(s[y_key]), label))
        else:
            notes.append(f"Member {run.path.name} is not on the frontier plot: "
                         f"its eval.json lacks KL or {y_label}.")
    page.add(Heading(f"{y_label.capitalize()} vs KL"))
    if points:
        png = root / "frontier.png"
        plots.frontier(points, y_label, png)
        page.add(Image(png, f"{y_label} vs KL frontier"))
    else:
        page.add(Paragraph("No member has both a KL and a reward/judge score in eval.json."))
    links = [(r.path.name, f"{r.path.name}/report")
             for r, ok in zip(runs, rendered, strict=True) if ok]
    if links:
        page.add(Heading("Member reports"), Links(tuple(links)))
    if notes:
        page.add(Heading("Notes"), Notes(tuple(notes)))
    return page


PAGES = {"run": _run_page, "recipe": _recipe_page, "sweep": _sweep_page}


def render(path: str | Path) -> Path:
    """Render ``report.md`` + ``report.html`` (and PNG plots) into a results directory; the
    Markdown's path (see :func:`alignlab.report.render_report`)."""
    root = Path(path)
    return write(root, PAGES[detect_kind(root)](root))
