"""Render Markdown + HTML reports from run, recipe and sweep directories (files only).

Reports are built from what training/eval wrote to disk, never from live objects, so a
report can be (re)rendered at any time, on any machine, without torch or a GPU.

Layout understood (see ``detect_kind``):

- run: ``config.yaml`` (or ``.hydra/config.yaml``), ``metrics.json``, optional ``eval.json``
  and ``samples.jsonl``;
- recipe: ``recipe.yaml`` (``stages: [...]``) plus one run directory per stage;
- sweep: ``multirun.yaml`` plus numbered member run directories ``0/``, ``1/``, ...

Every page is built once as a list of blocks and written twice (``report.md`` and a
self-contained ``report.html`` with base64-embedded PNGs), so the two never drift apart.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from alignlab import console, methods
from alignlab.errors import AlignlabError
from alignlab.methods import spec as specs
from alignlab.results import Interval, bounds

__all__ = ["detect_kind", "format_number", "load_run", "render_report"]

RUN_FILES = ("config.yaml", "metrics.json", "eval.json", "samples.jsonl", ".hydra/config.yaml")

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

# Config keys that differ between sweep members for bookkeeping reasons, not by design.
_NOISY_CONFIG_LEAVES = {"output_dir", "run_dir", "logging_dir", "dir", "run_name"}

SAMPLES_PER_CATEGORY = 3
MAX_TEXT = 800  # characters of a prompt/response shown in the samples table
MAX_ARGS = 16  # method.args rows in the config table

Block = tuple[Any, ...]


# --------------------------------------------------------------------------- formatting


def format_number(value: Any) -> str:
    """How numbers appear in report tables: ints as-is, floats with 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return format(value, ".4g")
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def _ci(section: Mapping[str, Any]) -> str:
    """``[low, high]`` of an eval.json object with bounds (in the tables' number format)."""
    found = bounds(section)
    return f"[{format_number(found[0])}, {format_number(found[1])}]" if found else ""


def _interval(section: Any) -> tuple[float, float] | None:
    """(low, high) of an eval.json object when both are finite, else None."""
    found = bounds(section)
    return found if found and all(math.isfinite(b) for b in found) else None


def _clip(text: Any, limit: int = MAX_TEXT) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- loading


def _read_yaml(path: Path, notes: list[str]) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        notes.append(f"Could not read {path.name}: {exc}")
        return None


