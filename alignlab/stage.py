"""One stage: run the configured method into a run directory and leave its results there.

The run directory gets the resolved config, the method's outputs, ``metrics.json`` and the
completion marker (``DONE``, with the fingerprint a recipe checks on its next run), then the
stage's report and one summary line on the console. Used by the CLI for a single method and by
:mod:`alignlab.pipeline` for each stage of a recipe.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignlab import card, console, methods, runs, toy_start

log = logging.getLogger("alignlab")
# Renders the report of a finished run directory; returns report.md (None when it could not).
Render = Callable[[Path], Path | None]


def write_card(run_dir: Path, model: Path) -> None:
    """``model/README.md``; a card that fails to render never fails the finished stage."""
    try:
        card.write(run_dir, model, adapter=(model / "adapter_config.json").is_file())
    except Exception as err:  # a card is documentation, not the result
        log.warning("could not write the model card for %s: %s", run_dir, err)


def run_stage(cfg: Any, run_dir: Path, fingerprint: str | None = None, *,
              render: Render | None = None) -> dict[str, Any]:
    """Run the configured method into ``run_dir`` and leave its metrics and marker there.

    Ends with the stage's report (``render``: the CLI's, :mod:`alignlab.report`) and one summary
    line (its headline metric before -> after). A preference or RL method named with an
    untrained built-in model starts from its toy-SFT checkpoint instead (``alignlab.toy_start``).
    """
    stage = methods.load(cfg.method.name)
    toy_start.resolve_start(cfg)
    if runs.is_main_process():
        runs.write_config(run_dir, cfg)
    metrics = stage.run(cfg, run_dir)
    # The trainer and its models sit in reference cycles (callbacks, accelerate hooks) that
    # plain reference counting never frees: collect them now, so that neither the report nor
    # a recipe's next stage runs next to the weights, gradients and optimizer state.
    gc.collect()
    if runs.is_main_process():
        runs.write_json(run_dir / "metrics.json", metrics)
        model = run_dir / "model"
        if model.is_dir() and not (model / "export.json").exists():
            write_card(run_dir, model)  # what the stage measured (an export writes its own)
        runs.mark_done(run_dir, {"method": cfg.method.name, "fingerprint": fingerprint})
        report = render(run_dir) if render is not None else None
        console.note(console.stage_summary(cfg.method.name, metrics,
                                           report.with_suffix(".html") if report else None))
    return metrics
