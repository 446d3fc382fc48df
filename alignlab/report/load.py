"""Reading results directories: a run (:class:`Run`), and what kind of directory a path is.

Missing or unreadable files become empty values and a note on the page, never a crash: a
report is rendered from whatever a run left on disk, on any machine, without torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alignlab.errors import AlignlabError

RUN_FILES = ("config.yaml", "metrics.json", "eval.json", "samples.jsonl", ".hydra/config.yaml")


@dataclass
class Run:
    """A run directory's files, read once: ``config`` (config.yaml), ``metrics``
    (metrics.json), ``eval`` (eval.json), ``samples`` (samples.jsonl rows), ``overrides``
    (.hydra/overrides.yaml, None where there is none) and ``notes`` (problems met reading
    them, shown on the page)."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    overrides: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def method(self) -> Any:
        """The method's name: config.yaml's ``method.name``, else metrics.json's ``method``."""
        return get(self.config, "method.name") or self.metrics.get("method")


def get(tree: Any, dotted: str, default: Any = None) -> Any:
    """``tree['a']['b']`` for ``'a.b'``; ``default`` when any level is missing."""
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b": leaf}``."""
    if not isinstance(tree, Mapping):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def read_yaml(path: Path, notes: list[str]) -> Any:
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


def _read_samples(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = []
    bad = 0
    for line in path.read_text(encoding="utf-8").splitlines():
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
    return samples


def load_run(path: str | Path) -> Run:
    """Read a run directory; missing or unreadable files become empty values and notes."""
    root = Path(path)
    notes: list[str] = []
    cfg_path = root / "config.yaml"
    if not cfg_path.is_file():
        cfg_path = root / ".hydra" / "config.yaml"
    config = read_yaml(cfg_path, notes) if cfg_path.is_file() else None
    metrics = _read_json(root / "metrics.json", notes) if (root / "metrics.json").is_file() \
        else None
    evals = _read_json(root / "eval.json", notes) if (root / "eval.json").is_file() else None
    samples = _read_samples(root / "samples.jsonl", notes) \
        if (root / "samples.jsonl").is_file() else []
    overrides_path = root / ".hydra" / "overrides.yaml"
    overrides = read_yaml(overrides_path, notes) if overrides_path.is_file() else None
    for name, value, kind in (
        ("config.yaml", config, dict),
        ("metrics.json", metrics, dict),
        ("eval.json", evals, dict),
        (".hydra/overrides.yaml", overrides, list),
    ):
        if value is not None and not isinstance(value, kind):
            notes.append(f"Ignored {name}: expected a {kind.__name__}")
    return Run(
        path=root,
        config=config if isinstance(config, dict) else {},
        metrics=metrics if isinstance(metrics, dict) else {},
        eval=evals if isinstance(evals, dict) else {},
        samples=samples,
        overrides=[str(o) for o in overrides] if isinstance(overrides, list) else None,
        notes=notes,
    )


def has_run_files(path: Path) -> bool:
    return any((path / name).is_file() for name in RUN_FILES)


def numbered_members(path: Path) -> list[Path]:
    """A sweep's member directories ``0/``, ``1/``, ... in order."""
    members = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(members, key=lambda p: int(p.name))


def is_stage_dir(path: Path) -> bool:
    """A recipe stage's run directory: a visible folder with a run's own files (``.hydra/``,
    ``checkpoints/`` and the like are not stages)."""
    return path.is_dir() and not path.name.startswith((".", "_")) and any(
        (path / name).is_file() for name in RUN_FILES if not name.startswith("."))


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
    if has_run_files(root):
        return "run"
    # A multirun whose multirun.yaml was lost still has numbered members with results.
    if any(has_run_files(m) for m in numbered_members(root)):
        return "sweep"
    raise AlignlabError(
        f"Cannot render a report: '{root}' is not a run, recipe or sweep directory "
        "(no config.yaml, metrics.json, eval.json, recipe.yaml or multirun.yaml found). "
        "Pass the output directory of an alignlab run."
    )
