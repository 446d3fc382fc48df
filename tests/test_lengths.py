"""Length awareness: alignlab predicts exactly what TRL's trainers drop or cut at max_length, says
so in one line, and refuses when too much would be dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignlab import lengths
from alignlab.errors import AlignlabError
from tests.conftest import ROOT, alignlab

DATA = ROOT / "tests" / "fixtures" / "data" / "hh-rlhf-real"


@pytest.fixture(scope="module")
def setup():
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from alignlab import cli, data, models

    cfg = cli.compose(["data=hh-rlhf-harmless", f"data.path={DATA}", "method=dpo"])
    path = models.build_builtin("llama-small", 3)
    tok = models.load_tokenizer(OmegaConf.create({"trust_remote_code": False, "revision": None,
                                                  "chat_template": None}), str(path))
    pairs = data.load(cfg.data, "pairs", "train")
    return {"pairs": pairs, "tok": tok, "path": path,
            "lm": AutoModelForCausalLM.from_pretrained(path),
            "rm": AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)}


@pytest.mark.parametrize("max_length", [120, 160, 220])
def test_reward_drop_count_matches_trl(setup, tmp_path: Path, max_length: int) -> None:
    from trl import RewardConfig, RewardTrainer

    report = lengths.measure(setup["pairs"], setup["tok"], "reward", max_length)
    trainer = RewardTrainer(model=setup["rm"], processing_class=setup["tok"],
                            train_dataset=setup["pairs"],
                            args=RewardConfig(output_dir=str(tmp_path), max_length=max_length,
                                              use_cpu=True, report_to="none"))
    assert 0 < report.dropped < report.rows  # the lengths chosen cut some, not all
    assert len(trainer.train_dataset) == report.rows - report.dropped


@pytest.mark.parametrize("max_length", [24, 40, 64])
def test_dpo_drop_and_truncation_counts_match_trl(setup, tmp_path: Path, max_length: int) -> None:
    from trl import DPOConfig, DPOTrainer

    report = lengths.measure(setup["pairs"], setup["tok"], "dpo", max_length)
    trainer = DPOTrainer(model=setup["lm"], ref_model=None, processing_class=setup["tok"],
                         train_dataset=setup["pairs"],
                         args=DPOConfig(output_dir=str(tmp_path), max_length=max_length,
                                        use_cpu=True, report_to="none"))
    assert len(trainer.train_dataset) == report.rows - report.dropped
    kept = trainer.train_dataset
    longer = sum(len(p) + max(len(c), len(r)) > max_length for p, c, r in
                 zip(kept["prompt_ids"], kept["chosen_ids"], kept["rejected_ids"], strict=True))
    assert longer == report.truncated


@pytest.mark.parametrize("max_length", [24, 64])
def test_orpo_keeps_every_row_as_trl_does(setup, tmp_path: Path, max_length: int) -> None:
    """trl.experimental's ORPOTrainer truncates and drops nothing, even rows whose prompt fills
    max_length (counted as DPO's, they were said to be dropped)."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from alignlab import methods

    # Counted as the registry's row says (it said "dpo": rows said to be dropped).
    report = lengths.measure(setup["pairs"], setup["tok"], methods.load("orpo").lengths,
                             max_length)
    as_dpo = lengths.measure(setup["pairs"], setup["tok"], "dpo", max_length)
    trainer = ORPOTrainer(model=setup["lm"], processing_class=setup["tok"],
                          train_dataset=setup["pairs"],
                          args=ORPOConfig(output_dir=str(tmp_path), max_length=max_length,
                                          use_cpu=True, report_to="none"))
    assert report.dropped == 0 and len(trainer.train_dataset) == report.rows
    assert report.truncated == as_dpo.truncated + as_dpo.dropped > 0


def test_too_many_dropped_is_refused_with_the_fix(setup) -> None:
    with pytest.raises(AlignlabError, match=r"RewardTrainer would drop them.*max_length=\d+"):
        lengths.check(setup["pairs"], setup["tok"], "reward", 16, 0.25, "RewardTrainer")
    # allowed explicitly: one warning line instead
    report = lengths.check(setup["pairs"], setup["tok"], "reward", 16, 1.0, "RewardTrainer")
    assert report.dropped > 0.25 * report.rows


def test_cli_refuses_before_training(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = alignlab(f"hydra.run.dir={run}", "method=reward", "data=hh-rlhf-harmless",
                    f"data.path={DATA}", "method.args.max_length=16", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "would drop them" in err[0] and "Traceback" not in proc.stderr
    assert not run.exists()
