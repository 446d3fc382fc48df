"""Quick evaluations a stage reports at its end: toy-judge score and reward-model accuracy."""

from __future__ import annotations

from dataclasses import dataclass, field
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


def reward_accuracy(model: Any, tokenizer: Any, pairs: Any) -> float:
    """Share of held-out pairs where the reward model scores ``chosen`` above ``rejected``."""
    def reply(column: str) -> list[str]:
        return [c[-1]["content"] for c in pairs[column]]

    chosen = reward_scores(model, tokenizer, pairs["prompt"], reply("chosen"))
    rejected = reward_scores(model, tokenizer, pairs["prompt"], reply("rejected"))
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / max(1, len(chosen))


@dataclass
class EvalArgs:
    """Settings of ``method=eval`` (``method.args.<name>``)."""

    num_samples: int = field(default=3, metadata={"help": "Samples per held-out prompt."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (0 = greedy)."})
    max_new_tokens: int = field(default=48, metadata={"help": "Longest response generated."})
    max_prompts: int | None = field(default=None, metadata={"help": "Cap on held-out prompts."})
    batch_size: int = field(default=64, metadata={"help": "Prompts per generate call."})
    judge: str = field(default="auto", metadata={
        "help": "Who decides wins: toy (the toy world's rule), reward (the reward model), or "
                "auto (toy on the toy world, else reward)."})
    num_examples: int = field(default=8, metadata={"help": "Samples shown in the report."})


def sequence_logprobs(model: Any, tokenizer: Any, prompts: list, responses: list[str],
                      batch_size: int = 32) -> list[float]:
    """Summed log-probability of each response (tokens after the prompt) under ``model``."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    out: list[float] = []
    for i in range(0, len(prompts), batch_size):
        ids, masks = [], []
        for p, r in zip(prompts[i:i + batch_size], responses[i:i + batch_size], strict=True):
            head = tokenizer.apply_chat_template(list(p), add_generation_prompt=True,
                                                 tokenize=True, return_dict=True)["input_ids"]
            tail = tokenizer(r + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            ids.append(head + tail)
            masks.append([0] * len(head) + [1] * len(tail))
        width = max(len(x) for x in ids)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device)
        attention = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids],
                                 device=device)
        target = torch.tensor([m + [0] * (width - len(m)) for m in masks], device=device)
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None])[..., 0]
        out += (logp * target[:, 1:]).sum(-1).cpu().tolist()
    return out


def reward_scores(model: Any, tokenizer: Any, prompts: list, responses: list[str],
                  batch_size: int = 64) -> list[float]:
    """Reward-model score of each (prompt, response)."""
    import torch

    texts = [tokenizer.apply_chat_template([*p, {"role": "assistant", "content": r}],
                                           tokenize=False)
             for p, r in zip(prompts, responses, strict=True)]
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    model.eval()
    out: list[float] = []
    try:
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(next(model.parameters()).device)
            with torch.no_grad():
                out += model(**enc).logits[:, 0].float().cpu().tolist()
    finally:
        tokenizer.padding_side = side
    return out
