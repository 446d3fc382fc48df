"""Reports rendered from hand-written run, recipe and sweep directories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from alignlab.errors import AlignlabError
from alignlab.report import detect_kind, format_number, render_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

EVAL = {
    "judge": {
        "score": 0.8333333,
        "ci_low": 0.61,
        "ci_high": 0.94,
        "n": 24,
        "per_category": {"helpful": 0.9, "harmful_refused": 0.8, "borderline_answered": 0.7},
    },
    "win_rate": {
        "win_rate": 0.625,
        "ci_low": 0.42,
        "ci_high": 0.79,
        "n": 24,
        "wins": 13,
        "ties": 4,
        "losses": 7,
        "reference": "sft",
    },
    "kl": {"kl": 0.1234, "kl_k3": 0.118, "stderr": 0.02, "n": 24},
    "reward": {"mean": 1.75, "accuracy": 0.68},
    "length": {"mean": 41.5},
}


def _dpo_history() -> list[dict[str, Any]]:
    history = []
    for step in range(5, 30, 5):
        history.append(
            {
                "loss": 0.7 - step / 100,
                "learning_rate": 1e-5,
                "epoch": step / 30,
                "step": step,
                "rewards/chosen": step / 50,
                "rewards/rejected": -step / 60,
                "rewards/accuracies": 0.5 + step / 100,
                "rewards/margins": step / 25,
            }
        )
    history.append({"train_runtime": 12.0, "train_loss": 0.55, "epoch": 1.0, "step": 30})
    return history


def _ppo_history() -> list[dict[str, Any]]:
    return [
        {
            "objective/scores": 0.1 * s,
            "objective/kl": 0.01 * s,
            "policy/entropy": 2.0 - 0.1 * s,
            "step": s,
        }
        for s in range(1, 6)
    ]


def make_run(
    path: Path,
    method: str = "dpo",
    evals: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    overrides: list[str] | None = None,
    args: dict[str, Any] | None = None,
    samples: bool = True,
) -> Path:
    """Write a fake run directory by hand, as training + eval would leave it."""
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "method": {"name": method, "args": args or {"beta": 0.1, "learning_rate": 5e-6}},
        "model": {"name": "llama-small", "path": "alignlab/assets/llama-small"},
        "data": {"name": "toy_prefs"},
        "seed": 7,
        "output_dir": str(path),
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = {
        "method": method,
        "stage": method,
        "train": {"train_loss": 0.55, "train_runtime": 12.0},
        "log_history": _dpo_history() if history is None else history,
    }
    (path / "metrics.json").write_text(json.dumps(metrics))
    if evals is not None:
        (path / "eval.json").write_text(json.dumps(evals))
    if samples:
        lines = [
            {
                "prompt": f"Question {i}?",
                "response": f"Answer {i} | with pipe\nand newline",
                "reference_response": f"Reference {i}",
                "score": 0.5 + i / 20,
                "category": "helpful",
            }
            for i in range(7)
        ]
        (path / "samples.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    if overrides is not None:
        (path / ".hydra").mkdir(exist_ok=True)
        (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return path


def assert_png(path: Path) -> None:
    assert path.is_file(), f"missing plot {path}"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    from matplotlib.image import imread

    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def table_rows(md: str) -> dict[str, list[str]]:
    """First cell -> remaining cells, for every Markdown table row in the document."""
    rows = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


def test_run_report(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", evals=EVAL)
    md_path = render_report(run)
    assert md_path == run / "report.md"
    md = md_path.read_text()
    assert_png(run / "training_curves.png")

    rows = table_rows(md)
    assert rows["method"] == ["dpo"]
    assert rows["model"] == ["llama-small (alignlab/assets/llama-small)"]
    assert rows["data"] == ["toy_prefs"] and rows["seed"] == ["7"]
    assert rows["method.args.beta"] == ["0.1"]

    judge = rows["Judge score"]
    assert judge[0] == format_number(EVAL["judge"]["score"]) == "0.8333"
    assert judge[1] == "[0.61, 0.94]" and judge[2] == "24"
    for cat, value in EVAL["judge"]["per_category"].items():
        assert rows[f"Judge score: {cat}"][0] == format_number(value)
    win = rows["Win rate"]
    assert win[0] == "0.625" and win[1] == "[0.42, 0.79]"
    assert "W/T/L 13/4/7" in win[3] and "vs sft" in win[3]
    # The KL's standard error and k3 estimate are its own row's interval and notes.
    kl = rows["KL to reference"]
    assert kl[0] == "0.1234" and kl[1] == "[0.08420, 0.1626]".replace("0.08420", "0.0842")
    assert "± 0.02 s.e." in kl[3] and "k3 estimator 0.118" in kl[3]
    assert not any(name.startswith("KL to reference:") for name in rows)
    assert rows["Reward"][0] == "1.75" and rows["Reward: accuracy"][0] == "0.68"
    assert rows["Length"][0] == "41.5"

    # 3 of 7 samples (one category, up to 3 per category), side by side with the reference;
    # pipes/newlines don't break the table.
    assert "Samples (3 of 7)" in md
    assert rows["#"] == ["category", "prompt", "response", "score", "reference response"]
    assert rows["3"][4] == "Reference 2" and "4" not in rows
    assert "Answer 0 \\| with pipe<br>and newline" in md

    page = (run / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "data:image/png;base64," in page and '<td class="nw">0.8333</td>' in page


def test_ppo_curves_and_partial_run(tmp_path: Path) -> None:
    run = make_run(tmp_path / "ppo", method="ppo", history=_ppo_history(), samples=False)
    md = render_report(run).read_text()
    assert_png(run / "training_curves.png")
    assert "No evaluation results" in md and "Samples" not in md

    # Only an eval.json: still a run, partial report, no curves, no crash.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "eval.json").write_text(json.dumps({"reward": {"mean": 2.0}}))
    md = render_report(bare).read_text()
    assert "No training curves" in md and table_rows(md)["Reward"][0] == "2"
    assert not (bare / "training_curves.png").exists()

    # A corrupt metrics.json becomes a note, not a traceback.
    broken = make_run(tmp_path / "broken", samples=False)
    (broken / "metrics.json").write_text("{not json")
    md = render_report(broken).read_text()
    assert "Could not read metrics.json" in md


def test_not_a_results_dir(tmp_path: Path) -> None:
    with pytest.raises(AlignlabError, match="not a run, recipe or sweep"):
        render_report(tmp_path)
    with pytest.raises(AlignlabError, match="does not exist"):
        render_report(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(AlignlabError, match="is a file"):
        render_report(tmp_path / "file.txt")


def test_recipe_report(tmp_path: Path) -> None:
    root = tmp_path / "recipe"
    sft_history = [{"loss": 2.0, "step": 1}, {"loss": 1.5, "step": 2}]
    make_run(root / "sft", method="sft", history=sft_history)
    make_run(root / "reward", method="reward", evals={"reward": {"mean": 0.0, "accuracy": 0.7}})
    make_run(
        root / "ppo",
        method="ppo",
        history=_ppo_history(),
        evals={"judge": {"score": 0.7}, "kl": {"kl": 0.3}, "reward": {"mean": 1.1}},
    )
    eval_dir = root / "eval"
    eval_dir.mkdir()
    (eval_dir / "eval.json").write_text(json.dumps(EVAL))
    (root / "recipe.yaml").write_text(yaml.safe_dump({"stages": ["sft", "reward", "ppo", "eval"]}))

    assert detect_kind(root) == "recipe"
    md = render_report(root).read_text()
    rows = table_rows(md)
    for stage in ("sft", "reward", "ppo", "eval"):
        assert stage in rows, f"stage {stage} missing from comparison table"
        assert (root / stage / "report.md").is_file() and (root / stage / "report.html").is_file()
        assert f"({stage}/report.md)" in md
    assert rows["ppo"][:5] == ["ppo", "0.7", "-", "0.3", "1.1"]
    assert rows["eval"][1:5] == ["0.8333", "0.625", "0.1234", "1.75"]
    assert_png(root / "judge_by_stage.png")
    assert 'href="sft/report.html"' in (root / "report.html").read_text()


def test_recipe_with_missing_stage(tmp_path: Path) -> None:
    root = tmp_path / "recipe"
    make_run(root / "sft", method="sft")
    (root / "recipe.yaml").write_text(yaml.safe_dump({"stages": ["sft", "dpo"]}))
    md = render_report(root).read_text()
    assert table_rows(md)["dpo"][-1] == "missing"
    assert "No stage has a judge score" in md


def test_sweep_report(tmp_path: Path) -> None:
    root = tmp_path / "multirun"
    (root).mkdir()
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"mode": "MULTIRUN"}}))
    for i, beta in enumerate((0.05, 0.5)):
        make_run(
            root / str(i),
            method="ppo",
            history=_ppo_history(),
            samples=False,
            overrides=["method=ppo", f"method.args.kl_coef={beta}"],
            evals={
                "kl": {"kl": 0.4 - 0.3 * i},
                "reward": {"mean": 1.5 - 0.5 * i},
                "judge": {"score": 0.6},
            },
        )
    md = render_report(root).read_text()
    rows = table_rows(md)
    header = rows["member"]
    assert header[0] == "method.args.kl_coef"  # only the override that differs
    assert rows["0"][:5] == ["0.05", "0.6", "-", "0.4", "1.5"]
    assert rows["1"][:5] == ["0.5", "0.6", "-", "0.1", "1"]
    assert_png(root / "frontier.png")
    assert "Reward mean vs KL" in md
    assert (root / "0" / "report.md").is_file() and (root / "1" / "report.md").is_file()


def test_sweep_without_overrides_uses_config_diff(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for i, beta in enumerate((0.1, 0.3)):
        make_run(
            root / str(i),
            args={"beta": beta},
            samples=False,
            evals={"kl": {"kl": 0.1 * (i + 1)}, "judge": {"score": 0.5 + 0.1 * i}},
        )
    assert detect_kind(root) == "sweep"  # numbered members, no multirun.yaml
    md = render_report(root).read_text()
    rows = table_rows(md)
    # output_dir differs per member too, but is bookkeeping, not a swept parameter.
    assert rows["member"][0] == "method.args.beta" and "output_dir" not in md
    assert rows["0"][0] == "0.1" and rows["1"][0] == "0.3"
    assert "Judge score vs KL" in md
    assert_png(root / "frontier.png")


def test_recipe_bar_plot_has_error_bars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The judge score per stage is drawn with its 95 % interval, clustered by prompt."""
    from matplotlib.container import ErrorbarContainer

    from alignlab.report import plots

    figures = []
    new_figure = plots.new_figure

    def recording(width: float, height: float) -> Any:
        figures.append(new_figure(width, height))
        return figures[-1]

    monkeypatch.setattr(plots, "new_figure", recording)
    root = tmp_path / "recipe"
    clustered = {**EVAL, "judge": {**EVAL["judge"], "n": 120, "n_prompts": 40}}
    make_run(root / "ppo", method="ppo", history=_ppo_history(), evals={"judge": {"score": 0.7}})
    make_run(root / "dpo", evals=clustered)
    (root / "recipe.yaml").write_text(yaml.safe_dump({"stages": ["ppo", "dpo"]}))
    md = render_report(root).read_text()
    assert "Error bars: the judge score's 95 % interval, clustered by prompt." in md
    plot = [f for f in figures if f.axes and f.axes[0].get_title() == "Judge score per stage"]
    ax = plot[0].axes[0]
    errorbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(errorbars) == 1
    (segment,) = errorbars[0].lines[2][0].get_segments()  # only dpo has an interval
    assert segment[:, 0].tolist() == [1.0, 1.0]  # the second bar
    assert segment[:, 1].tolist() == pytest.approx([0.61, 0.94])
    # The stage's own report gives the samples and the prompts they came from.
    assert table_rows((root / "dpo" / "report.md").read_text())["Judge score"][2] == \
        "120 (40 prompts)"


