"""``method=eval``: inputs checked before any model loads, wall time, and an n for every figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import alignlab
from tests.test_report import table_rows

LOADING = "loading the models"  # what method=eval logs just before it loads a model
QUIET = {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1"}


def _builtin() -> str:
    from alignlab import models

    return str(models.build_builtin("llama-small", 42))


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Overrides of a mistaken evaluation and a phrase of the error it must give."""
    text_only = tmp_path / "text.jsonl"
    text_only.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(40)))
    prompts_only = tmp_path / "prompts.jsonl"
    prompts_only.write_text("".join(
        json.dumps({"prompt": [{"role": "user", "content": f"q {i}"}]}) + "\n" for i in range(40)))
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"prompt": "not a held-out prompt", "response": "x"}) + "\n")
    llm = ["method.args.judge=llm", "method.args.judge_model=builtin:llama-small"]
    return {
        "unknown judge": (["method.args.judge=lmm"], "Did you mean 'llm'"),
        "llm judge without a judge model": (["method.args.judge=llm"], "judge_model"),
        "llm judge without a baseline": (llm, "compares the policy with a baseline"),
        "baseline answers that miss prompts": (
            [*llm, f"method.args.baseline_answers={answers}"], "has no answer for"),
        "judge settings without judge=llm": (["method.args.judge_model=builtin:llama-small"],
                                             "set method.args.judge=llm"),
        "unknown task": (["method.args.task=pair"], "'pairs'"),
        "pairs without a scorer": (["method.args.task=pairs"], "needs a scorer"),
        "no prompt column": ([f"data.path={text_only}", f"method.reward_model={_builtin()}"],
                             "'prompt'"),
        "no pairs for the reward model's accuracy": (
            [f"data.path={prompts_only}", f"method.reward_model={_builtin()}"], "'chosen'"),
        "toy judge off the toy world": (
            [f"data.path={prompts_only}", "method.args.judge=toy"], "judge=toy"),
    }


CASES = ["unknown judge", "no prompt column", "no pairs for the reward model's accuracy",
         "toy judge off the toy world", "llm judge without a judge model",
         "llm judge without a baseline", "baseline answers that miss prompts",
         "judge settings without judge=llm", "unknown task", "pairs without a scorer"]


@pytest.mark.parametrize("case", CASES)
def test_bad_eval_input_fails_before_any_model_loads(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     case: str) -> None:
    """The stage raises the input's error while no model has been touched."""
    from alignlab import cli, models
    from alignlab.errors import AlignlabError

    overrides, expect = _bad_inputs(tmp_path)[case]
    if "data.path" in " ".join(overrides):
        overrides = ["data=local", *overrides]

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the inputs were checked")

    for name in ("resolve_path", "load_tokenizer", "load_model"):
        monkeypatch.setattr(models, name, no_model)
    with pytest.raises(AlignlabError, match=expect):  # by config validation or the stage
        cfg = cli.compose(["method=eval", *overrides, f"run_dir={tmp_path / 'run'}"])
        cli.run_stage(cfg, tmp_path / "run")


@pytest.mark.parametrize("case", ["unknown judge", "no prompt column",
                                  "llm judge without a baseline"])
def test_bad_eval_input_is_one_line_and_exit_code_2(tmp_path: Path, case: str) -> None:
    overrides, expect = _bad_inputs(tmp_path)[case]
    if "data.path" in " ".join(overrides):
        overrides = ["data=local", *overrides]
    proc = alignlab("method=eval", *overrides, f"hydra.run.dir={tmp_path / 'run'}",
                    check=False, env=QUIET)
    assert proc.returncode == 2, proc.stderr
    assert expect in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert LOADING not in proc.stdout + proc.stderr
    assert not (tmp_path / "run").exists()


def test_eval_reports_wall_time_and_every_figure_with_its_n(tmp_path: Path) -> None:
    """A real (tiny) evaluation with a reference and a reward model: its wall time is measured
    and every row of its report's evaluation table has an n."""
    run = tmp_path / "run"
    builtin = _builtin()
    proc = alignlab("method=eval", f"method.reference={builtin}",
                    f"method.reward_model={builtin}", "method.args.max_prompts=6",
                    "method.args.num_samples=2", "method.args.max_new_tokens=8",
                    "report_to=none", f"hydra.run.dir={run}", env=QUIET)
    assert LOADING in proc.stdout + proc.stderr  # so its absence above means something
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["wall_seconds"] > 0
    assert f"wall={metrics['wall_seconds']:.0f}s" in proc.stdout
    evals = json.loads((run / "eval.json").read_text())
    assert evals["reward"]["accuracy_n"] > 0 and evals["length"]["n"] == 12
    assert evals["kl"]["n"] == 12 and "T=0.7" in evals["kl"]["definition"]

    md = (run / "report.md").read_text()
    table = md.split("## Evaluation", 1)[1].split("##", 1)[0]
    rows = table_rows(table)
    rows.pop("metric")  # the header
    assert {"Judge score", "Win rate", "KL to reference", "Reward", "Reward: accuracy",
            "Length"} <= set(rows)
    missing = {name: cells for name, cells in rows.items() if not cells[2]}
    assert not missing, f"eval rows without an n: {missing}"
    assert rows["Judge score"][2] == "12 (6 prompts)"
    assert rows["Reward: accuracy"][2].split()[0] == str(evals["reward"]["accuracy_n"])


