"""Quick evaluations a stage reports at its end: toy-judge score and reward-model accuracy."""

from __future__ import annotations

from typing import Any


def toy_judge(model: Any, tokenizer: Any, data_cfg: Any, *, samples: int = 3,
              temperature: float = 0.7, seed: int = 0) -> dict[str, Any]:
    """Rule-judge score of sampled responses on the toy world's held-out prompts.

    Sampling (T=0.7, several samples per prompt) rather than greedy decoding, because greedy
    takes the majority answer and hides how mixed the policy still is.
    """
    from alignlab.data import load, toy
    from alignlab.generation import generate

    prompts = load(data_cfg, "prompts", "test")["prompt"]
    responses = generate(model, tokenizer, prompts, num_samples=samples,
                         temperature=temperature, seed=seed)
    flat_p = [p for p, rs in zip(prompts, responses, strict=True) for _ in rs]
    flat_r = [r for rs in responses for r in rs]
    result = toy.score(flat_p, flat_r)
    return {"score": result["score"], "n": result["n"], "per_category": result["per_category"],
            "samples": samples, "temperature": temperature}


def reward_accuracy(model: Any, tokenizer: Any, pairs: Any, batch_size: int = 64) -> float:
    """Share of held-out pairs where the reward model scores ``chosen`` above ``rejected``."""
    import torch

    def scores(column: str) -> torch.Tensor:
        texts = [tokenizer.apply_chat_template(list(p) + list(c), tokenize=False)
                 for p, c in zip(pairs["prompt"], pairs[column], strict=True)]
        out = []
        side = tokenizer.padding_side
        tokenizer.padding_side = "right"
        model.eval()
        try:
            for i in range(0, len(texts), batch_size):
                enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(next(model.parameters()).device)
                with torch.no_grad():
                    out.append(model(**enc).logits[:, 0].float().cpu())
        finally:
            tokenizer.padding_side = side
        return torch.cat(out)

    return float((scores("chosen") > scores("rejected")).float().mean())
