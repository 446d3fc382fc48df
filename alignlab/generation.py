"""Batched sampling from a local transformers model (left padding, chat template, stop at EOS)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def generate(model: Any, tokenizer: Any, prompts: Sequence[Sequence[dict[str, str]]], *,
             num_samples: int = 1, temperature: float = 0.7, max_new_tokens: int = 32,
             batch_size: int = 64, seed: int = 0, progress: bool = False) -> list[list[str]]:
    """``num_samples`` responses for each conversation in ``prompts`` (greedy at temperature 0).

    Prompts are sorted by length so each batch pads little, and restored to input order.
    """
    import torch
    from tqdm.auto import tqdm

    texts = [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True)
             for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[list[str]] = [[] for _ in texts]
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="generate", disable=not progress):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            # Seed per batch so results do not depend on what ran before.
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            with torch.no_grad():
                ids = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None, top_k=0, top_p=1.0,
                    num_return_sequences=num_samples, pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id)
            new = ids[:, enc["input_ids"].shape[1]:]
            decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
            for j, i in enumerate(idx):
                out[i] = [d.strip() for d in decoded[j * num_samples:(j + 1) * num_samples]]
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return out
