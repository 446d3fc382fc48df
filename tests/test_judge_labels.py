"""method=judge on labelled pairs: agreement with the data's own labels, and a test-only dataset
(nothing to train on) is labelled without asking for a train split."""

from __future__ import annotations

import json
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


JUDGE_ON_REAL = ["model=llama-small", "data=hh-rlhf-harmless", f"data.path={REAL.parent}",
                 "method=judge", "constitution=harmless", "method.args.source=pairs",
                 "method.args.max_prompts=12", "method.args.gate=off", "report_to=none"]


@pytest.mark.slow
def test_real_pairs_longer_than_the_judges_context_are_cut_or_skipped(tmp_path: Path) -> None:
    """llama-small reads 512 tokens; some real HH pairs with the judge's instructions are
    longer. They went into the model past its position limit, silently (exit 0). Now each is
    cut from the left (oldest turns first) until it fits, or skipped; the counts are one line
    and in metrics; too many skipped is one line before any label is asked for."""
    from alignlab import backends, lengths
    from alignlab import constitution as const
    from tests.conftest import alignlab, one_error_line

    refused = alignlab(f"hydra.run.dir={tmp_path / 'refused'}", *JUDGE_ON_REAL,
                       "data.max_dropped=0", check=False)
    line = one_error_line(refused)
    assert "512-token context" in line and "data.max_dropped=" in line, line
    assert not list((tmp_path / "refused").glob("labels/shard-*.jsonl"))
    out = tmp_path / "allowed"
    proc = alignlab(f"hydra.run.dir={out}", *JUDGE_ON_REAL)  # default: up to 25 % skipped
    too_long = json.loads((out / "metrics.json").read_text())["too_long"]
    assert too_long["context"] == 512 and too_long["rows"] == 24, too_long
    assert too_long["skipped"] >= 1, too_long
    assert f"of 24 pairs were longer than the 512-token context: {too_long['cut']} cut" in \
        proc.stdout + proc.stderr
    labels = [json.loads(x) for f in sorted((out / "labels").glob("shard-*.jsonl"))
              for x in f.read_text().splitlines() if x.strip()]
    assert len(labels) == 24 - too_long["skipped"]
    # every query the judge read fits its context, with the longest principle's question
    cfg = cli.compose(JUDGE_ON_REAL)
    book = const.load(cfg.constitution, need_choice=True)
    backend = backends.create(judge.stage_args(cfg), cfg, None)
    question = max((p.choice or p.critic for p in book.principles), key=len)
    for r in labels:
        query = const.judge_query(book, r["prompt"], r["a"], r["b"], question)
        assert backend.query_tokens(query) <= backend.context - 1
    # a long multi-turn pair loses its oldest turns, never the last user turn
    long_turn = "Tell me more about the history of bread and ovens. " * 8
    prompt = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i}: {long_turn}"}
              for i in range(7)]
    pair = {"key": "k", "split": "train", "prompt": prompt, "a": "Sure.", "b": "No."}
    fitted_pairs, fitted = judge.fit_to_context([pair], backend, book, judge.stage_args(cfg))
    assert fitted.cut == 1 and not fitted.skipped, fitted
    kept = fitted_pairs[0]["prompt"]
    assert kept[-1] == prompt[-1] and kept[0]["role"] == "user" and len(kept) < len(prompt)
    query = const.judge_query(book, kept, "Sure.", "No.", question)
    assert backend.query_tokens(query) <= backend.context - 1
    assert lengths.fit_left([{"role": "user", "content": "x"}], lambda t: False) == (None, True)
