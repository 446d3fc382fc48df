"""Run directories: resolved config, metrics, completion markers and checkpoints.

Only the main process writes here; every file is written to a temporary name and renamed, so an
interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

MARKER = "DONE"
_SECRET = re.compile(r"(token|api_key|apikey|secret|password)", re.IGNORECASE)


def is_main_process() -> bool:
    """True on rank 0 (or when not launched distributed)."""
    return int(os.environ.get("RANK", "0")) == 0


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def redact(obj: Any) -> Any:
    """Drop secrets (tokens, API keys) from a config before it is saved or logged."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if _SECRET.search(str(k)) and v else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_config(run_dir: Path, cfg: Any) -> None:
    """Save the resolved config (secrets redacted) as ``config.yaml``."""
    from omegaconf import OmegaConf

    container = redact(OmegaConf.to_container(cfg, resolve=True))
    atomic_write(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(container)))


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete ``checkpoints/checkpoint-N`` folder, if any."""
    ckpts = [p for p in (run_dir / "checkpoints").glob("checkpoint-*")
             if p.is_dir() and p.name.split("-")[-1].isdigit()
             and (p / "trainer_state.json").exists()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1]), default=None)


def mark_done(run_dir: Path, info: dict[str, Any]) -> None:
    """Leave the completion marker next to the stage's artifact."""
    write_json(run_dir / MARKER, info)


def is_done(run_dir: Path) -> bool:
    return (run_dir / MARKER).exists()
