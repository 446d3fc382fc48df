"""SFT, reward, DPO and KTO through the CLI on llama-small and the toy world: outcomes, files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import alignlab, run_inprocess, trend


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def logged(run: Path, key: str) -> list[float]:
    return [e[key] for e in metrics(run)["log_history"] if key in e]


def test_sft_learns_and_leaves_a_complete_run_dir(sft_run: Path) -> None:
    losses = logged(sft_run, "loss")
    assert len(losses) >= 5 and losses[-1] < 0.5 * losses[0]
    for name in ("config.yaml", "metrics.json", "DONE", "model/model.safetensors",
                 "model/tokenizer.json", "model/README.md"):
        assert (sft_run / name).exists(), name
    assert list(sft_run.glob("*.log")), "the run's log file"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(sft_run / "model")
    tok = AutoTokenizer.from_pretrained(sft_run / "model")
    assert model.num_parameters() > 500_000 and tok.chat_template
    judge = metrics(sft_run)["judge"]
    assert 0.3 < judge["score"] < 0.85  # learned the world, but the mixed demos show
    assert judge["per_category"]["helpful"] > 0.4


def test_reward_model_ranks_held_out_pairs(reward_run: Path) -> None:
    reward = metrics(reward_run)["reward"]
    assert reward["accuracy"] > 0.75 and reward["accuracy"] > reward["accuracy_before"] + 0.2
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(reward_run / "model")
    assert rm.config.num_labels == 1


def test_dpo_from_sft_beats_sft_on_the_judge(sft_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "dpo"
    alignlab(f"hydra.run.dir={out}", "method=dpo", "model=llama-small",
             f"model.path={sft_run}/model", "method.args.max_steps=60",
             "method.args.save_strategy=no")
    acc = logged(out, "rewards/accuracies")
    assert len(acc) >= 4 and sum(acc[-3:]) / 3 > sum(acc[:1]) + 0.2
    before, after = metrics(sft_run)["judge"]["score"], metrics(out)["judge"]["score"]
    assert after > before + 0.1, (before, after)
    config = (out / "config.yaml").read_text()
    assert "beta: 0.1" in config


def test_kto_trains_from_sft(sft_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "kto"
    alignlab(f"hydra.run.dir={out}", "method=kto", f"model.path={sft_run}/model",
             "method.args.save_strategy=no")
    # The margin (chosen minus rejected log-ratio to the reference) rises over the whole run,
    # mostly as the bad answers get less likely (measured: 0.02 -> 0.26, rejected -0.14 -> -0.36)
    first, last, slope = trend(logged(out, "rewards/margins"))
    assert len(logged(out, "rewards/margins")) >= 9 and last > first + 0.1 and slope > 0
    first, last, slope = trend(logged(out, "rewards/rejected"))
    assert last < first - 0.1 and slope < 0
    # KTO moves slowly at this lr (3e-4 collapsed into garbled text), but the same prompts,
    # sampled with the same seed, score better than the start's answers: an unchanged model
    # ties everywhere (measured: 0.60 -> 0.69, 13 answers better, 2 worse)
    judge, start = metrics(out)["judge"]["score"], metrics(out)["baseline"]["judge"]["score"]
    assert judge > start + 0.04 and judge >= metrics(sft_run)["judge"]["score"] - 0.05, start
    wins = json.loads((out / "eval.json").read_text())["win_rate"]
    assert wins["wins"] > 2 * wins["losses"], wins


def test_dpo_reference_is_the_starting_policy(sft_run: Path, tmp_path: Path) -> None:
    """Without an explicit reference TRL rebuilds it from config._name_or_path."""
    import torch

    from alignlab import cli, methods

    cfg = cli.compose(["method=dpo", f"model.path={sft_run}/model", "method.args.beta=0.05",
                       f"run_dir={tmp_path}"])
    trainer = methods.load("dpo").build(cfg, tmp_path)
    assert trainer.args.beta == 0.05  # the TRL argument arrived under its TRL name
    policy = dict(trainer.model.named_parameters())
    ref = dict(trainer.ref_model.named_parameters())
    assert ref.keys() == policy.keys()
    assert all(torch.equal(ref[k], policy[k]) for k in ref)
    assert not any(p.requires_grad for p in ref.values())
    # ...and it is not the random init that the builtin path would give
    scratch = cli.compose(["method=dpo", f"run_dir={tmp_path}"])
    from alignlab import models

    init = models.load_model(scratch.model, models.resolve_path(scratch.model, scratch.seed),
                             scratch.hardware)
    name = "model.embed_tokens.weight"
    assert not torch.equal(dict(init.named_parameters())[name], ref[name])


def test_lora_dpo_saves_an_adapter(sft_run: Path, tmp_path: Path) -> None:
    result = run_inprocess(tmp_path, "method=dpo", f"model.path={sft_run}/model",
                           "model.lora=true", "method.args.max_steps=5",
                           "method.args.save_strategy=no")
    assert (tmp_path / "model" / "adapter_config.json").exists()
    assert result["train"]["train_loss"] > 0
    from peft import AutoPeftModelForCausalLM

    AutoPeftModelForCausalLM.from_pretrained(tmp_path / "model")


@pytest.mark.parametrize("bad", ["missing-chosen", "empty"])
def test_bad_dataset_is_a_clear_error(tmp_path: Path, bad: str) -> None:
    data = tmp_path / "pairs.jsonl"
    rows = [] if bad == "empty" else [{"prompt": "hi", "rejected": "no"}] * 3
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    proc = alignlab(f"hydra.run.dir={out}", "method=dpo", "data=local", f"data.path={data}",
                    check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("alignlab: error:") and "Traceback" not in proc.stderr
    assert ("chosen" in err[-1]) if bad == "missing-chosen" else ("empty" in err[-1])
    assert not out.exists(), "nothing half-written is left behind"


def test_bad_data_fails_before_the_trainer_is_imported(tmp_path: Path) -> None:
    """The data checks come first: a bad file costs seconds, not TRL's trainer import."""
    import subprocess
    import sys

    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "hi", "rejected": "no"}) + "\n")
    code = ("import sys\n"
            "from alignlab import cli\n"
            "from alignlab.errors import AlignlabError\n"
            "from alignlab import methods\n"
            f"cfg = cli.compose(['method=dpo', 'data=local', 'data.path={data}'])\n"
            "try:\n"
            f"    methods.load('dpo').build(cfg, __import__('pathlib').Path('{tmp_path}'))\n"
            "except AlignlabError as e:\n"
            "    print('error:', e)\n"
            "print('trainer imported:', 'trl.trainer.dpo_trainer' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "error:" in out and "chosen" in out
    assert "trainer imported: False" in out