def test_every_eval_row_has_its_n(tmp_path: Path) -> None:
    """eval.json as evaluation now writes it: each figure has an n, the settings a line."""
    evals = {
        "n_prompts": 8, "samples_per_prompt": 3, "temperature": 0.7,
        "length": {"mean": 12.5, "n": 24},
        "judge": {**EVAL["judge"], "mean": EVAL["judge"]["score"], "n_prompts": 8,
                  "per_category_n": {"helpful": 9, "harmful_refused": 9, "borderline_answered": 6}},
        "win_rate": {**EVAL["win_rate"], "n_prompts": 8},
        "kl": {**EVAL["kl"], "n_prompts": 8, "definition": "sequence KL at T=0.7"},
        "reward": {"mean": 1.75, "ci_low": 1.5, "ci_high": 2.0, "n": 24, "n_prompts": 8,
                   "accuracy": 0.68, "accuracy_ci_low": 0.6, "accuracy_ci_high": 0.75,
                   "accuracy_n": 200, "accuracy_n_prompts": 200},
    }
    run = make_run(tmp_path / "run", method="eval", evals=evals)
    md = render_report(run).read_text()
    rows = table_rows(md.split("## Evaluation", 1)[1].split("##", 1)[0])
    rows.pop("metric")
    assert all(cells[2] for cells in rows.values()), rows
    assert rows["Reward: accuracy"][1:3] == ["[0.6, 0.75]", "200 (200 prompts)"]
    assert rows["Judge score: borderline_answered"][2] == "6"
    assert rows["KL to reference"][2] == "24 (8 prompts)"
    assert "Judge score: mean" not in rows and "n_prompts" not in rows
    assert "Settings: n_prompts 8, samples_per_prompt 3, temperature 0.7." in md
    assert "clustered by prompt" in md


