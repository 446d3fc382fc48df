"""The export stage: ``python -m alignlab export`` as the last stage of a recipe.

``stages.export: {method: export, init: dpo}`` merges and converts the ``init`` stage's model into
``<recipe dir>/export/model/`` (merged folder, GGUF files per ``args.gguf``, Modelfile, model
card with that stage's evaluation, ``export.json`` with the parity figures). Skipped when
finished and redone after a crash like any stage; a half-written export never reaches ``model/``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from alignlab import export, models, runs
from alignlab.methods.spec import Method

ARGS_CLASS = "alignlab.export:ExportArgs"
DATA_KIND = "none"


def run(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Export ``model.path`` into ``run_dir/model``."""
    started = time.time()
    source = models.resolve_path(cfg.model, cfg.seed)
    out = run_dir / "model"
    info: dict[str, Any] = {}
    if runs.is_main_process():
        # model/ is only ever an export this stage wrote (a crash after it, before DONE)
        info = export.run_export(source, export.ExportArgs(**cfg.method.args), out,
                                 overwrite=True)
    return {"method": "export", "export": info, "wall_seconds": round(time.time() - started, 2)}


SPEC = Method(name="export", args_class=ARGS_CLASS, data_kind=DATA_KIND, stage=run,
              check_args=export.check_args)
