"""The model card (``README.md`` beside the weights): what made the model and what it measured.

Rendered from ``assets/card/model_card.md.jinja`` (Jinja2, as TRL renders its cards) over a run
directory's own files: ``config.yaml`` (method, data, start, seed), ``metrics.json`` (training),
``eval.json`` and ``samples.jsonl`` (the evaluation table: start vs trained per category, with
95 % intervals clustered by prompt and n) and ``.hydra/overrides.yaml`` (the command that
reproduces it; a recipe stage's is its recipe's). Written at the end of every stage that saves a
model, and again by ``python -m alignlab export`` into the exported folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignlab import runs, stats
from alignlab.results import Interval

TEMPLATE = Path(__file__).parent / "assets" / "card" / "model_card.md.jinja"
# Trainer metrics worth a row, with their names and units (the card's and the report's).
TRAINING = {"train_loss": ("mean training loss over the run", "{:.4g}"),
            "epoch": ("epochs", "{:.3g}"),
            "train_runtime": ("training time", "{:.1f} s"),
            "train_samples_per_second": ("throughput", "{:.1f} samples/s"),
            "train_steps_per_second": ("optimizer steps per second", "{:.2f} steps/s"),
            "total_flos": ("floating-point operations (trainer's estimate)", "{:.3g}")}
_CARD_TRAINING = ("train_loss", "epoch", "train_runtime", "train_samples_per_second")
_RUN = {"wall_seconds": ("wall time (stage)", "{:.1f} s"),
        "peak_rss_mib": ("peak memory (CPU)", "{:.0f} MiB"),
        "peak_gpu_mib": ("peak memory (GPU)", "{:.0f} MiB"), "world_size": ("processes", "{}")}


def _read(path: Path) -> Any:
    try:
        return runs.read_json(path)
    except (OSError, ValueError):
        return None


def _samples(run_dir: Path) -> list[dict[str, Any]]:
    try:
        lines = (run_dir / "samples.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError):
        return []


def fmt(ci: Interval, signed: bool = False) -> str:
    """``0.60 [0.49, 0.69]`` (``+0.60 [...]`` when signed)."""
    return ci.text("+.2f" if signed else ".2f")


@dataclass(frozen=True)
class Comparison:
    """One row of the start-vs-trained table: a group of samples (``overall`` or a category)
    scored for the trained model and, on the same prompts, for the start; the paired
    difference; intervals clustered by prompt."""

    name: str
    n: int
    trained: Interval
    start: Interval | None
    diff: Interval | None


def comparisons(samples: list[dict[str, Any]]) -> list[Comparison]:
    """Overall, then per category (in the samples' order): start, trained and their paired
    difference, from samples.jsonl's rows (``score``, ``reference_score``, ``prompt``)."""
    samples = [r for r in samples if r.get("score") is not None]  # unscored: no judge, no RM
    if not samples:
        return []
    groups: dict[str, list[dict[str, Any]]] = {"overall": samples}
    for row in samples:
        if row.get("category"):
            groups.setdefault(str(row["category"]), []).append(row)
    out = []
    for name, rows in groups.items():
        prompts = [r["prompt"] for r in rows]
        trained = stats.interval([float(r["score"]) for r in rows], groups=prompts)
        paired = all(r.get("reference_score") is not None for r in rows)
        start = stats.interval([float(r["reference_score"]) for r in rows], groups=prompts) \
            if paired else None
        diff = stats.interval([float(r["score"]) - float(r["reference_score"]) for r in rows],
                              groups=prompts) if paired else None
        out.append(Comparison(name, len(rows), trained, start, diff))
    return out


def eval_rows(samples: list[dict[str, Any]]) -> list[dict[str, str]]:
    """:func:`comparisons` as the card's table rows (text)."""
    return [{"name": c.name, "n": f"{c.n} ({c.trained.n_prompts or '?'} prompts)",
             "trained": fmt(c.trained), "start": fmt(c.start) if c.start else "—",
             "diff": fmt(c.diff, signed=True) if c.diff else "—"} for c in comparisons(samples)]


def _extra(evaluation: dict[str, Any]) -> list[str]:
    lines = []
    win = evaluation.get("win_rate")
    if win:
        figure = Interval.read(win, ("win_rate",))
        lines.append(f"win rate vs the {win.get('versus', 'start')}: "
                     f"{figure.text() if figure else '?'} (ties count half; "
                     f"{win.get('wins')} wins, {win.get('ties')} ties, {win.get('losses')} "
                     "losses)")
    kl = evaluation.get("kl")
    if kl and kl.get("kl") is not None:
        lines.append(f"KL(trained ‖ reference): {kl['kl']:.3f} nats per response")
    reward = evaluation.get("reward")
    if reward and reward.get("accuracy") is not None:
        lines.append(f"reward model pair accuracy: {reward['accuracy']:.2f}")
    length = evaluation.get("length")
    if length and length.get("mean") is not None:
        lines.append(f"mean response length: {length['mean']:.1f} tokens")
    return lines


def training_rows(metrics: dict[str, Any], keys: tuple[str, ...] = tuple(TRAINING)
                  ) -> list[tuple[str, str]]:
    """(name, value with its unit) of a run's training and resource figures."""
    train = metrics.get("train") or {}
    rows = [(TRAINING[key][0], TRAINING[key][1].format(train[key])) for key in keys
            if isinstance(train.get(key), (int, float))]
    rows += [(name, form.format(metrics[key])) for key, (name, form) in _RUN.items()
             if isinstance(metrics.get(key), (int, float))]
    return rows


def command(run_dir: Path) -> str:
    """``python -m alignlab <overrides>`` that made this run (its recipe's, for a stage)."""
    import yaml

    for where in (run_dir, run_dir.parent):
        path = where / ".hydra" / "overrides.yaml"
        if path.is_file():
            try:
                overrides = yaml.safe_load(path.read_text()) or []
            except yaml.YAMLError:
                break
            shown = [str(o).removeprefix("++") for o in overrides]
            return " ".join(["python -m alignlab", *shown])
    return "python -m alignlab  # the overrides of this run were not recorded"


def _hub_id(name: str) -> bool:
    """``org/name`` that is no folder here (a relative ``runs/sft/model`` is a path)."""
    return name.count("/") == 1 and not runs.looks_local(name) \
        and not Path(name).expanduser().exists()


def _recipe_name(run_dir: Path) -> str | None:
    """The recipe a stage belongs to (``<recipe dir>/recipe.yaml``), or None."""
    import yaml

    try:
        spec = yaml.safe_load((run_dir.parent / "recipe.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return spec.get("name") if isinstance(spec, dict) and run_dir.name in (
        spec.get("stages") or []) else None


def render(run_dir: Path, *, adapter: bool, export: list[str] | None = None) -> str:
    """The card's Markdown for the run in ``run_dir``."""
    import jinja2
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / "config.yaml")
    metrics = _read(run_dir / "metrics.json") or {}
    evaluation = _read(run_dir / "eval.json") or {}
    samples = _samples(run_dir)
    scored = "judge" in evaluation or "rule" in evaluation
    start = str(cfg.model.path)
    hub_base = start if _hub_id(start) else None
    recipe = _recipe_name(run_dir)
    context = {
        "title": f"{cfg.model.name} — {cfg.method.name}", "method": cfg.method.name,
        "data": cfg.data.name, "start": start, "seed": cfg.seed, "adapter": adapter,
        "base_model": hub_base, "library": "peft" if adapter else "transformers",
        "datasets": [str(cfg.data.path)] if _hub_id(str(cfg.data.get("path") or "")) else [],
        "stage": run_dir.name if recipe else None,
        "recipe": recipe,
        "rows": eval_rows(samples) if samples else [], "extra": _extra(evaluation),
        "headline": None, "n_samples": len(samples), "n_prompts": evaluation.get("n_prompts"),
        "per_prompt": evaluation.get("samples_per_prompt"),
        "temperature": evaluation.get("temperature"),
        "scorer": "the data's rule (toy judge)" if scored else "the reward model",
        "training": training_rows(metrics, _CARD_TRAINING), "command": command(run_dir),
        "export": export or []}
    if context["rows"]:
        overall = context["rows"][0]
        context["headline"] = (f"Score: start {overall['start']} → trained "
                               f"{overall['trained']}, difference {overall['diff']}.")
    env = jinja2.Environment(keep_trailing_newline=True, autoescape=False,
                             undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE.read_text()).render(**context)


def write(run_dir: Path, model_dir: Path, *, adapter: bool,
          export: list[str] | None = None) -> Path:
    """Write ``model_dir/README.md`` for the run in ``run_dir`` (``export``: the exported
    files, one line each); returns its path."""
    out = model_dir / "README.md"
    runs.atomic_write(out, render(run_dir, adapter=adapter, export=export))
    return out
