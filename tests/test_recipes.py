"""Recipes: stages chained by name, markers, skip/resume after a kill, refusal to mix configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import alignlab, read_samples, trend_t

# Small but real stages: SFT that learns, a short DPO, one evaluation (the eval stage's).
SMALL = ["data.toy.n_sft=1500", "stages.sft.args.num_train_epochs=2",
         "stages.sft.args.save_strategy=no", "stages.eval.args.num_samples=2",
         "quick_eval=false", "report_to=none"]


def _done(stage: Path) -> dict:
    return json.loads((stage / "DONE").read_text())


def test_dpo_recipe_end_to_end_then_skips_finished_stages(tmp_path: Path) -> None:
    out = tmp_path / "dpo"
    args = [f"hydra.run.dir={out}", "recipe=dpo", *SMALL, "stages.dpo.args.max_steps=40",
            "stages.dpo.args.save_strategy=no"]
    proc = alignlab(*args)
    for stage in ("sft", "dpo", "eval"):
        assert _done(out / stage)["fingerprint"], stage
    assert (out / "sft/model/model.safetensors").exists()
    assert (out / "dpo/model/model.safetensors").exists()
    evaluation = json.loads((out / "eval/eval.json").read_text())
    # the eval stage compared the DPO policy with the SFT reference, by name, no paths typed
    assert evaluation["policy"].endswith("dpo/model")
    assert evaluation["win_rate"]["reference"].endswith("sft/model")
    # ...on the same prompts and seed: every policy sample has the reference's beside it
    samples = read_samples(out / "eval")
    assert len(samples) == evaluation["win_rate"]["n"] == evaluation["n_prompts"] * 2
    assert all(s["reference_score"] is not None for s in samples)
    # The DPO stage trained: its pairs' reward margin rose by more than the logged series' noise
    # (measured 0.005 -> 1.6 over 8 logged steps, slope 0.21 +- 0.09). Whether 40 steps from
    # this 2-epoch SFT (toy judge 0.21) move the held-out judge is not claimed here: measured
    # 5 answers better, 4 worse (win rate 0.506 [0.40, 0.61]); test_methods checks that claim
    # with 60 steps from the 470-step SFT, paired, with its interval.
    margins = [h["rewards/margins"] for h in json.loads((out / "dpo/metrics.json").read_text())
               ["log_history"] if "rewards/margins" in h]
    slope, half = trend_t(margins)
    assert slope > half, (margins, slope, half)
    assert (out / "report.md").exists() and (out / "recipe.yaml").exists()
    assert "stage dpo" in proc.stdout
    # the recipe ends in an export stage: the DPO model as a standalone folder, its card
    # carrying the DPO stage's evaluation, the merge checked against the trained model
    shipped = out / "export/model"
    exported = json.loads((shipped / "export.json").read_text())
    assert exported["parity"]["merged"]["within_tolerance"] and exported["gguf"] == {}
    assert (shipped / "model.safetensors").exists() and (shipped / "Modelfile").exists() is False
    assert "method `dpo`" in (shipped / "README.md").read_text()

    again = alignlab(*args)
    assert again.stdout.count("already finished, skipping") == 4

    changed = alignlab(*args[:-2], "stages.dpo.args.max_steps=41",
                       "stages.dpo.args.save_strategy=no", check=False)
    assert changed.returncode == 2 and "different config" in changed.stderr


def test_from_stage_takes_an_existing_sft_model(sft_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "from"
    alignlab(f"hydra.run.dir={out}", "recipe=dpo", "from_stage=dpo", f"inputs.sft={sft_run}",
             "recipe.stages=[sft,dpo,eval]",  # the export stage is the other test's
             "stages.dpo.args.max_steps=5", "stages.dpo.args.save_strategy=no",
             "stages.eval.args.num_samples=1", "stages.eval.args.max_prompts=8")
    assert not (out / "sft").exists()
    assert (out / "dpo/DONE").exists() and (out / "eval/DONE").exists()
    missing = alignlab(f"hydra.run.dir={tmp_path / 'x'}", "recipe=dpo", "from_stage=dpo",
                       check=False)
    assert missing.returncode == 2 and "inputs.sft" in missing.stderr


@pytest.mark.parametrize("recipe", ["instructgpt"])
def test_killed_recipe_resumes_to_the_same_result(recipe: str, tmp_path: Path) -> None:
    """Kill during the reward stage; re-run: SFT skipped, RM resumes, PPO runs; the artifacts
    equal those of a run that was never killed (same seed, CPU)."""
    import torch
    from safetensors.torch import load_file

    # a short SFT: this test is about exact resumption, not about how well the stages learn
    small = [a for a in SMALL if "n_sft" not in a and "num_train_epochs" not in a]
    common = [f"recipe={recipe}", *small, "data.toy.n_sft=300",
              "stages.sft.args.num_train_epochs=1", "stages.reward.args.max_steps=12",
              "stages.reward.args.save_strategy=steps", "stages.reward.args.save_steps=4",
              "stages.reward.args.logging_steps=2",
              "stages.ppo.args.total_episodes=64", "stages.ppo.args.eval_max_prompts=8",
              "stages.eval.args.max_prompts=8"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = alignlab(f"hydra.run.dir={killed}", *common,
                    env={"ALIGNLAB_KILL_AFTER_STEP": "reward:6"}, check=False)
    assert proc.returncode == 75, proc.stderr[-2000:]
    assert (killed / "sft/DONE").exists() and not (killed / "reward/DONE").exists()
    sft_mtime = (killed / "sft/model/model.safetensors").stat().st_mtime

    resumed = alignlab(f"hydra.run.dir={killed}", *common)
    assert "stage sft: already finished, skipping" in resumed.stdout
    assert "stage reward: reward (resuming)" in resumed.stdout
    assert (killed / "sft/model/model.safetensors").stat().st_mtime == sft_mtime
    steps = [e["step"] for e in json.loads((killed / "reward/metrics.json").read_text())
             ["log_history"] if "loss" in e]
    assert steps == sorted(set(steps)) and steps[-1] == 12

    alignlab(f"hydra.run.dir={clean}", *common, "recipe.stages=[sft,reward]")  # compared
    for stage in ("sft", "reward"):
        a = load_file(killed / stage / "model/model.safetensors")
        b = load_file(clean / stage / "model/model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), stage
    for stage in ("ppo", "eval"):
        assert (killed / stage / "DONE").exists()


def test_sweep_gets_a_frontier_report(sft_run: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    alignlab("-m", "method=dpo", "method.args.beta=0.05,0.5", f"model.path={sft_run}/model",
             "method.args.max_steps=8", "method.args.save_strategy=no", "report_to=none",
             f"hydra.sweep.dir={sweep}")
    for member in ("0", "1"):
        ev = json.loads((sweep / member / "eval.json").read_text())
        assert "kl" in ev and "judge" in ev
    report = (sweep / "report.md").read_text()
    assert "0.05" in report and "0.5" in report
    png = sweep / "frontier.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_command_rerenders_from_files(sft_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(sft_run, copy, ignore=shutil.ignore_patterns("model", "checkpoints"))
    for name in ("report.md", "report.html"):
        (copy / name).unlink(missing_ok=True)
    proc = alignlab("report", str(copy))
    assert (copy / "report.md").exists() and (copy / "report.html").exists()
    assert "report.md" in proc.stdout
    bad = alignlab("report", str(tmp_path / "nope"), check=False)
    assert bad.returncode == 2 and "alignlab: error:" in bad.stderr


def test_constitutional_recipe_end_to_end(sft_run: Path, tmp_path: Path) -> None:
    """cai -> SFT on revisions -> AI-judge labels on the new policy's samples -> DPO on them ->
    eval, each stage reading the previous one's output by name (SFT model taken as input)."""
    from datasets import load_from_disk

    out = tmp_path / "cai"
    # the SFT model stands in for the skills stage's critic/reviser/judge (wiring, not skill)
    proc = alignlab(f"hydra.run.dir={out}", "recipe=constitutional", "constitution=toy",
                    "from_stage=cai", f"inputs.sft={sft_run}", f"inputs.skills={sft_run}",
                    "report_to=none", "stages.cai.args.max_helpful_prompts=4",
                    "stages.judge.args.human_pairs=8",
                    "stages.cai.args.max_prompts=12", "stages.cai.args.max_new_tokens=24",
                    "stages.sft_cai.args.max_steps=6", "stages.sft_cai.args.save_strategy=no",
                    "stages.judge.args.max_prompts=16", "stages.judge.args.max_new_tokens=24",
                    "stages.dpo.args.max_steps=6", "stages.dpo.args.save_strategy=no",
                    "stages.eval.args.num_samples=1", "stages.eval.args.max_prompts=12")
    for stage in ("cai", "sft_cai", "judge", "dpo", "eval"):
        assert _done(out / stage)["fingerprint"], stage
    assert not (out / "sft").exists()
    revisions = load_from_disk(str(out / "cai/dataset"))
    # 12 red-team prompts + 4 helpfulness prompts (answered, kept, SFT only)
    assert len(revisions["train_sft"]) + len(revisions["train_prefs"]) == 12 + 4
    # SFT trained on the revisions, the judge sampled the new SFT policy, DPO used its labels
    sft_cai = (out / "sft_cai/config.yaml").read_text()
    assert str(out / "cai/dataset") in sft_cai and "format: cai" in sft_cai
    judge_cfg = (out / "judge/config.yaml").read_text()
    assert str(out / "sft_cai/model") in judge_cfg
    labels = load_from_disk(str(out / "judge/dataset"))
    assert labels["train"]["source"].count("human") == 8  # human helpfulness pairs mixed in
    assert set(labels["train"].filter(lambda r: r["source"] == "ai")["category"]) <= {
        "harmful", "borderline"}  # AI labels: harmlessness only
    assert all(0.5 < p <= 1.0 for p in labels["train"]["judge_prob"])
    assert str(sft_run) in judge_cfg  # the judge: the skills model (here: its stand-in)
    dpo_cfg = (out / "dpo/config.yaml").read_text()
    assert str(out / "judge/dataset") in dpo_cfg and str(out / "sft_cai/model") in dpo_cfg
    evaluation = json.loads((out / "eval/eval.json").read_text())
    assert evaluation["policy"].endswith("dpo/model")
    assert evaluation["win_rate"]["reference"] == f"{sft_run}/model"
    assert evaluation["kl"]["n"] == 12 and "judge" in evaluation
    # DPO on the AI labels changed the SL-CAI model it started from
    import torch
    from safetensors.torch import load_file

    before = load_file(out / "sft_cai/model/model.safetensors")
    after = load_file(out / "dpo/model/model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert "stage judge: judge" in proc.stdout and (out / "report.md").exists()


# What each shipped recipe runs, in order: stage -> (method, {config key: the stage it reads}).
# "model.path" etc. read a stage's model, "data.path" its dataset.
_INIT, _REF, _RM, _DATA = "model.path", "method.reference", "method.reward_model", "data.path"
_JUDGE = "method.args.judge_model"
RECIPES = {
    "dpo": {"sft": ("sft", {}), "dpo": ("dpo", {_INIT: "sft", _REF: "sft"}),
            "eval": ("eval", {_INIT: "dpo", _REF: "sft"}),
            "export": ("export", {_INIT: "dpo"})},
    "instructgpt": {"sft": ("sft", {}), "reward": ("reward", {_INIT: "sft"}),
                    "ppo": ("ppo", {_INIT: "sft", _REF: "sft", _RM: "reward"}),
                    "eval": ("eval", {_INIT: "ppo", _REF: "sft", _RM: "reward"})},
    "scale": {"sft": ("sft", {}), "dpo": ("dpo", {_INIT: "sft", _REF: "sft"}),
              "sft_medium": ("sft", {}),
              "eval_medium": ("eval", {_INIT: "sft_medium", _REF: "sft"}),
              "eval": ("eval", {_INIT: "dpo", _REF: "sft_medium"})},
    "constitutional": {"sft": ("sft", {}), "skills": ("sft", {_INIT: "sft"}),
                       "cai": ("cai", {_INIT: "skills"}),
                       "sft_cai": ("sft", {_INIT: "sft", _DATA: "cai"}),
                       "judge": ("judge", {_INIT: "sft_cai", _JUDGE: "sft"}),  # (overridden)
                       "dpo": ("dpo", {_INIT: "sft_cai", _REF: "sft_cai", _DATA: "judge"}),
                       "eval": ("eval", {_INIT: "dpo", _REF: "sft"})},
    "demo": {"sft": ("sft", {}), "dpo": ("dpo", {_INIT: "sft", _REF: "sft"}),
             "reward": ("reward", {_INIT: "sft"}),
             "ppo": ("ppo", {_INIT: "sft", _REF: "sft", _RM: "reward"}),
             "grpo": ("grpo", {_INIT: "sft", _REF: "sft"}),
             "skills": ("sft", {_INIT: "sft"}), "cai": ("cai", {_INIT: "skills"}),
             "sft_cai": ("sft", {_INIT: "sft", _DATA: "cai"}),
             "judge": ("judge", {_INIT: "sft_cai", _JUDGE: "skills"}),
             "dpo_cai": ("dpo", {_INIT: "sft_cai", _REF: "sft_cai", _DATA: "judge"}),
             **{f"eval_{arm}": ("eval", {_INIT: src, _REF: "sft"}) for arm, src in
                (("sft", "sft"), ("dpo", "dpo"), ("ppo", "ppo"), ("grpo", "grpo"),
                 ("cai", "dpo_cai"))}},
}
MAKES_MODEL = {"sft", "reward", "dpo", "kto", "grpo", "rloo", "ppo"}  # <stage>/model
MAKES_DATASET = {"cai", "judge"}  # <stage>/dataset


@pytest.mark.parametrize("recipe", ["demo", "scale", "constitutional", "instructgpt", "dpo"])
def test_every_recipe_composes_into_valid_stages(recipe: str, tmp_path: Path) -> None:
    """Each stage of each shipped recipe resolves its links and passes validation (cheap: no
    training), so a typo in a recipe file fails here rather than minutes into a run: the stages,
    their methods and what each reads (an earlier stage's output of the right kind)."""
    from omegaconf import OmegaConf

    from alignlab import cli, pipeline, validation

    extra = ["stages.judge.judge_model=sft"] if recipe == "constitutional" else []
    cfg = cli.compose([f"recipe={recipe}", f"run_dir={tmp_path}", *extra])
    outputs = {name: tmp_path / name for name in cfg.recipe.stages}
    for out in outputs.values():
        (out / "dataset").mkdir(parents=True)  # stand-ins for the outputs of earlier stages
    stages = {name: pipeline.stage_config(cfg, name, outputs) for name in cfg.recipe.stages}
    # the stand-ins hold no model: their paths are pending, as for a recipe not yet run
    pending = {str(p) for out in outputs.values() for p in (out, out / "dataset")}
    for stage in stages.values():
        validation.validate(stage, pending=pending)
    expected = RECIPES[recipe]
    assert list(cfg.recipe.stages) == list(expected)
    for position, (name, (method, reads)) in enumerate(expected.items()):
        stage = stages[name]
        assert stage.method.name == method and stage.run_dir == str(tmp_path / name), name
        for key in (_INIT, _REF, _RM, _DATA, _JUDGE):
            value = OmegaConf.select(stage, key, default=None)
            source = reads.get(key)
            if source is None:  # a stage's own start (a built-in model) or nothing
                assert value is None or str(tmp_path) not in str(value), (name, key, value)
                continue
            assert list(expected).index(source) < position, (name, key, source)  # ran first
            made = expected[source][0]
            if key == _DATA:
                assert made in MAKES_DATASET and value == str(tmp_path / source / "dataset")
            else:
                assert made in MAKES_MODEL and value == str(tmp_path / source), (name, key)
        if _RM in reads:
            assert expected[reads[_RM]][0] == "reward", name
    if recipe == "demo":
        assert cfg.constitution.name == "toy" and not cfg.quick_eval
        for arm in ("sft", "dpo", "ppo", "grpo", "cai"):
            assert stages[f"eval_{arm}"].method.reference == str(tmp_path / "sft")
        assert stages["ppo"].method.reward_model == str(tmp_path / "reward")
        assert list(stages["grpo"].method.reward_funcs) == ["toy_judge"]
        assert stages["judge"].model.path == str(tmp_path / "sft_cai")
        assert stages["sft_cai"].data.path == str(tmp_path / "cai" / "dataset")
        # the skilled helpful model critiques, revises and judges
        assert stages["cai"].model.path == str(tmp_path / "skills")
        assert stages["judge"].method.args.judge_model == str(tmp_path / "skills")
        assert stages["skills"].data.toy.n_skills > 0
        assert list(stages["judge"].method.args.human_categories) == ["helpful"]
    if recipe == "constitutional":  # a judge named by stage, like init/reference
        assert stages["judge"].method.args.judge_model == str(tmp_path / "sft")
        assert stages["judge"].model.path == str(tmp_path / "sft_cai")
    if recipe == "scale":
        medium = stages["sft_medium"].model
        assert medium.name == "llama-medium" and medium.path == "builtin:llama-medium"
        assert stages["eval"].model.path == str(tmp_path / "dpo")
        assert stages["eval"].method.reference == str(tmp_path / "sft_medium")
