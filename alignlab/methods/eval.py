"""Evaluation: sample a policy on held-out prompts and measure it against a baseline.

Reports the data's rule per category (the toy judge, on the toy world), reward-model score and
pair accuracy, win rate vs the baseline (ties count half; decided by the rule, the reward model
or an LLM judge asked in both orders, with position consistency and a length-controlled win
rate), each with a 95 % interval clustered by prompt and its n, sequence KL(policy ||
reference) of the policy's samples at the sampling temperature, and response length. With
``task=pairs`` it scores the data's labelled pairs instead (a reward-model benchmark: accuracy
per category and calibration). Writes ``eval.json`` and ``samples.jsonl``. The settings, the
judge and the held-out data are checked before any model is loaded.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path
from typing import Any

from alignlab import console, evaluation, models, runs
from alignlab.methods.spec import Method
from alignlab.results import Interval

log = logging.getLogger("alignlab")

ARGS_CLASS = "alignlab.evaluation:EvalArgs"
DATA_KIND = "prompts"


def run(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Evaluate ``model.path`` (vs ``method.reference``, scored by ``method.reward_model``)."""
    started = time.time()
    args = evaluation.EvalArgs(**cfg.method.args)
    inputs = evaluation.prepare(cfg, args, reward_model=bool(cfg.method.reward_model))
    cache = Path(args.judge_cache).expanduser() if args.judge_cache else run_dir / "judgements"
    if args.task == "pairs":
        return _pairs(cfg, args, inputs, run_dir, cache, started)
    log.info("eval: %d held-out prompts, judge %s; loading the models", len(inputs.prompts),
             inputs.scorer)
    path = models.resolve_path(cfg.model, cfg.seed)
    tokenizer = models.load_tokenizer(cfg.model, path)
    policy = models.load_model(cfg.model, path, cfg.hardware)
    evaluation.fit_prompts(inputs, policy, tokenizer, args.max_new_tokens).check(
        "held-out prompts", float(cfg.data.max_dropped), "Lower method.args.max_new_tokens, or "
        "evaluate a model with a longer context")  # before anything is sampled
    reference = rm = rm_tok = None
    if cfg.method.reference:
        reference = models.load_model(cfg.model, cfg.method.reference, cfg.hardware)
    if cfg.method.reward_model:
        rm_tok = models.load_tokenizer(cfg.model, cfg.method.reward_model)
        rm = models.load_model(cfg.model, cfg.method.reward_model, cfg.hardware, kind="reward")
    result, samples = evaluation.evaluate(cfg, policy, tokenizer, args, reference=reference,
                                          sample_reference=True, reward_model=rm,
                                          reward_tokenizer=rm_tok, inputs=inputs)
    result.policy = str(cfg.model.path)
    if inputs.scorer == evaluation.LLM:
        del policy, reference, rm  # the answers are sampled: make room for the judge
        gc.collect()
        judge, book, judge_id = evaluation.load_judge(cfg, args)
        try:
            if samples and samples[0]["reference_response"] is not None:
                evaluation.judge_answers(cfg, args, inputs, result, samples, judge, book,
                                         judge_id, cache)
            if result.safety is None:  # the data's rule, where there is one, is exact
                evaluation.judge_refusals(cfg, args, inputs, result, samples, judge, judge_id,
                                          cache)
        finally:
            judge.close()
    if result.win_rate is not None and result.win_rate.get("versus") == "reference":
        result.win_rate["reference"] = str(cfg.method.reference)
    if runs.is_main_process():
        evaluation.write(run_dir, result, samples)
    return {"method": "eval", "eval": result.to_dict(), **result.pick("judge"),
            "wall_seconds": round(time.time() - started, 2)}


def _pairs(cfg: Any, args: Any, inputs: Any, run_dir: Path, cache: Path,
           started: float) -> dict[str, Any]:
    """``task=pairs``: the reward model's or the LLM judge's accuracy on labelled pairs."""
    log.info("eval: %d labelled pairs (%s split), scored by %s", len(inputs.pairs), args.split,
             inputs.scorer)
    if inputs.scorer == evaluation.REWARD:
        rm_tok = models.load_tokenizer(cfg.model, cfg.method.reward_model)
        rm = models.load_model(cfg.model, cfg.method.reward_model, cfg.hardware, kind="reward")
        section, rows = evaluation.pair_benchmark(cfg, args, inputs, reward_model=rm,
                                                  reward_tokenizer=rm_tok)
        section["reward_model"] = str(cfg.method.reward_model)
    else:
        judge, book, judge_id = evaluation.load_judge(cfg, args)
        try:
            section, rows = evaluation.pair_benchmark(cfg, args, inputs, judge=judge, book=book,
                                                      judge_id=judge_id, cache=cache)
        finally:
            judge.close()
    result = evaluation.EvalResult(n_prompts=len(inputs.pairs), samples_per_prompt=1,
                                   temperature=0.0, length={}, pairs=section)
    if runs.is_main_process():
        runs.write_json(run_dir / "eval.json", result.to_dict())
        runs.atomic_write(run_dir / "samples.jsonl",
                          "".join(json.dumps(r) + "\n" for r in rows))
    acc = Interval.read(section, ("accuracy",))
    assert acc is not None
    console.note(f"[alignlab] pair accuracy {acc.text('.1%')} (n {acc.n}); calibration error "
                 f"{section['calibration']['ece']:.3f}")
    return {"method": "eval", "eval": result.to_dict(),
            "wall_seconds": round(time.time() - started, 2)}


# The headline is the judge's score itself (no start -> trained change: nothing trained).
SPEC = Method(name="eval", args_class=ARGS_CLASS, data_kind=DATA_KIND, stage=run,
              check_args=evaluation.check_args, shows_change=False, reads_reference=True)
