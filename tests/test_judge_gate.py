"""The judge gate: before RL-CAI trusts AI labels, the judge is measured against labelled pairs
per category; where it is no better than chance by its interval, its labels are dropped,
kept with a warning, or the stage stops (``method.args.gate``)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import alignlab

JUDGE = ["method=judge", "constitution=toy", "model.from_sft=false",
         "method.args.max_new_tokens=6", "method.args.batch_size=16", "method.args.max_prompts=8"]


def test_gate_counts_and_intervals_per_category() -> None:
    from alignlab.methods import judge

    # the demo's inverted judge: right on 11 % of 80 harmful pairs; right on 70 % of 200 sums
    hits = [("harmful", 1.0)] * 9 + [("harmful", 0.0)] * 71 + [("sums", 1.0)] * 140 \
        + [("sums", 0.0)] * 60 + [("helpful", 0.5)] * 30
    gate = judge.Gate("the rule", hits)
    harmful, sums, ties = (gate.per_category[c] for c in ("harmful", "sums", "helpful"))
    assert harmful["n"] == 80 and abs(harmful["agreement"] - 9 / 80) < 1e-9
    assert harmful["ci"][1] < 0.5 and not harmful["trusted"]
    assert sums["ci"][0] > 0.5 and sums["trusted"]
    assert ties["agreement"] == 0.5 and not ties["trusted"]  # ties are chance, not agreement
    assert judge.apply_gate(gate, "drop") == ["harmful", "helpful"]
    assert judge.apply_gate(None, "drop") == []


def _tie_pairs(path: Path) -> Path:
    """Labelled pairs that contradict each other: each pair twice, once with either reply as
    the chosen one. Judged in both orders, a judge's label of one row is exactly one minus the
    other's, so any judge agrees with these labels on exactly half: chance, on any machine."""
    rows = []
    for i in range(6):
        x = [{"role": "assistant", "content": f"{2 * i}"}]
        y = [{"role": "assistant", "content": f"I can't help with that {i}."}]
        prompt = [{"role": "user", "content": f"What is {i} plus {i}?"}]
        rows += [{"prompt": prompt, "chosen": x, "rejected": y},
                 {"prompt": prompt, "chosen": y, "rejected": x}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gate_drops_labels_of_a_judge_at_chance(tmp_path: Path) -> None:
    """Gated on pairs it cannot tell apart (a judge at chance there, on any machine), the
    judge's AI labels of that category are left out, with one warning line."""
    gate_data = _tie_pairs(tmp_path / "gate.jsonl")
    run = tmp_path / "drop"
    proc = alignlab(*JUDGE, f"hydra.run.dir={run}", "method.args.categories=[helpful]",
                    f"method.args.gate_data={gate_data}", "method.args.gate=drop",
                    "method.args.human_pairs=3")
    metrics = json.loads((run / "metrics.json").read_text())
    gate = metrics["gate"]
    # a file of pairs gates the judge as a whole ("all"): every AI label is left out
    assert gate["per_category"]["all"]["n"] == 12 and gate["distrusted"] == ["all"]
    assert gate["per_category"]["all"]["agreement"] == 0.5
    assert metrics["pairs_by_source"] == {"ai": 0, "human": 6} and metrics["comparisons"] > 0
    warnings = [ln for ln in proc.stdout.splitlines() if "judge gate" in ln]
    assert len(warnings) == 1 and "on all pairs" in warnings[0] and "left out" in warnings[0]
    # warn keeps them (the same labels, from the resumable store of a copy of the run)
    kept = tmp_path / "warn"
    alignlab(*JUDGE, f"hydra.run.dir={kept}", "method.args.categories=[helpful]",
             f"method.args.gate_data={gate_data}", "method.args.gate=warn")
    warned = json.loads((kept / "metrics.json").read_text())
    assert warned["pairs_by_source"]["ai"] > 0 and warned["gate"]["distrusted"] == ["all"]


def test_gate_stop_keeps_labels_for_resume(tmp_path: Path) -> None:
    gate_data = _tie_pairs(tmp_path / "gate.jsonl")
    run = tmp_path / "stop"
    args = [*JUDGE, f"hydra.run.dir={run}", "method.args.categories=[helpful]",
            f"method.args.gate_data={gate_data}"]
    proc = alignlab(*args, "method.args.gate=stop", check=False)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("alignlab: ")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert "not better than chance on all" in errors[0] and "resume=true" in errors[0]
    labels = sorted((run / "labels").glob("shard-*.jsonl"))
    assert labels and not (run / "DONE").exists()
    again = alignlab(*args, "method.args.gate=drop", "resume=true", check=False)
    # drop leaves no pair at all (no human pairs asked for): refused, not an empty dataset
    assert again.returncode == 2 and "No labelled pairs are left" in again.stderr
    alignlab(*args, "method.args.gate=drop", "method.args.human_pairs=3", "resume=true")
    assert sorted((run / "labels").glob("shard-*.jsonl")) == labels  # nothing judged again
    assert json.loads((run / "metrics.json").read_text())["gate"]["distrusted"] == ["all"]


def test_toy_gate_is_measured_on_the_judged_samples_by_the_rule(tmp_path: Path) -> None:
    """Without gate_data the toy world's rule scores the very pairs the judge labelled; its
    per-category figures are the decisive pairs' agreement, the same as toy_agreement's."""
    run = tmp_path / "toy"
    alignlab(*JUDGE, f"hydra.run.dir={run}", "method.args.gate=warn")
    metrics = json.loads((run / "metrics.json").read_text())
    gate, toy = metrics["gate"], metrics["toy_agreement"]
    assert gate["on"].startswith("the data's rule")
    assert sum(g["n"] for g in gate["per_category"].values()) == toy["n_decisive"]
    for category, g in gate["per_category"].items():
        assert abs(g["agreement"] - toy["per_category"][category]) < 1e-9
        assert g["trusted"] == (g["ci"][0] > 0.5)
    assert sorted(gate["distrusted"]) == sorted(c for c, g in gate["per_category"].items()
                                                if not g["trusted"])