def _read_json(path: Path, notes: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        notes.append(f"Could not read {path.name}: {exc}")
        return None


def load_run(path: str | Path) -> dict[str, Any]:
    """Read a run directory into a dict; missing or unreadable files become empty values.

    Keys: ``path``, ``config`` (dict), ``metrics`` (dict), ``eval`` (dict), ``samples``
    (list of dicts), ``overrides`` (list of Hydra override strings) and ``notes`` (list of
    problems met while reading, shown in the report instead of crashing).
    """
    run = Path(path)
    notes: list[str] = []
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        cfg_path = run / ".hydra" / "config.yaml"
    config = _read_yaml(cfg_path, notes) if cfg_path.is_file() else None
    metrics = _read_json(run / "metrics.json", notes) if (run / "metrics.json").is_file() else None
    evals = _read_json(run / "eval.json", notes) if (run / "eval.json").is_file() else None
    samples: list[dict[str, Any]] = []
    samples_path = run / "samples.jsonl"
    if samples_path.is_file():
        bad = 0
        for line in samples_path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(item, dict):
                samples.append(item)
            else:
                bad += 1
        if bad:
            notes.append(f"Skipped {bad} malformed line(s) in samples.jsonl")
    overrides_path = run / ".hydra" / "overrides.yaml"
    overrides = _read_yaml(overrides_path, notes) if overrides_path.is_file() else None
    for name, value, kind in (
        ("config.yaml", config, dict),
        ("metrics.json", metrics, dict),
        ("eval.json", evals, dict),
        (".hydra/overrides.yaml", overrides, list),
    ):
        if value is not None and not isinstance(value, kind):
            notes.append(f"Ignored {name}: expected a {kind.__name__}")
    return {
        "path": run,
        "config": config if isinstance(config, dict) else {},
        "metrics": metrics if isinstance(metrics, dict) else {},
        "eval": evals if isinstance(evals, dict) else {},
        "samples": samples,
        "overrides": [str(o) for o in overrides] if isinstance(overrides, list) else None,
        "notes": notes,
    }


def _get(tree: Any, dotted: str, default: Any = None) -> Any:
    """``tree['a']['b']`` for ``'a.b'``; ``default`` when any level is missing."""
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _has_run_files(path: Path) -> bool:
    return any((path / name).is_file() for name in RUN_FILES)


def _numbered_members(path: Path) -> list[Path]:
    members = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(members, key=lambda p: int(p.name))


def detect_kind(path: str | Path) -> str:
    """``'recipe'``, ``'sweep'`` or ``'run'`` for a results directory.

    Raises AlignlabError when the path is missing or holds none of the known files.
    """
    root = Path(path)
    if not root.exists():
        raise AlignlabError(
            f"Cannot render a report: '{root}' does not exist. "
            "Pass a run, recipe or sweep output directory."
        )
    if not root.is_dir():
        raise AlignlabError(
            f"Cannot render a report: '{root}' is a file, not a directory. "
            "Pass the run, recipe or sweep output directory that contains it."
        )
    if (root / "recipe.yaml").is_file():
        return "recipe"
    if (root / "multirun.yaml").is_file():
        return "sweep"
    if _has_run_files(root):
        return "run"
    # A multirun whose multirun.yaml was lost still has numbered members with results.
    if any(_has_run_files(m) for m in _numbered_members(root)):
        return "sweep"
    raise AlignlabError(
        f"Cannot render a report: '{root}' is not a run, recipe or sweep directory "
        "(no config.yaml, metrics.json, eval.json, recipe.yaml or multirun.yaml found). "
        "Pass the output directory of an alignlab run."
    )


# --------------------------------------------------------------------------- plotting


def _new_figure(width: float, height: float) -> Any:
    # Figure + Agg canvas directly: no pyplot global state, no GUI backend, thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _set_margins(fig: Any, left: float = 0.8, bottom: float = 0.6, top: float = 0.4) -> None:
    """Fixed margins in inches: tight_layout measures every tick label and costs ~0.5 s per
    figure, which adds up over the reports of a whole sweep."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=left / width,
        right=1 - 0.25 / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=0.35,
        hspace=0.6,
    )


def _curve_keys(run: Mapping[str, Any]) -> tuple[str, ...]:
    """The run's method's curve keys; every method's for a run of no known method."""
    spec = methods.find(_method_name(run))
    return tuple(spec.curve_keys) if spec is not None else methods.curve_keys()


def _curve_series(log_history: Iterable[Any],
                  keys: tuple[str, ...]) -> dict[str, tuple[list[float], list[float]]]:
    """Per key, (x, y) points from a HF ``log_history`` (x = step, else entry index)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for index, entry in enumerate(log_history):
        if not isinstance(entry, Mapping):
            continue
        x = entry.get("step")
        x = x if _finite(x) else index
        for key in keys:
            value = entry.get(key)
            if _finite(value):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(float(x))
                ys.append(float(value))
    return {key: series[key] for key in keys if key in series}


def _plot_curves(series: Mapping[str, tuple[list[float], list[float]]], out: Path) -> None:
    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    fig = _new_figure(4.2 * cols, 3.0 * rows)
    for i, (key, (xs, ys)) in enumerate(series.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    _set_margins(fig, left=0.7, bottom=0.5)
    fig.savefig(out, format="png")


def _plot_bars(
    labels: list[str],
    values: list[float],
    title: str,
    ylabel: str,
    out: Path,
    intervals: list[tuple[float, float] | None] | None = None,
) -> None:
    """Bar chart; ``intervals`` (per bar: (low, high) or None) are drawn as error bars."""
    fig = _new_figure(max(4.0, 1.2 * len(labels) + 1.5), 3.5)
    ax = fig.add_subplot(1, 1, 1)
    bars = ax.bar(labels, values, color="#4c72b0")
    shown = [(i, iv) for i, iv in enumerate(intervals or []) if iv is not None]
    if shown:
        ax.errorbar(
            [i for i, _ in shown],
            [values[i] for i, _ in shown],
            yerr=[
                [values[i] - lo for i, (lo, _) in shown],
                [hi - values[i] for i, (_, hi) in shown],
            ],
            fmt="none",
            ecolor="#222222",
            capsize=4,
            linewidth=1,
        )
    # With error bars the value sits inside the bar, where no error bar crosses it.
    ax.bar_label(
        bars,
        labels=[format_number(v) for v in values],
        fontsize=8,
        label_type="center" if shown else "edge",
        color="white" if shown else None,
    )
    ax.margins(y=0.12)  # head-room for the value labels
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    _set_margins(fig)
    fig.savefig(out, format="png")


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both axes (lower KL and higher y), sorted by KL."""
    best: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not best or y > best[-1][1]:
            best.append((x, y))
    return best


def _plot_frontier(points: list[tuple[float, float, str]], ylabel: str, out: Path) -> None:
    fig = _new_figure(6.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="#4c72b0", zorder=3)
    xs = [p[0] for p in points]
    mid = (min(xs) + max(xs)) / 2
    for x, y, label in points:
        # Right-half labels go left of their point so they are not cut off by the figure edge.
        right = x > mid
        ax.annotate(
            label,
            (x, y),
            textcoords="offset points",
            xytext=(-5 if right else 5, 5),
            ha="right" if right else "left",
            fontsize=8,
        )
    ax.margins(x=0.1, y=0.1)
    front = _pareto([(x, y) for x, y, _ in points])
    if len(front) > 1:
        ax.plot(
            [p[0] for p in front],
            [p[1] for p in front],
            "--",
            color="#dd8452",
            label="Pareto frontier",
            zorder=2,
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("KL to reference")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} vs KL")
    ax.grid(alpha=0.3)
    _set_margins(fig)
    fig.savefig(out, format="png")


# --------------------------------------------------------------------------- page output


def _md_cell(value: Any) -> str:
    text = value if isinstance(value, str) else format_number(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "list":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "links":
            lines += [f"- [{text}]({href}.md)" for text, href in block[1]] + [""]
        elif kind == "table":
            headers, rows = block[1], block[2]
            lines.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
            lines.append("|" + "|".join("---" for _ in headers) + "|")
            for row in rows:
                lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
            lines.append("")
        elif kind == "img":
            lines += [f"![{block[2]}]({block[1].name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _html_cell(value: Any) -> str:
    text = value if isinstance(value, str) else format_number(value)
    return html.escape(text).replace("\n", "<br>")


def _html_td(value: Any) -> str:
    """A table cell; a short one-word value (a number, a category) never wraps mid-word (the
    browser broke "0.03968" and "borderline" in two in narrow columns)."""
    text = value if isinstance(value, str) else format_number(value)
    short = len(text) <= 24 and not any(ch.isspace() for ch in text)
    return f'<td class="nw">{_html_cell(value)}</td>' if short else f"<td>{_html_cell(value)}</td>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f3f3f3} td{max-width:420px;overflow-wrap:anywhere}
img{max-width:100%} .note{color:#8a6d3b} td.nw{white-space:nowrap;overflow-wrap:normal}
"""


def _to_html(blocks: list[Block], title: str) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for block in blocks:
        kind = block[0]
        if kind == "h":
            parts.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "list":
            items = "".join(f'<li class="note">{html.escape(i)}</li>' for i in block[1])
            parts.append(f"<ul>{items}</ul>")
        elif kind == "links":
            items = "".join(
                f'<li><a href="{html.escape(href)}.html">{html.escape(text)}</a></li>'
                for text, href in block[1]
            )
            parts.append(f"<ul>{items}</ul>")
        elif kind == "table":
            head = "".join(f"<th>{_html_cell(h)}</th>" for h in block[1])
            body = "".join(
                "<tr>" + "".join(_html_td(c) for c in row) + "</tr>" for row in block[2]
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            # Embedded so the HTML file works alone (copied, attached, served anywhere).
            data = base64.b64encode(block[1].read_bytes()).decode("ascii")
            parts.append(
                f'<p><img src="data:image/png;base64,{data}" alt="{html.escape(block[2])}"></p>'
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _write(root: Path, blocks: list[Block], title: str) -> Path:
    md_path = root / "report.md"
    md_path.write_text(_to_markdown(blocks), encoding="utf-8")
    (root / "report.html").write_text(_to_html(blocks, title), encoding="utf-8")
    return md_path


# --------------------------------------------------------------------------- run report


def _model_name(config: Mapping[str, Any]) -> Any:
    name, path = _get(config, "model.name"), _get(config, "model.path")
    if name and path and str(name) != str(path):
        return f"{name} ({path})"
    return name or path


def _method_name(run: Mapping[str, Any]) -> Any:
    return _get(run["config"], "method.name") or run["metrics"].get("method")


def _config_rows(run: Mapping[str, Any]) -> list[list[Any]]:
    config, metrics = run["config"], run["metrics"]
    rows: list[list[Any]] = [
        ["method", _method_name(run)],
        ["stage", metrics.get("stage")],
        ["model", _model_name(config)],
        ["data", _get(config, "data.name")],
        ["seed", config.get("seed")],
    ]
    rows = [r for r in rows if r[1] is not None]
    args = _get(config, "method.args")
    if isinstance(args, Mapping):
        flat = _flatten(args)
        for key in list(flat)[:MAX_ARGS]:
            value = flat[key]
            if isinstance(value, list | dict):
                value = json.dumps(value)
            rows.append([f"method.args.{key}", value])
        if len(flat) > MAX_ARGS:
            rows.append(["…", f"{len(flat) - MAX_ARGS} more method.args in config.yaml"])
    return rows


def _headline(section: Mapping[str, Any], keys: Iterable[str]) -> tuple[str | None, Any]:
    for key in keys:
        if _is_number(section.get(key)):
            return key, section[key]
    return None, None


# Keys that qualify a sibling figure X (``X_n``, ``X_ci_low``...) rather than being figures.
_QUALIFIERS = ("_n_prompts", "_ci_low", "_ci_high", "_n")
# Top-level eval.json numbers that describe how the evaluation ran, not what it measured.
EVAL_SETTINGS = ("n_prompts", "samples_per_prompt", "temperature")


def _qualified(section: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The interval and n of figure ``key`` in ``section``: its ``key_ci_low``... siblings."""
    figure = Interval.sibling(section, key)
    own = figure.to_json() if figure is not None else {}
    return {k: v for k, v in own.items() if k != "mean" and v is not None
            and (k == "ci_low" or k == "ci_high" or f"{key}_{k}" in section)}


def _is_qualifier(section: Mapping[str, Any], key: str) -> bool:
    return any(key.endswith(q) and key[: -len(q)] in section for q in _QUALIFIERS)


def _eval_rows(evals: Mapping[str, Any]) -> list[list[Any]]:
    """Rows: metric, value, 95 % CI, n, notes. Unknown sections are shown generically.

    A figure's n is its own (``X_n``, or per category ``per_category_n``) where eval.json has
    one, else its section's: the samples every figure of the section is computed from.
    """
    rows: list[list[Any]] = []
    evals = _with_baseline(evals)
    known = {key for key, _, _ in EVAL_SECTIONS}
    sections = [s for s in EVAL_SECTIONS if s[0] in evals]
    sections += [
        (key, key, ("value", "mean", "score"))
        for key in evals
        if key not in known and key not in EVAL_SETTINGS
    ]
    for key, label, headline_keys in sections:
        section = evals[key]
        if _is_number(section):
            rows.append([label, section, "", "", ""])
            continue
        if not isinstance(section, Mapping):
            continue
        main_key, main = _headline(section, headline_keys)
        notes = []
        if key == "win_rate" and all(_is_number(section.get(k)) for k in _WTL_KEYS):
            notes.append(f"W/T/L {section['wins']}/{section['ties']}/{section['losses']}")
        for sub, value in section.items():
            if isinstance(value, str):
                notes.append(f"vs {value}" if sub == "reference" else f"{sub}: {value}")
        n = _n_cell(section)
        rows.append([label, main, _ci(section), n, "; ".join(notes)])
        skip = _CI_KEYS | ({main_key} if main_key else set())
        if key == "win_rate":
            skip |= _WTL_KEYS
        for sub, value in section.items():
            if sub in skip or _is_qualifier(section, sub):
                continue
            if sub == "mean" and value == main:  # judge.score and judge.mean are one figure
                continue
            if _is_number(value):
                own = _qualified(section, sub)
                rows.append([f"{label}: {sub}", value, _ci(own), _n_cell(own) if own else n, ""])
            elif isinstance(value, Mapping):
                # e.g. judge.per_category: one row per category, n from per_category_n; the
                # refusal shares are per category of the same samples, so they share those n.
                counts = section.get(f"{sub}_n", section.get("per_category_n"))
                counts = counts if isinstance(counts, Mapping) else {}
                for cat, cat_value in value.items():
                    if _is_number(cat_value):
                        cat_n = counts.get(cat, "")
                        name = f"{label}: {cat}" if sub == "per_category" else \
                            f"{label}: {sub} {cat}"
                        rows.append([name, cat_value, "", cat_n, sub])
    return rows


def _eval_settings(evals: Mapping[str, Any]) -> str:
    """One line on how the evaluation ran (prompts, samples per prompt, temperature)."""
    parts = [f"{key} {format_number(evals[key])}" for key in EVAL_SETTINGS
             if _is_number(evals.get(key))]
    text = ("Settings: " + ", ".join(parts) + ".") if parts else ""
    if any(isinstance(v, Mapping) and _is_number(v.get("n_prompts")) for v in evals.values()):
        # Said once here rather than in every row: why n shows prompts beside samples.
        text += (" 95 % intervals are clustered by prompt: the samples of one prompt are "
                 "correlated, so they count for less than independent ones.")
    return text.strip()


def _n_cell(section: Mapping[str, Any]) -> Any:
    """The n column: samples, and the prompts they came from when the interval is clustered."""
    n, prompts = section.get("n"), section.get("n_prompts")
    if not _is_number(n):
        return ""
    return f"{n} ({prompts} prompts)" if _is_number(prompts) else n


def _with_baseline(evals: Mapping[str, Any]) -> dict[str, Any]:
    """eval.json with its ``baseline`` (the start or the reference, scored on the same prompts)
    as sections of their own, each noting which model it is."""
    out = _drawn_out(dict(evals))
    base = out.pop("baseline", None)
    if isinstance(base, Mapping):
        who = "the starting model" if base.get("role") == "start" else "the reference"
        for key in ("judge", "reward"):
            if isinstance(base.get(key), Mapping):
                out[f"baseline_{key}"] = {**base[key], "model": who}
    return out


def _drawn_out(out: dict[str, Any]) -> dict[str, Any]:
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
        main = {k: v for k, v in pairs.items() if _is_number(v) or isinstance(v, str)}
        calibration = pairs.get("calibration") or {}
        if _is_number(calibration.get("ece")):
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
        for cat, c in (safety.get("per_category") or {}).items():
            out[f"Refused: {cat} ({c.get('safety')})"] = {"mean": c["refused"], "n": c["n"]}
    return out


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


def _sample_rows(samples: list[dict[str, Any]],
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
        row += [_clip(sample.get("prompt")), _clip(sample.get("response"))]
        if has_score:
            score = sample.get("score")
            row.append(score if _is_number(score) else "")
        if has_ref:
            row.append(_clip(sample.get("reference_response")))
        if has_ref_score:
            score = sample.get("reference_score")
            row.append(score if _is_number(score) else "")
        rows.append(row)
    return headers, rows


def _before_after_plot(root: Path, run: Mapping[str, Any]) -> list[Block]:
    """A bar plot of the headline metric at the start and after training, with intervals."""
    evals = run["eval"]
    pair = console.before_after({**run["metrics"], **{k: evals[k] for k in ("judge", "baseline")
                                                       if isinstance(evals.get(k), Mapping)}})
    if pair is None:
        return []
    what, before, after = pair
    key = ("score", "mean") if what == "toy judge" else ("mean",)
    values = [_headline(before, key)[1], _headline(after, key)[1]]
    if not all(_finite(v) for v in values):
        return []
    png = root / "before_after.png"
    _plot_bars(["start", "trained"], [float(v) for v in values], f"{what}: start vs trained",
               what, png, intervals=[_interval(before), _interval(after)])
    return [("img", png, f"{what} at the start and after training"),
            ("p", f"Error bars: 95 % intervals of the {what}, clustered by prompt where the "
                  "evaluation gives prompts (n in the table below).")]


def _render_run(root: Path) -> Path:
    run = load_run(root)
    method = _method_name(run)
    title = f"alignlab run: {root.name}" + (f" ({method})" if method else "")
    blocks: list[Block] = [("h", 1, title)]

    blocks.append(("h", 2, "Configuration"))
    config_rows = _config_rows(run)
    if config_rows:
        blocks.append(("table", ["key", "value"], config_rows))
    else:
        blocks.append(("p", "No config.yaml found."))

    train = run["metrics"].get("train")
    if isinstance(train, Mapping) and train:
        rows = [[k, v] for k, v in train.items() if _is_number(v) or isinstance(v, str)]
        if rows:
            blocks += [("h", 2, "Training summary"), ("table", ["metric", "value"], rows)]

    blocks.append(("h", 2, "Training curves"))
    history = run["metrics"].get("log_history")
    series = _curve_series(history, _curve_keys(run)) if isinstance(history, list) else {}
    if series:
        png = root / "training_curves.png"
        _plot_curves(series, png)
        blocks.append(("img", png, "training curves"))
    else:
        blocks.append(
            ("p", "No training curves: no known metric in metrics.json log_history (or no file).")
        )

    blocks.append(("h", 2, "Evaluation"))
    blocks += _before_after_plot(root, run)
    eval_rows = _eval_rows(run["eval"])
    if eval_rows:
        blocks.append(("table", ["metric", "value", "95% CI", "n", "notes"], eval_rows))
        settings = _eval_settings(run["eval"])
        if settings:
            blocks.append(("p", settings))
    else:
        blocks.append(("p", "No evaluation results (eval.json missing or empty)."))

    if run["samples"]:
        role = _get(run["eval"], "baseline.role")
        other = "start" if role == "start" else "reference"
        headers, rows = _sample_rows(run["samples"], other)
        shown = len(rows)
        blocks.append(("h", 2, f"Samples ({shown} of {len(run['samples'])})"))
        blocks.append(("p", f"Up to {SAMPLES_PER_CATEGORY} prompts per category, where the "
                            f"policy and the {other} model answer differently first (one the "
                            "policy does better, one it fails), side by side; every sample is "
                            "in samples.jsonl."))
        blocks.append(("table", headers, rows))

    if run["notes"]:
        blocks += [("h", 2, "Notes"), ("list", run["notes"])]
    return _write(root, blocks, title)


# --------------------------------------------------------------------------- recipe / sweep


def _summary(evals: Mapping[str, Any]) -> dict[str, Any]:
    """Headline numbers of an eval.json: judge, win rate, KL, reward mean (None if absent)."""
    out: dict[str, Any] = {}
    for key, _, headline_keys in EVAL_SECTIONS[:4]:
        section = evals.get(key)
        if _is_number(section):
            out[key] = section
        elif isinstance(section, Mapping):
            out[key] = _headline(section, headline_keys)[1]
        else:
            out[key] = None
    return out


def stage_headline(run: Mapping[str, Any]) -> str:
    """What a stage is judged by, from its own files: its method's headline figures
    (:attr:`alignlab.methods.spec.Method.headline`: SFT's final loss, the reward model's pair
    accuracy, a preference method's reward accuracy and margin, PPO's score and KL, ...), with
    the toy judge at the start -> after training when known."""
    metrics, evals = run["metrics"], run["eval"]
    spec = methods.find(_method_name(run))
    figures = (spec.headline if spec is not None else specs.final_loss)(metrics, evals)
    parts = [_figure_text(label, value) for label, value in figures]
    pair = console.before_after({**metrics, **{k: evals[k] for k in ("judge", "baseline")
                                                if isinstance(evals.get(k), Mapping)}})
    if pair is not None and (spec is None or spec.shows_change):
        what, before, after = pair
        key = ("score", "mean")
        b, a = _headline(before, key)[1], _headline(after, key)[1]
        if _finite(b) and _finite(a):
            parts.append(f"{what} {format_number(b)} → {format_number(a)}")
    return "; ".join(parts) or "-"


def _figure_text(label: str, value: Any) -> str:
    """``label value``: a number, a (before, after) pair, or a section with its interval."""
    if isinstance(value, tuple):
        return f"{label} {format_number(value[0])} → {format_number(value[1])}"
    if isinstance(value, Mapping):
        return f"{label} {format_number(value.get('score'))} {_ci(value)}".strip()
    return f"{label} {format_number(value)}"


def _render_child(path: Path, notes: list[str]) -> bool:
    """Render a stage/member report; a broken child becomes a note, not a failed parent."""
    try:
        render_report(path)
    except AlignlabError as exc:
        notes.append(f"{path.name}: {exc}")
        return False
    return True


def _is_stage_dir(path: Path) -> bool:
    """A recipe stage's run directory: a visible folder with a run's own files (``.hydra/``,
    ``checkpoints/`` and the like are not stages)."""
    return path.is_dir() and not path.name.startswith((".", "_")) and any(
        (path / name).is_file() for name in RUN_FILES if not name.startswith("."))


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
        found = [p.name for p in root.iterdir() if _is_stage_dir(p)]
        # In the recipe's order where its config.yaml still says it (recipe.stages).
        config = _read_yaml(root / "config.yaml", notes) if (root / "config.yaml").is_file() \
            else None
        order = _get(config, "recipe.stages")
        order = [str(n) for n in order] if isinstance(order, list) else []
        names = sorted(found, key=lambda n: (order.index(n) if n in order else len(order), n))
    return names


def _render_recipe(root: Path) -> Path:
    notes: list[str] = []
    title = f"alignlab recipe: {root.name}"
    blocks: list[Block] = [("h", 1, title)]
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
        s = _summary(run["eval"])
        status = "ok" if rendered else "no results"
        rows.append(
            [name, _method_name(run) or "", s["judge"], s["win_rate"], s["kl"], s["reward"],
             stage_headline(run), status]
        )
        if _finite(s["judge"]):
            interval = _interval(run["eval"].get("judge"))
            bars.append((name, float(s["judge"]), interval))
            if interval is not None:
                clustered_judge &= _is_number(_get(run["eval"], "judge.n_prompts"))

    blocks.append(("h", 2, "Stages"))
    headers = ["stage", "method", "judge score", "win rate", "KL", "reward mean", "headline",
               "status"]
    blocks.append(("table", headers, rows))
    if bars:
        png = root / "judge_by_stage.png"
        _plot_bars(
            [b[0] for b in bars],
            [b[1] for b in bars],
            "Judge score per stage",
            "judge score",
            png,
            intervals=[b[2] for b in bars],
        )
        blocks.append(("img", png, "judge score per stage"))
        if any(b[2] for b in bars):
            clustered = ", clustered by prompt" if clustered_judge else ""
            blocks.append(("p", f"Error bars: the judge score's 95 % interval{clustered}."))
    else:
        blocks.append(("p", "No stage has a judge score, so there is no judge-score plot."))
    if links:
        blocks += [("h", 2, "Stage reports"), ("links", links)]
    if notes:
        blocks += [("h", 2, "Notes"), ("list", notes)]
    return _write(root, blocks, title)


def _parse_overrides(overrides: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            continue
        parsed[key.lstrip("+~")] = value
    return parsed


def _member_params(runs: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns that vary across members: Hydra overrides if every member has them, else
    the config leaves that differ (minus per-run bookkeeping such as output_dir)."""
    if runs and all(r["overrides"] is not None for r in runs):
        params = [_parse_overrides(r["overrides"]) for r in runs]
    else:
        params = []
        for r in runs:
            flat = _flatten(r["config"])
            params.append(
                {
                    k: v
                    for k, v in flat.items()
                    if not k.startswith("hydra.")
                    and k.rsplit(".", 1)[-1] not in _NOISY_CONFIG_LEAVES
                }
            )
    keys: list[str] = []
    for p in params:
        keys += [k for k in p if k not in keys]
    varying = [k for k in keys if len({json.dumps(p.get(k), default=str) for p in params}) > 1]
    # A one-member sweep (or identical members) varies nothing; show its overrides instead.
    if not varying and runs and all(r["overrides"] for r in runs):
        varying = keys
    return varying, params


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else format_number(value)
    return _clip(text, 24)


def _render_sweep(root: Path) -> Path:
    notes: list[str] = []
    title = f"alignlab sweep: {root.name}"
    blocks: list[Block] = [("h", 1, title)]
    members = _numbered_members(root)
    if not members:
        blocks.append(("p", "This sweep has no numbered member directories yet."))
        return _write(root, blocks, title)

    runs, rendered = [], []
    for member in members:
        rendered.append(_render_child(member, notes))
        runs.append(load_run(member))
    varying, params = _member_params(runs)
    summaries = [_summary(r["eval"]) for r in runs]

    headers = ["member", *varying, "judge score", "win rate", "KL", "reward mean"]
    rows = []
    for run, p, s in zip(runs, params, summaries, strict=True):
        rows.append(
            [
                run["path"].name,
                *[_short(p.get(k, "")) for k in varying],
                s["judge"],
                s["win_rate"],
                s["kl"],
                s["reward"],
            ]
        )
    blocks += [("h", 2, "Members"), ("table", headers, rows)]

    # y axis: reward mean when any member has it next to a KL, else the judge score.
    y_key = (
        "reward" if any(_finite(s["kl"]) and _finite(s["reward"]) for s in summaries) else ("judge")
    )
    y_label = "reward mean" if y_key == "reward" else "judge score"
    points = []
    for run, p, s in zip(runs, params, summaries, strict=True):
        if _finite(s["kl"]) and _finite(s[y_key]):
            label = run["path"].name
            if varying:
                label += ": " + ", ".join(
                    f"{k.rsplit('.', 1)[-1]}={_short(p.get(k, ''))}" for k in varying[:2]
                )
            points.append((float(s["kl"]), float(s[y_key]), label))
        else:
            notes.append(
                f"Member {run['path'].name} is not on the frontier plot: "
                f"its eval.json lacks KL or {y_label}."
            )
    blocks.append(("h", 2, f"{y_label.capitalize()} vs KL"))
    if points:
        png = root / "frontier.png"
        _plot_frontier(points, y_label, png)
        blocks.append(("img", png, f"{y_label} vs KL frontier"))
    else:
        blocks.append(("p", "No member has both a KL and a reward/judge score in eval.json."))
    links = [
        (r["path"].name, f"{r['path'].name}/report")
        for r, ok in zip(runs, rendered, strict=True)
        if ok
    ]
    if links:
        blocks += [("h", 2, "Member reports"), ("links", links)]
    if notes:
        blocks += [("h", 2, "Notes"), ("list", notes)]
    return _write(root, blocks, title)


# --------------------------------------------------------------------------- entry point


def render_report(path: str | Path) -> Path:
    """Render ``report.md`` + ``report.html`` (and PNG plots) into a results directory.

    Detects whether ``path`` is a run, recipe or sweep directory (see ``detect_kind``);
    recipes and sweeps also render each stage's / member's own report. Missing files give
    a partial report. Returns the path of ``report.md``. Raises AlignlabError when
    ``path`` is not a results directory.
    """
    root = Path(path)
    kind = detect_kind(root)
    renderer = {"run": _render_run, "recipe": _render_recipe, "sweep": _render_sweep}[kind]
    return renderer(root)
