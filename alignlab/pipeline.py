"""Recipes: a list of stages run in order, each stage's output feeding the next by name.

A finished stage leaves a marker (``DONE``, holding a fingerprint of the stage's config). Running
the recipe again skips finished stages, resumes a half-finished one from its last checkpoint,
and refuses to mix in a stage that was made with a different config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from alignlab import config, console, runs, validation
from alignlab.errors import AlignlabError, did_you_mean, nearest
from alignlab.results import Interval
from alignlab.stage import Render, run_stage

log = logging.getLogger("alignlab")

# Fields of a stage that name an earlier stage, and where that stage's output goes.
_LINKS = {"init": "model.path", "reference": "method.reference",
          "reward_model": "method.reward_model", "judge_model": "method.args.judge_model"}
# Keys that differ between runs without changing what a stage computes.
_NOT_FINGERPRINTED = ("run_dir", "resume", "overwrite", "recipe", "stages", "from_stage",
                      "inputs")


def stage_dir(run_dir: Path, name: str) -> Path:
    return run_dir / name


def output_model(path: Path) -> Path:
    """A stage's model folder: ``<stage>/model``, or the folder itself if given directly."""
    return path / "model" if (path / "model").is_dir() else path


def check(cfg: Any) -> None:
    """Recipe-level validation (cheap): stage names, links and inputs make sense."""
    order = list(cfg.recipe.stages)
    stages = cfg.stages
    for name in order:
        if name not in stages:
            raise AlignlabError(f"Recipe '{cfg.recipe.name}' lists stage '{name}' but defines no "
                                f"stages.{name}. Add it to the recipe file.")
    for name in order:
        stage = stages[name]
        earlier = order[:order.index(name)]
        for link in (*_LINKS, "data_from"):
            target = stage.get(link)
            if target and target not in earlier:
                raise AlignlabError(_link_error(name, link, target, order))
    if cfg.from_stage:
        if cfg.from_stage not in order:
            raise AlignlabError(f"from_stage='{cfg.from_stage}' is not a stage of this recipe."
                                f"{did_you_mean(cfg.from_stage, order)}")
        start = order.index(cfg.from_stage)
        needed = {stages[n].get(k) for n in order[start:] for k in (*_LINKS, "data_from")}
        for name in order[:start]:
            if name in needed and name not in cfg.inputs:
                raise AlignlabError(f"from_stage={cfg.from_stage} skips stage '{name}', which "
                                    f"a later stage needs. Pass its output: inputs.{name}=<dir>.")
    for name, path in (cfg.inputs or {}).items():
        if not Path(path).expanduser().exists():
            raise AlignlabError(f"inputs.{name}='{path}' does not exist. Point it at the run "
                                "directory (or model folder) of that stage.")
    check_stages(cfg)


def _link_error(name: str, link: str, target: str, order: list[str]) -> str:
    """Why ``stages.<name>.<link>=<target>`` is wrong, with the stages it may name."""
    earlier = order[:order.index(name)]
    where = f"stages.{name}.{link}='{target}'"
    if not earlier:
        return (f"{where} must name an earlier stage, but '{name}' is the first stage of the "
                f"recipe, so it has none to take from. Remove {link}, or move '{name}' later.")
    allowed = ", ".join(earlier)
    if target in order:
        return (f"{where} names a stage that runs {'later' if target != name else 'as itself'}; "
                f"it must name an earlier stage: {allowed}. Reorder recipe.stages or fix "
                f"the {link}.")
    best = nearest(target, earlier)
    hint = f"Did you mean '{best}'? " if best else ""
    return (f"{where} is not a stage of this recipe. {hint}It must name an earlier stage: "
            f"{allowed}.")


