"""Evaluation: sample a policy on held-out prompts and measure it against a reference.

Reports the toy judge per category (on the toy world), reward-model score and pair accuracy,
win rate vs the reference (ties count half, 95 % Wilson CI), sequence KL(policy || reference)
on the policy's own samples, and response length. Writes ``eval.json`` and ``samples.jsonl``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARGS_CLASS = "alignlab.evaluation:EvalArgs"
DATA_KIND = "prompts"


def run(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Evaluate ``model.path`` (vs ``method.reference``, scored by ``method.reward_model``)."""
    from alignlab import evaluation, models, runs

    args = evaluation.EvalArgs(**cfg.method.args)
    path = models.resolve_path(cfg.model, cfg.seed)
    tokenizer = models.load_tokenizer(cfg.model, path)
    policy = models.load_model(cfg.model, path, cfg.hardware)
    reference = rm = rm_tok = None
    if cfg.method.reference:
        reference = models.load_model(cfg.model, cfg.method.reference, cfg.hardware)
    if cfg.method.reward_model:
        rm_tok = models.load_tokenizer(cfg.model, cfg.method.reward_model)
        rm = models.load_model(cfg.model, cfg.method.reward_model, cfg.hardware, kind="reward")
    result, samples = evaluation.evaluate(cfg, policy, tokenizer, args, reference=reference,
                                          sample_reference=True, reward_model=rm,
                                          reward_tokenizer=rm_tok)
    result["policy"] = str(cfg.model.path)
    if "win_rate" in result:
        result["win_rate"]["reference"] = str(cfg.method.reference)
    if runs.is_main_process():
        evaluation.write(run_dir, result, samples)
    return {"method": "eval", "eval": result,
            **({"judge": result["judge"]} if "judge" in result else {})}