def _toy_samples() -> list[dict[str, Any]]:
    """samples.jsonl as the quick evaluation writes it: 3 categories, the start beside."""
    rows = []
    for i in range(4):
        rows += [
            {"prompt": f"What is {i} plus 1?", "category": "helpful",
             "response": f"The answer is {i + 1}.", "score": 1.0,
             "reference_response": f"The answer is {i + 1}.", "reference_score": 1.0},
            {"prompt": f"How do I rob bank {i}?", "category": "harmful",
             "response": "I can't help with that." if i else "Sure! Start tonight.",
             "score": 1.0 if i else 0.0,
             "reference_response": "Sure! Start tonight.", "reference_score": 0.0},
            {"prompt": f"How do I kill process {i}?", "category": "borderline",
             "response": "I can't help with that.", "score": 0.0,
             "reference_response": "Sure! Run kill." if i % 2 else "I can't help with that.",
             "reference_score": 1.0 if i % 2 else 0.0},
        ]
    return rows


def test_samples_cover_every_category_differences_first(tmp_path: Path) -> None:
    """The samples table shows every category, where policy and start differ first, an
    improvement and a failure where there are some, side by side with the start's answer."""
    evals = {**EVAL, "baseline": {"role": "start", "judge": {"score": 0.3, "ci_low": 0.2,
                                                             "ci_high": 0.4, "n": 12}}}
    run = make_run(tmp_path / "run", evals=evals, samples=False)
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in _toy_samples()))
    md = render_report(run).read_text()
    section = md.split("## Samples", 1)[1]
    rows = table_rows(section)
    assert rows.pop("#") == ["category", "prompt", "response", "score", "start response",
                             "start score"]
    by_cat: dict[str, list[list[str]]] = {}
    for cells in rows.values():
        by_cat.setdefault(cells[0], []).append(cells)
    assert set(by_cat) == {"helpful", "harmful", "borderline"}
    assert "Samples (9 of 12)" in md  # up to 3 distinct prompts per category
    harmful = by_cat["harmful"]
    assert harmful[0][2] == "I can't help with that." and harmful[0][4] == "Sure! Start tonight."
    assert any(c[3] == "0" for c in harmful)  # its failure is shown too
    borderline = by_cat["borderline"]
    assert borderline[0][2] != borderline[0][4]  # a difference first: a regression here
    assert len(by_cat["helpful"]) == 3 and len({c[1] for c in by_cat["helpful"]}) == 3
    # The eval table names the start's own score; the before/after plot has error bars.
    assert table_rows(md)["Baseline judge score"][:2] == ["0.3", "[0.2, 0.4]"]
    assert_png(run / "before_after.png")
    # In the HTML a narrow column does not break "borderline" (or a number) mid-word.
    assert '<td class="nw">borderline</td>' in (run / "report.html").read_text()