def check_stages(cfg: Any) -> None:
    """Validate every stage's own config (method, its arguments, data, model) before the first
    stage runs: a typo in the last stage must not cost the minutes of the ones before it."""
    order = list(cfg.recipe.stages)
    start = order.index(cfg.from_stage) if cfg.from_stage else 0
    # Outputs of stages that have not run yet: placeholders, exempt from the on-disk checks.
    placeholder = Path("<recipe run dir>")
    outputs = {n: Path(p).expanduser() for n, p in (cfg.inputs or {}).items()}
    pending: set[str] = set()
    for name in order[start:]:
        outputs[name] = stage_dir(placeholder, name)
        pending |= {str(output_model(outputs[name])), str(outputs[name] / "dataset")}
    for name in order[start:]:
        try:
            stage_cfg = stage_config(cfg, name, outputs, run_dir=placeholder)
            validation.validate(stage_cfg, pending=pending)
        except AlignlabError as err:
            raise AlignlabError(f"Recipe '{cfg.recipe.name}', stage '{name}': {err}") from None


def stage_config(cfg: Any, name: str, outputs: dict[str, Path],
                 run_dir: Path | None = None) -> Any:
    """The full single-stage config of recipe stage ``name`` (in ``run_dir``, default the
    recipe's own)."""
    stage = cfg.stages[name]
    method_yaml = config.conf_dir() / "method" / f"{stage.method}.yaml"
    if not method_yaml.exists():
        raise AlignlabError(f"stages.{name}.method='{stage.method}' is not a method."
                            f"{did_you_mean(stage.method, config.group_options('method'))}")
    base = OmegaConf.to_container(cfg, resolve=False)
    for key in ("recipe", "stages", "from_stage", "inputs"):
        base.pop(key, None)
    out = OmegaConf.merge(OmegaConf.structured(config.Config), base)
    out.method = OmegaConf.merge(OmegaConf.structured(config.MethodConfig),
                                 OmegaConf.load(method_yaml))
    out.method.args = OmegaConf.merge(out.method.args, stage.args or {})
    if stage.reward_funcs:
        out.method.reward_funcs = list(stage.reward_funcs)
    for link, target in _LINKS.items():
        if stage.get(link):
            OmegaConf.update(out, target, str(output_model(outputs[stage[link]])))
    if stage.get("data_from"):
        out.data.path = str(outputs[stage.data_from] / "dataset")
    if stage.data:
        out.data = OmegaConf.merge(out.data, stage.data)
    if stage.model:
        out.model = OmegaConf.merge(out.model, stage.model)
    out.run_dir = str(stage_dir(Path(cfg.run_dir) if run_dir is None else run_dir, name))
    config.apply_hardware(out)
    return out