def test_eval_result_to_dict_is_eval_json() -> None:
    """``EvalResult.to_dict()`` is eval.json: the measured sections under their public names, in
    eval.json's order; the baseline's scores under the name of what scored them."""
    from alignlab.evaluation import Baseline, EvalResult

    result = EvalResult(n_prompts=2, samples_per_prompt=3, temperature=0.7,
                        length={"mean": 4.0, "n": 6}, rule={"score": 0.5}, kl={"kl": 0.1},
                        win_rate={"win_rate": 0.5, "judge": "toy", "versus": "start"},
                        baseline=Baseline("start", {"score": 0.25}, by_rule=True))
    out = result.to_dict()
    assert list(out) == ["n_prompts", "samples_per_prompt", "temperature", "length", "judge",
                         "kl", "win_rate", "baseline"]
    assert out["judge"] == {"score": 0.5}
    assert out["baseline"] == {"role": "start", "judge": {"score": 0.25}}
    assert Baseline("reference", {"mean": 1.0}, by_rule=False).to_dict() == \
        {"role": "reference", "reward": {"mean": 1.0}}
    assert result.pick("judge", "baseline", "reward") == {"judge": out["judge"],
                                                          "baseline": out["baseline"]}


REAL_HH = Path(__file__).parent / "fixtures" / "data" / "hh-rlhf-real"


@pytest.mark.slow
def test_prompts_longer_than_the_context_are_cut_or_skipped_before_sampling(
        tmp_path: Path) -> None:
    """A 512-token model and max_new_tokens=400: a held-out prompt that leaves no room for the
    answer went into the model past its position limit. Now its oldest turns go until it
    fits, or it is skipped; more than data.max_dropped skipped is one line before anything
    is sampled."""
    from alignlab import cli, evaluation, models
    from tests.conftest import one_error_line

    talk = "Tell me about the history of bread, ovens and the people who baked. " * 4
    rows = [[{"role": "user", "content": f"What is {i} plus 1?"}] for i in range(6)]
    rows += [[{"role": "user" if t % 2 == 0 else "assistant", "content": f"{t}: {talk}"}
              for t in range(4)] + [{"role": "user", "content": "And then?"}] for _ in range(3)]
    rows += [[{"role": "user", "content": talk * 6}] for _ in range(3)]  # can never fit
    held_out = tmp_path / "data"  # a test split of pairs (the reward model's accuracy too)
    held_out.mkdir()
    for split in ("train", "test"):
        (held_out / f"{split}.jsonl").write_text("".join(json.dumps(
            {"prompt": r, "chosen": [{"role": "assistant", "content": "Sure."}],
             "rejected": [{"role": "assistant", "content": "No."}]}) + "\n" for r in rows))
    common = ["data=local", f"data.path={held_out}", "method=eval",
              f"method.reward_model={_builtin()}",
              "method.args.max_new_tokens=400"]
    proc = alignlab(f"hydra.run.dir={tmp_path / 'r'}", *common, "data.max_dropped=0",
                    env=QUIET, check=False)
    line = one_error_line(proc)
    assert "3 of 12 held-out prompts are longer than the 512-token context" in line, line
    assert "data.max_dropped=0.25" in line and not list(tmp_path.rglob("samples.jsonl"))
    cfg = cli.compose(common)
    args = evaluation.EvalArgs(**cfg.method.args)
    inputs = evaluation.prepare(cfg, args, reward_model=True)
    tokenizer = models.load_tokenizer(cfg.model, _builtin())
    model = models.load_model(cfg.model, _builtin(), cfg.hardware)
    fitted = evaluation.fit_prompts(inputs, model, tokenizer, args.max_new_tokens)
    assert (fitted.context, fitted.rows, fitted.cut, len(fitted.skipped)) == (512, 12, 3, 3)
    assert len(inputs.prompts) == 9
    for turns in inputs.prompts["prompt"]:  # what is left leaves room for the answer
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 512 - 400
        assert turns[-1]["role"] == "user" and turns[0]["role"] == "user"
    assert [t[-1]["content"] for t in inputs.prompts["prompt"]][-3:] == ["And then?"] * 3
    assert evaluation.fit_prompts(inputs, model, tokenizer, 400) is fitted  # once per inputs
