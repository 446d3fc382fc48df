"""method=judge on labelled pairs: agreement with the data's own labels, and a test-only dataset
(nothing to train on) is labelled without asking for a train split."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from alignlab import cli
from alignlab.data.items import prompt_items
from alignlab.methods import judge
from tests.conftest import ROOT

REAL = ROOT / "tests" / "fixtures" / "data" / "hh-rlhf-real" / "harmless-base"


def test_a_test_only_dataset_gives_its_test_items(tmp_path: Path) -> None:
    (tmp_path / "harmless-base").mkdir()
    shutil.copy(REAL / "test.jsonl", tmp_path / "harmless-base" / "test.jsonl")
    cfg = cli.compose(["data=hh-rlhf-harmless", f"data.path={tmp_path}", "method=judge"])
    items = prompt_items(cfg.data, "pairs")
    assert len(items) == 16 and {it["split"] for it in items} == {"test"}
    assert all(it["chosen"] and it["rejected"] for it in items)


def test_label_agreement_counts_ties_half_with_an_interval() -> None:
    labels = [{"prob_a": p} for p in (0.9, 0.7, 0.5, 0.2, 0.6, 0.8)]
    out = judge.label_agreement(labels)
    assert out["n"] == 6 and out["agreement"] == pytest.approx(4.5 / 6)
    assert out["soft"] == pytest.approx(sum(x["prob_a"] for x in labels) / 6)
    low, high = out["ci"]
    assert 0.0 < low < out["agreement"] < high < 1.0
