"""Sampling is plain softmax(logits / T) even when a model's generation_config sets processors.

Many instruct checkpoints ship ``repetition_penalty``, ``top_k``, ``top_p``, ``min_p``,
``no_repeat_ngram_size`` in ``generation_config.json``; ``generate`` merges those into the config
it is given, while PPO's ratios and KL, and evaluation's KL, assume plain temperature sampling.
"""

from __future__ import annotations

import pytest
import torch

from alignlab import generation

PROCESSORS = {"repetition_penalty": 1.8, "top_k": 3, "top_p": 0.5, "min_p": 0.2,
              "no_repeat_ngram_size": 2, "typical_p": 0.6}


@pytest.fixture(scope="module")
def model_and_tok() -> tuple[object, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab.models import build_builtin

    path = build_builtin("llama-small", 3)
    model = AutoModelForCausalLM.from_pretrained(path)
    for k, v in PROCESSORS.items():
        setattr(model.generation_config, k, v)
    return model, AutoTokenizer.from_pretrained(path)


def _processed_vs_raw(model: object, tok: object, temperature: float) -> tuple[list, list]:
    from transformers import GenerationConfig

    ids = tok(["<|im_start|>user\nhi"], return_tensors="pt", add_special_tokens=False)
    cfg = GenerationConfig(**generation.NEUTRAL_SAMPLING, max_new_tokens=6, do_sample=True,
                           temperature=temperature, return_dict_in_generate=True,
                           output_logits=True, output_scores=True,
                           pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with generation.plain_sampling(model):
        out = model.generate(**ids, generation_config=cfg)
    return list(out.scores), list(out.logits)


def test_processors_of_the_model_are_neutralised(model_and_tok: tuple) -> None:
    model, tok = model_and_tok
    scores, logits = _processed_vs_raw(model, tok, 0.7)
    assert len(scores) >= 2
    for s, raw in zip(scores, logits, strict=True):
        # the only processing left: the temperature (no -inf from top-k/top-p/min-p/ngrams)
        assert torch.isfinite(s).all()
        torch.testing.assert_close(s, raw / 0.7)
    # the model's own settings are back afterwards
    assert model.generation_config.repetition_penalty == 1.8
    assert model.generation_config.top_k == 3


def test_without_the_guard_the_model_config_would_leak(model_and_tok: tuple) -> None:
    """The defect itself: a config with the neutral values left unset picks up the model's."""
    from transformers import GenerationConfig

    model, tok = model_and_tok
    ids = tok(["<|im_start|>user\nhi"], return_tensors="pt", add_special_tokens=False)
    cfg = GenerationConfig(max_new_tokens=3, do_sample=True, temperature=0.7, top_k=0,
                           top_p=1.0, return_dict_in_generate=True, output_logits=True,
                           output_scores=True, pad_token_id=tok.pad_token_id)
    out = model.generate(**ids, generation_config=cfg)
    assert not torch.isfinite(out.scores[0]).all()  # min_p / typical_p masked tokens out


def test_alignlab_generate_samples_plainly(model_and_tok: tuple, monkeypatch) -> None:
    """``generation.generate`` (evaluation, CAI, judge) passes a neutral config through."""
    model, tok = model_and_tok
    seen = {}
    real = type(model).generate

    def spy(self, *a, **kw):
        kw.update(output_scores=True, output_logits=True, return_dict_in_generate=True)
        out = real(self, *a, **kw)
        seen["scores"], seen["logits"] = out.scores, out.logits
        return out.sequences

    monkeypatch.setattr(type(model), "generate", spy)
    generation.generate(model, tok, [[{"role": "user", "content": "hi"}]], temperature=0.5,
                        max_new_tokens=4)
    for s, raw in zip(seen["scores"], seen["logits"], strict=True):
        torch.testing.assert_close(s, raw / 0.5)


def test_ppo_rollout_samples_plainly(model_and_tok: tuple, monkeypatch) -> None:
    """A PPO rollout on a model whose generation_config sets repetition_penalty, top_k, ...:
    generate samples from exactly softmax(logits / T), and the rollout's log-probs (taken from
    generate's logits) are a fresh forward's log_softmax(logits / T) at the sampled tokens."""
    from transformers import AutoModelForSequenceClassification

    from alignlab.models import build_builtin
    from alignlab.ppo import networks, trainer
    from alignlab.ppo.config import PPOConfig

    model, tok = model_and_tok
    seen: list[tuple] = []
    real = type(model).generate

    def spy(self, *a, **kw):
        out = real(self, *a, **kw, output_scores=True)
        seen.append((out.scores, out.logits))
        return out

    monkeypatch.setattr(type(model), "generate", spy)
    critic = AutoModelForSequenceClassification.from_pretrained(build_builtin("llama-small", 3),
                                                                num_labels=1)
    policy = networks.PolicyAndValue(model, critic, networks.value_head_of(critic), lora=False)
    nets = networks.PPOModels(model=policy, reference=model, tokenizer=tok,
                              eos_ids=networks.eos_token_ids(tok, model))
    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "what is 2+2?"}]]
    args = PPOConfig(response_length=6, temperature=0.7, logprobs_from_generate=True)
    torch.manual_seed(0)
    batch = trainer.rollout(nets, policy, prompts, args, torch.device("cpu"))
    assert model.generation_config.repetition_penalty == 1.8  # restored afterwards
    assert model.generation_config.top_k == 3
    (scores, logits), = seen
    for s, raw in zip(scores, logits, strict=True):  # nothing but the temperature applied
        assert torch.isfinite(s).all()
        torch.testing.assert_close(s, raw / 0.7)
    ids, mask, context = batch.query_responses, batch.attention_mask, batch.context
    with torch.no_grad():
        fresh = model(input_ids=ids, attention_mask=mask, position_ids=networks.position_ids(mask),
                      use_cache=False).logits[:, context - 1:-1]
    expected = torch.log_softmax(fresh / 0.7, -1).gather(-1, ids[:, context:, None])[..., 0]
    real_tokens = batch.response_mask.bool()
    assert real_tokens.sum() >= 4
    torch.testing.assert_close(batch.logprobs[real_tokens], expected[real_tokens],
                               atol=1e-5, rtol=1e-5)
