"""Datasets for each stage, in TRL's conversational formats.

``kind`` says what a method needs: ``sft`` (messages), ``pairs`` (prompt/chosen/rejected),
``unpaired`` (prompt/completion/label, for KTO) or ``prompts`` (prompt only, for RL and CAI).
Each ``data.format`` has a :class:`Source` (:mod:`alignlab.data.sources`): the toy world
registers its own on import; hub datasets and local files use the presets.
"""

from __future__ import annotations

from typing import Any

from alignlab.data import toy  # noqa: F401  (registers the toy world's source)
from alignlab.data.sources import RuleScorer, RuleScores, Source, formats, register_source, source
from alignlab.errors import AlignlabError

__all__ = ["COLUMNS", "RuleScorer", "RuleScores", "Source", "check", "formats", "load",
           "register_source", "source"]

COLUMNS = {"sft": ("messages",), "pairs": ("prompt", "chosen", "rejected"),
           "unpaired": ("prompt", "completion", "label"), "prompts": ("prompt",)}


def load(data_cfg: Any, kind: str, split: str = "train", *, keep_extra: bool = False) -> Any:
    """The ``split`` ("train"/"test") of the configured data, converted for ``kind``.

    Extra columns (such as the toy world's ``category``) are dropped unless ``keep_extra``.
    Raises AlignlabError for a missing column or an empty dataset.
    """
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(data_cfg, resolve=True) if OmegaConf.is_config(data_cfg) \
        else dict(data_cfg)
    ds = source(cfg).rows(cfg, kind, split)
    check(ds, kind, cfg.get("name", "data"))
    if cfg.get("max_samples") and len(ds) > cfg["max_samples"]:
        ds = ds.shuffle(seed=int(cfg["seed"])).select(range(int(cfg["max_samples"])))
    if not keep_extra:
        ds = ds.remove_columns([c for c in ds.column_names if c not in COLUMNS[kind]])
    return ds


def check(ds: Any, kind: str, name: str) -> None:
    """The dataset has the columns ``kind`` needs and at least one row."""
    missing = [c for c in COLUMNS[kind] if c not in ds.column_names]
    if missing:
        raise AlignlabError(
            f"Dataset '{name}' lacks column(s) {missing} that this method needs (found "
            f"{ds.column_names}). Provide {list(COLUMNS[kind])}, or pick the data preset that "
            "maps your columns (data.format=hh-rlhf|ultrafeedback|cai|trl).")
    if len(ds) == 0:
        raise AlignlabError(f"Dataset '{name}' is empty. Point data.path at a file with rows, "
                            "or check data.train_split / data.test_split.")