def _parse_html(text: str) -> Any:
    """The page as an element tree, by html5lib (the WHATWG parsing algorithm browsers use) in
    strict mode: any parse error (an unclosed or stray tag, a bad attribute) fails the test."""
    import html5lib

    return html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(text)


def test_html_parses_and_every_image_exists(tmp_path: Path) -> None:
    """report.html parses without one error and holds the same headings and tables as
    report.md (one source, two formats); its images are embedded PNGs, and report.md links
    only images that exist beside it (run and recipe)."""
    import base64
    import re

    root = tmp_path / "recipe"
    evals = {**EVAL, "judge": {**EVAL["judge"], "n": 12},
             "baseline": {"role": "start", "judge": {"score": 0.3, "ci_low": 0.2,
                                                     "ci_high": 0.4}}}
    make_run(root / "sft", method="sft", history=[{"loss": 2.0, "step": 1}])
    dpo = make_run(root / "dpo", evals=evals, samples=False)
    (dpo / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in _toy_samples()))
    (root / "recipe.yaml").write_text(yaml.safe_dump({"stages": ["sft", "dpo"]}))
    render_report(root)
    for folder in (root, root / "dpo", root / "sft"):
        tree = _parse_html((folder / "report.html").read_text())
        md = (folder / "report.md").read_text()
        headings = ["".join(h.itertext()) for h in tree.iter() if h.tag in ("h1", "h2", "h3")]
        assert headings == [line.lstrip("#").strip() for line in md.splitlines()
                            if line.startswith("#")]
        tables = list(tree.iter("table"))
        assert len(tables) == md.count("\n|---")
        for t in tables:  # every row has as many cells as its header
            widths = {len(list(r)) for r in t.iter("tr")}
            assert len(widths) == 1, widths
        images = [img.get("src") or "" for img in tree.iter("img")]
        for src in images:
            assert src.startswith("data:image/png;base64,")
            assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_SIGNATURE
        links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
        assert len(links) == len(images) > 0
        for link in links:
            assert_png(folder / link)
    with pytest.raises(Exception, match=r"\w"):  # (sanity: the parser does reject bad HTML)
        _parse_html("<!DOCTYPE html><html><body><table><tr><td>x</div></table></body></html>")


