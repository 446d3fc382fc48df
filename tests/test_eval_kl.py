"""The evaluation's KL to the reference against its closed form on a tiny model."""

from __future__ import annotations

import math
from typing import Any

import pytest

from alignlab import evaluation, generation, models

TEMPERATURE = 0.7
MAX_NEW = 2  # short enough to enumerate every response, long enough to cut some off
SUPPORT = [35, 36, 37, 38]  # "A".."D": with EOS, the only tokens the models can emit
PROMPTS = [[{"role": "user", "content": "Pick one."}], [{"role": "user", "content": "Again?"}]]


def _tiny_model(tokenizer: Any, seed: int) -> Any:
    """A one-layer llama whose next token is (effectively) one of SUPPORT or EOS.

    Its output layer has a bias of -30 elsewhere, so every response can be enumerated, and
    large weights, so the distribution depends on the context and differs between seeds.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=64, tie_word_embeddings=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None)
    model = LlamaForCausalLM(config).eval()
    head = torch.nn.Linear(16, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.6)
        head.bias.fill_(-30.0)
        head.bias[[*SUPPORT, tokenizer.eos_token_id]] = torch.randn(len(SUPPORT) + 1)
    model.lm_head = head
    return model


def _next_logp(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    return torch.log_softmax(logits / TEMPERATURE, -1)


def _exact_kl(policy: Any, reference: Any, tokenizer: Any) -> float:
    """KL(policy_T || reference_T) over responses of at most MAX_NEW (=2) tokens, averaged
    over PROMPTS: the first token's KL plus, after each non-EOS first token, the second's."""
    total = 0.0
    for prompt in PROMPTS:
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        head = tokenizer(text, add_special_tokens=False)["input_ids"]
        p, q = _next_logp(policy, head), _next_logp(reference, head)
        kl = float((p.exp() * (p - q)).sum())
        for first in SUPPORT:  # other tokens have probability ~e^-40: nothing to add
            p2, q2 = _next_logp(policy, [*head, first]), _next_logp(reference, [*head, first])
            kl += math.exp(float(p[first])) * float((p2.exp() * (p2 - q2)).sum())
        total += kl
    return total / len(PROMPTS)


@pytest.fixture(scope="module")
def tiny() -> dict[str, Any]:
    """The tokenizer, a policy, a reference far from it and one close to it (a perturbed copy:
    the regime of a fine-tuned policy, where a wrong estimator comes out negative)."""
    import copy

    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models.ASSETS / "llama-small")
    policy = _tiny_model(tokenizer, 0)
    close = copy.deepcopy(policy)
    torch.manual_seed(7)
    with torch.no_grad():
        close.lm_head.bias[[*SUPPORT, tokenizer.eos_token_id]] += 0.2 * torch.randn(5)
        close.lm_head.weight.add_(0.06 * torch.randn_like(close.lm_head.weight))
    return {"tokenizer": tokenizer, "policy": policy, "far": _tiny_model(tokenizer, 1),
            "close": close}


@pytest.mark.parametrize(("reference", "prune"), [("far", False), ("far", True),
                                                   ("close", True)])
def test_kl_matches_closed_form(tiny: dict[str, Any], reference: str, prune: bool) -> None:
    """Sampled ids scored at the sampling temperature: the estimate is within 4 standard
    errors of the exact KL, with either decoder; the same ids scored at T=1 are not (and for
    the close reference that figure is negative)."""
    tokenizer, policy, reference = tiny["tokenizer"], tiny["policy"], tiny[reference]
    exact = _exact_kl(policy, reference, tokenizer)
    assert exact > 0.005
    per_prompt = 400
    texts, ids = generation.generate(policy, tokenizer, PROMPTS, num_samples=per_prompt,
                                     temperature=TEMPERATURE, max_new_tokens=MAX_NEW, seed=3,
                                     batch_size=2, prune_finished=prune, return_ids=True)
    flat_ids = [x for xs in ids for x in xs]
    flat_prompts = [p for p in PROMPTS for _ in range(per_prompt)]
    eos = tokenizer.eos_token_id
    # Exactly what was drawn: EOS ends a response only when sampled, and a cut one has none.
    assert all(len(x) == MAX_NEW or (x and x[-1] == eos) for x in flat_ids)
    assert all(eos not in x[:-1] for x in flat_ids)
    assert any(x[-1] == eos for x in flat_ids) and any(x[-1] != eos for x in flat_ids)
    assert len(texts[0]) == per_prompt and all(set(x) <= {*SUPPORT, eos} for x in flat_ids)

    res = evaluation.kl_to_reference(policy, reference, tokenizer, flat_prompts, flat_ids,
                                     temperature=TEMPERATURE)
    assert res["n"] == 2 * per_prompt
    assert abs(res["kl"] - exact) < 4 * res["stderr"], (res, exact)
    assert abs(res["kl_k3"] - exact) < 4 * res["stderr_k3"], (res, exact)
    assert res["kl"] > 0 and f"T={TEMPERATURE:g}" in res["definition"]
    # The same samples scored at T=1 estimate something else: the test can tell.
    at_one = [evaluation.sequence_logprobs(m, tokenizer, flat_prompts, flat_ids)
              for m in (policy, reference)]
    wrong = sum(a - b for a, b in zip(*at_one, strict=True)) / len(flat_ids)
    if exact > 1:  # far apart: the temperature mismatch is many standard errors off
        assert abs(wrong - exact) > 4 * res["stderr"], (wrong, exact)
    else:  # close (a fine-tuned policy's regime): that figure is even negative
        assert wrong < 0 < res["kl"], (wrong, res["kl"])


def test_logprobs_do_not_depend_on_batching(tiny: dict[str, Any]) -> None:
    """Left padding and position ids: a response scores the same alone or in a batch."""
    tokenizer, policy = tiny["tokenizer"], tiny["policy"]
    prompts = [PROMPTS[0], [{"role": "user", "content": "A much longer question, padded?"}]]
    responses = [[SUPPORT[0], tokenizer.eos_token_id], [SUPPORT[1], SUPPORT[2]]]
    together = evaluation.sequence_logprobs(policy, tokenizer, prompts, responses,
                                            temperature=TEMPERATURE)
    alone = [evaluation.sequence_logprobs(policy, tokenizer, [p], [r], temperature=TEMPERATURE)[0]
             for p, r in zip(prompts, responses, strict=True)]
    assert together == pytest.approx(alone, abs=1e-4)
    text = tokenizer.apply_chat_template(prompts[0], tokenize=False, add_generation_prompt=True)
    head = tokenizer(text, add_special_tokens=False)["input_ids"]
    first = _next_logp(policy, head)[SUPPORT[0]]
    second = _next_logp(policy, [*head, SUPPORT[0]])[tokenizer.eos_token_id]
    assert alone[0] == pytest.approx(float(first + second), abs=1e-4)