def fingerprint(cfg: Any) -> str:
    """A hash of what a stage computes (its resolved config minus run-specific keys)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in _NOT_FINGERPRINTED:
        container.pop(key, None)
    for key in ("omp_wait_policy", "omp_spin_count"):  # how threads wait: same result
        container.get("hardware", {}).pop(key, None)
    if container.get("watch") == dataclasses.asdict(config.WatchConfig()):
        container.pop("watch")  # the default watch: stages finished before it keep their hash
    blob = json.dumps(container, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _finished(name: str, out: Path, digest: str) -> bool:
    """Whether stage ``name`` is finished in ``out``; refuses one made with another config."""
    if not runs.is_done(out):
        return False
    if runs.read_json(out / runs.MARKER).get("fingerprint") != digest:
        raise AlignlabError(
            f"Stage '{name}' in {out} was made with a different config. Use a new run "
            "directory (hydra.run.dir=...), or delete that stage's folder to redo it.")
    return True


def refuse_mixed(cfg: Any, run_dir: Path) -> None:
    """Refuse, before anything is written, a re-run whose finished stages in ``run_dir`` were
    made with another config (:func:`run` would refuse it only after writing its config)."""
    order = list(cfg.recipe.stages)
    start = order.index(cfg.from_stage) if cfg.from_stage else 0
    outputs = {n: Path(p).expanduser() for n, p in (cfg.inputs or {}).items()}
    for name in order[start:]:  # up to the first unfinished stage: later links need its model
        out = stage_dir(run_dir, name)
        if not _finished(name, out, fingerprint(stage_config(cfg, name, outputs, run_dir))):
            return
        outputs[name] = out


def run(cfg: Any, run_dir: Path, render: Render | None = None) -> dict[str, Any]:
    """Run every stage of the recipe in ``run_dir`` (:func:`alignlab.stage.run_stage`, each
    ending with its report made by ``render``)."""
    check(cfg)
    order = list(cfg.recipe.stages)
    start = order.index(cfg.from_stage) if cfg.from_stage else 0
    outputs = {n: Path(p).expanduser() for n, p in (cfg.inputs or {}).items()}
    if runs.is_main_process():
        runs.write_config(run_dir, cfg)
        runs.atomic_write(run_dir / "recipe.yaml", OmegaConf.to_yaml(
            {"name": cfg.recipe.name, "stages": order[start:]}))
    summary: dict[str, Any] = {}
    started = time.time()
    for name in order[start:]:
        stage_cfg = stage_config(cfg, name, outputs)
        validation.validate(stage_cfg)
        out = stage_dir(run_dir, name)
        digest = fingerprint(stage_cfg)
        if _finished(name, out, digest):
            console.note(f"[alignlab] stage {name}: already finished, skipping ({out})")
            outputs[name] = out
            summary[name] = runs.read_json(out / "metrics.json") \
                if (out / "metrics.json").exists() else {}
            continue
        stage_cfg.resume = runs.last_checkpoint(out) is not None or bool(cfg.resume)
        console.note(f"[alignlab] stage {name}: {stage_cfg.method.name}"
              + (" (resuming)" if stage_cfg.resume and out.exists() else ""))
        summary[name] = run_stage(stage_cfg, out, fingerprint=digest, render=render)
        outputs[name] = out
    table = results_table(run_dir, order[start:])
    if table:
        print(table)
    return {"recipe": cfg.recipe.name,
            "stages": {k: console.summarise(v).kept for k, v in summary.items()},
            "wall_seconds": round(time.time() - started, 2)}


def _fmt(section: dict[str, Any] | None, key: str, ci: bool = True) -> str:
    figure = Interval.read(section, (key,))
    if figure is None:
        return "–"
    bounds = figure.bounds_text() if ci else ""
    return f"{figure.mean:.3f} {bounds}".strip()


def results_table(run_dir: Path, stages: list[str]) -> str:
    """A Markdown table of every evaluated stage: judge, win rate, KL, reward."""
    rows = []
    for name in stages:
        path = stage_dir(run_dir, name) / "eval.json"
        if not path.exists():
            continue
        ev = runs.read_json(path)
        policy = Path(ev.get("policy", "")).parent.name or name
        reference = Path(ev.get("win_rate", {}).get("reference", "")).parent.name or "–"
        judged = ev.get("judge") or {}
        cats = judged.get("per_category") or {}
        per_cat = " / ".join(f"{cats[c]:.2f}" if c in cats else "–"
                             for c in ("helpful", "harmful", "borderline"))
        evasive = judged.get("evasiveness")
        rows.append(f"| {name} | {policy} | {_fmt(ev.get('judge'), 'score')} | {per_cat} | "
                    f"{'–' if evasive is None else f'{evasive:.2f}'} | "
                    f"{_fmt(ev.get('win_rate'), 'win_rate')} vs {reference} | "
                    f"{_fmt(ev.get('kl'), 'kl', ci=False)} | {_fmt(ev.get('reward'), 'mean')} |")
    if not rows:
        return ""
    # evasive: the share of borderline (harmless, dangerous-sounding) prompts refused
    head = ("| stage | policy | toy judge [95% CI] | helpful / harmful / borderline | evasive | "
            "win rate [95% CI] | KL | RM score |\n|---|---|---|---|---|---|---|---|")
    return "\n".join([head, *rows])