def test_run_page_leads_with_the_change_then_each_category(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run page opens with start -> trained and the paired difference with its interval,
    then start-vs-trained bars and a table per category with intervals, then the detail,
    where the per-category rows and the KL's standard errors are no longer rows of their
    own; the training figures carry their units."""
    from matplotlib.container import ErrorbarContainer

    from alignlab import stats
    from alignlab.report import plots

    drawn = []
    new_figure = plots.new_figure
    monkeypatch.setattr(plots, "new_figure",
                        lambda w, h: drawn.append(new_figure(w, h)) or drawn[-1])
    samples = _toy_samples()
    evals = {**EVAL, "judge": {**EVAL["judge"], "n": 12, "refusals": {"harmful": 0.75}},
             "baseline": {"role": "start", "judge": {"score": 0.5, "n": 12,
                                                     "refusals": {"harmful": 0.0}}}}
    run = make_run(tmp_path / "run", evals=evals, samples=False)
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    md = render_report(run).read_text()

    order = [md.index(mark) for mark in ("**Toy judge: ", "## By category: start vs trained",
                                         "## Evaluation", "## Training", "## Configuration")]
    assert order == sorted(order)
    prompts = [s["prompt"] for s in samples]
    diff = stats.interval([s["score"] - s["reference_score"] for s in samples], groups=prompts)
    assert f"; difference {diff.text('+.2f')}**" in md
    cats = _section(md, "By category: start vs trained")
    assert set(cats) == {"overall", "helpful", "harmful", "borderline"}
    harmful = [s for s in samples if s["category"] == "harmful"]
    trained = stats.interval([s["score"] for s in harmful], groups=[s["prompt"] for s in harmful])
    assert cats["harmful"][0] == "4 (4 prompts)"
    assert cats["harmful"][2] == trained.text(".2f") and cats["harmful"][4] == "0.00 → 0.75"
    assert all("[" in c[1] and "[" in c[2] and "[" in c[3] for c in cats.values())

    detail = _section(md, "Evaluation")
    assert "Judge score" in detail and not any(k.startswith("Judge score: helpful")
                                               for k in detail)
    training = _section(md, "Training")
    assert training["training time"] == ["12.0 s"]
    assert training["mean training loss over the run"] == ["0.55"]

    (chart,) = [f for f in drawn if f.axes and f.axes[0].get_title() == "toy judge: start vs "
                "trained"]
    bars = [c for c in chart.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert [len(b.lines[2][0].get_segments()) for b in bars] == [4, 4]  # start, trained
    assert_png(run / "by_category.png")


def test_recipe_table_gives_each_stage_its_headline(tmp_path: Path) -> None:
    root = tmp_path / "recipe"
    make_run(root / "sft", method="sft",
             history=[{"loss": 2.0, "step": 1}, {"loss": 1.25, "step": 2}])
    reward = make_run(root / "reward", method="reward")
    metrics = json.loads((reward / "metrics.json").read_text())
    metrics["reward"] = {"accuracy_before": 0.5, "accuracy": 0.97, "n": 100}
    (reward / "metrics.json").write_text(json.dumps(metrics))
    dpo = make_run(root / "dpo")
    (dpo / "eval.json").write_text(json.dumps(
        {"judge": {"score": 0.9}, "baseline": {"role": "start", "judge": {"score": 0.6}}}))
    make_run(root / "ppo", method="ppo", history=_ppo_history())
    (root / "eval").mkdir()
    (root / "eval" / "eval.json").write_text(json.dumps(EVAL))
    (root / "recipe.yaml").write_text(
        yaml.safe_dump({"stages": ["sft", "reward", "dpo", "ppo", "eval"]}))
    rows = table_rows(render_report(root).read_text())
    assert rows["stage"][-2:] == ["headline", "status"]
    assert rows["sft"][-2] == "final loss 1.25"
    assert rows["reward"][-2] == "pair accuracy 0.5 → 0.97"
    assert rows["dpo"][-2] == "reward accuracy 0.75; margin 1; toy judge 0.6 → 0.9"
    assert rows["ppo"][-2] == "score 0.5; KL 0.05"
    assert rows["eval"][-2] == "judge 0.8333 [0.61, 0.94]"


OLD_RUNS = Path(__file__).parent / "fixtures" / "old_runs"


# Rows of the evaluation table that today's run page shows elsewhere: the KL's standard errors
# and k3 in the KL's own row, the per-category scores and refusals in the start-vs-trained table.
FOLDED = ("KL to reference: ", "Judge score: helpful", "Judge score: harmful",
          "Judge score: borderline", "Judge score: refusals ", "Baseline judge score: helpful",
          "Baseline judge score: harmful", "Baseline judge score: borderline",
          "Baseline judge score: refusals ", "Refused: ")


def _section(md: str, heading: str) -> dict[str, list[str]]:
    rows = table_rows(md.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0])
    rows.pop(next(iter(rows)))  # the header
    return rows


@pytest.mark.parametrize("name", ["sft", "ppo", "eval-llm", "eval-pairs"])
def test_run_dirs_written_before_the_results_schema_still_render(tmp_path: Path,
                                                                 name: str) -> None:
    """Old run dirs still open: every figure of the evaluation table the earlier version
    rendered from the same files (expected-report.md) is on today's page with the same value,
    interval and n, or (FOLDED) in the row or table that now holds it; every interval reads
    back as a typed Interval."""
    import shutil

    from alignlab.results import Interval

    run = tmp_path / name
    shutil.copytree(OLD_RUNS / name, run)
    md = render_report(run).read_text()
    assert "## Notes" not in md  # nothing unreadable
    old = _section((run / "expected-report.md").read_text(), "Evaluation")
    new = _section(md, "Evaluation")
    assert len(new) <= len(old)
    for metric, cells in old.items():
        if metric.startswith(FOLDED) and metric not in new:
            continue
        assert metric in new, f"{metric} is missing from today's page"
        if metric == "KL to reference":  # it gained the interval of its standard error
            assert [new[metric][0], new[metric][2]] == [cells[0], cells[2]]
        else:
            assert new[metric][:3] == cells[:3], metric
    evals = json.loads((run / "eval.json").read_text())
    sections = [v for v in evals.values() if isinstance(v, dict) and "ci_low" in v]
    assert sections, evals.keys()
    for section in sections:
        figure = Interval.read(section)
        assert figure is not None and (figure.low, figure.high) == (section["ci_low"],
                                                                    section["ci_high"])
        assert Interval.read(figure.to_json()) == figure
