"""Evaluation: sample a policy on held-out prompts and measure it against a reference.

Reports the toy judge per category (on the toy world), reward-model score and pair accuracy,
win rate vs the reference (ties count half, 95 % Wilson CI), sequence KL(policy || reference)
on the policy's own samples, and response length. Writes ``eval.json`` and ``samples.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ARGS_CLASS = "alignlab.evaluation:EvalArgs"
DATA_KIND = "prompts"


def run(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Evaluate ``model.path`` (vs ``method.reference``, scored by ``method.reward_model``)."""
    from alignlab import data, evaluation, models, runs, stats
    from alignlab.data import toy
    from alignlab.generation import generate

    args = evaluation.EvalArgs(**cfg.method.args)
    toy_world = cfg.data.format == "toy"
    judge = args.judge if args.judge != "auto" else ("toy" if toy_world else "reward")
    if judge == "reward" and not cfg.method.reward_model:
        from alignlab.errors import AlignlabError

        raise AlignlabError("method=eval needs a judge: on non-toy data set "
                            "method.reward_model=<reward run>/model (or method.args.judge=toy "
                            "on data=toy).")
    prompts_ds = data.load(cfg.data, "prompts", "test", keep_extra=True)
    if args.max_prompts:
        prompts_ds = prompts_ds.select(range(min(args.max_prompts, len(prompts_ds))))
    prompts = list(prompts_ds["prompt"])

    def sample(model: Any, tok: Any) -> list[str]:
        out = generate(model, tok, prompts, num_samples=args.num_samples,
                       temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                       batch_size=args.batch_size, seed=cfg.seed, progress=True)
        return [r for rs in out for r in rs]

    flat_prompts = [p for p in prompts for _ in range(args.num_samples)]
    path = models.resolve_path(cfg.model, cfg.seed)
    tok = models.load_tokenizer(cfg.model, path)
    policy = models.load_model(cfg.model, path, cfg.hardware)
    responses = sample(policy, tok)
    result: dict[str, Any] = {"policy": str(cfg.model.path), "n_prompts": len(prompts),
                              "samples_per_prompt": args.num_samples,
                              "temperature": args.temperature}
    lengths = [len(tok(r, add_special_tokens=False)["input_ids"]) for r in responses]
    result["length"] = {"mean": sum(lengths) / max(1, len(lengths))}

    scores: dict[str, list[float]] = {}
    if toy_world:
        items = [toy.judge(p, r) for p, r in zip(flat_prompts, responses, strict=True)]
        per_cat = toy.score(flat_prompts, responses)["per_category"]
        result["judge"] = {**stats.mean_ci(items), "per_category": per_cat}
        result["judge"]["score"] = result["judge"]["mean"]
        scores["toy"] = items
    rm = None
    if cfg.method.reward_model:
        rm_path = cfg.method.reward_model
        rm_tok = models.load_tokenizer(cfg.model, rm_path)
        rm = models.load_model(cfg.model, rm_path, cfg.hardware, kind="reward")
        rewards = evaluation.reward_scores(rm, rm_tok, flat_prompts, responses)
        pairs = data.load(cfg.data, "pairs", "test")
        result["reward"] = {**stats.mean_ci(rewards),
                            "accuracy": evaluation.reward_accuracy(rm, rm_tok, pairs)}
        scores["reward"] = rewards

    ref_responses: list[str] | None = None
    if cfg.method.reference:
        ref = models.load_model(cfg.model, cfg.method.reference, cfg.hardware)
        ref_tok = models.load_tokenizer(cfg.model, cfg.method.reference)
        ref_responses = sample(ref, ref_tok)
        if judge == "toy":
            ref_scores = [toy.judge(p, r) for p, r in zip(flat_prompts, ref_responses,
                                                          strict=True)]
        else:
            ref_scores = evaluation.reward_scores(rm, rm_tok, flat_prompts, ref_responses)
        outcomes = stats.outcomes_from_scores(scores[judge], ref_scores)
        result["win_rate"] = {**stats.win_rate(outcomes), "judge": judge,
                              "reference": str(cfg.method.reference)}
        logp = evaluation.sequence_logprobs(policy, tok, flat_prompts, responses)
        logq = evaluation.sequence_logprobs(ref, tok, flat_prompts, responses)
        result["kl"] = stats.sequence_kl(logp, logq)

    if runs.is_main_process():
        runs.write_json(run_dir / "eval.json", result)
        categories = prompts_ds["category"] if "category" in prompts_ds.column_names else None
        lines = []
        for i, (p, r) in enumerate(zip(flat_prompts, responses, strict=True)):
            lines.append(json.dumps({
                "prompt": p[-1]["content"], "response": r,
                "reference_response": ref_responses[i] if ref_responses else None,
                "score": scores[judge][i] if judge in scores else None,
                "category": categories[i // args.num_samples] if categories else None}))
        runs.atomic_write(run_dir / "samples.jsonl", "\n".join(lines) + "\n")
    return {"method": "eval", "eval": result,
            **({"judge": result["judge"]} if "judge" in result else {})}
