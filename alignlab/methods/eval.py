"""Evaluation: sample a policy on held-out prompts and measure it against a reference.

Reports the data's rule per category (the toy judge, on the toy world), reward-model score and
pair accuracy, win rate vs the reference (ties count half), each with a 95 % interval clustered
by prompt and its n, sequence KL(policy || reference) of the policy's samples at the sampling
temperature, and response length. Writes ``eval.json`` and ``samples.jsonl``. The settings, the
judge and the held-out data are checked before any model is loaded.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from alignlab import evaluation, models, runs

log = logging.getLogger("alignlab")

ARGS_CLASS = "alignlab.evaluation:EvalArgs"
DATA_KIND = "prompts"


def run(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Evaluate ``model.path`` (vs ``method.reference``, scored by ``method.reward_model``)."""
    started = time.time()
    args = evaluation.EvalArgs(**cfg.method.args)
    inputs = evaluation.prepare(cfg, args, reward_model=bool(cfg.method.reward_model))
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
    if result.win_rate is not None:
        result.win_rate["reference"] = str(cfg.method.reference)
    if runs.is_main_process():
        evaluation.write(run_dir, result, samples)
    return {"method": "eval", "eval": result.to_dict(), **result.pick("judge"),
            "wall_seconds": round(time.time() - started, 2)}
