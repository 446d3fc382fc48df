"""Render Markdown + HTML reports from run, recipe and sweep directories (files only).

Reports are built from what training/eval wrote to disk, never from live objects, so a
report can be (re)rendered at any time, on any machine, without torch or a GPU.

Layout understood (see :func:`detect_kind`):

- run: ``config.yaml`` (or ``.hydra/config.yaml``), ``metrics.json``, optional ``eval.json``
  and ``samples.jsonl``;
- recipe: ``recipe.yaml`` (``stages: [...]``) plus one run directory per stage;
- sweep: ``multirun.yaml`` plus numbered member run directories ``0/``, ``1/``, ...

The package: :mod:`~alignlab.report.load` reads the files, :mod:`~alignlab.report.figures`
says what a run measured, :mod:`~alignlab.report.plots` draws, :mod:`~alignlab.report.pages`
lays each page out as typed blocks (:mod:`~alignlab.report.blocks`), and one pair of Jinja2
templates writes every page as ``report.md`` and a self-contained ``report.html``.
"""

from __future__ import annotations

from pathlib import Path

from alignlab.report.blocks import format_number
from alignlab.report.figures import stage_headline
from alignlab.report.load import Run, detect_kind, load_run
from alignlab.report.pages import render
from alignlab.report.samples import pick_samples

__all__ = ["Run", "detect_kind", "format_number", "load_run", "pick_samples", "render_report",
           "stage_headline"]


def render_report(path: str | Path) -> Path:
    """Render ``report.md`` + ``report.html`` (and PNG plots) into a results directory.

    Detects whether ``path`` is a run, recipe or sweep directory (see :func:`detect_kind`);
    recipes and sweeps also render each stage's / member's own report. Missing files give
    a partial report. Returns the path of ``report.md``. Raises AlignlabError when
    ``path`` is not a results directory.
    """
    return render(path)
