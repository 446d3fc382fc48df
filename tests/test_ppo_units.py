"""alignlab's PPO trainer pieces on tiny models, in-process (alignlab.ppo.trainer): fast."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from alignlab.ppo import trainer
from alignlab.ppo.config import PPOConfig


@pytest.mark.parametrize("lora", [False, True])
def test_eval_before_is_the_starting_policy(lora: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """``eval.before`` measured env["reference"], which is method.reference when that is set
    (another model): it must be the policy PPO starts from."""
    from alignlab import evaluation

    seen: dict[str, Any] = {}

    def fake_evaluate(cfg: Any, policy: Any, tokenizer: Any, args: Any, **kw: Any) -> tuple:
        seen["policy"], seen["reference"] = policy, kw.get("reference")
        return {}, []

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    policy, reference = nn.Linear(2, 2), nn.Linear(2, 2)
    model = trainer.PolicyAndValue(policy, None if lora else nn.Linear(2, 2), nn.Linear(2, 1),
                                   lora)
    env = {"reference": None if lora else reference, "tokenizer": None, "reward_model": None,
           "reward_tokenizer": None}
    trainer.evaluate(SimpleNamespace(), env, model, PPOConfig(), before=True)
    assert seen["policy"] is policy and seen["reference"] is None
    trainer.evaluate(SimpleNamespace(), env, model, PPOConfig(), before=False)
    assert seen["policy"] is policy
    if lora:  # the reference is the base with the adapters off
        assert isinstance(seen["reference"], trainer.AdaptersOff)
    else:
        assert seen["reference"] is reference
    assert model.training  # back in training mode after either


def _lora_policy_and_value(seed: int = 0) -> trainer.PolicyAndValue:
    """llama-small with the two PPO adapters, their B weights random (not 0) so that the
    adapters differ, and a random value head."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from alignlab.models import build_builtin

    base = AutoModelForCausalLM.from_pretrained(build_builtin("llama-small", 0))
    torch.manual_seed(seed)  # after the load: building the built-in model draws from the RNG
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    policy = get_peft_model(base, cfg, adapter_name=trainer.POLICY)
    policy.add_adapter(trainer.CRITIC, cfg)
    for name, p in policy.named_parameters():
        p.requires_grad_("lora_" in name)
    head = nn.Linear(base.config.hidden_size, 1)
    return trainer.PolicyAndValue(policy, None, head, lora=True).train()


def _ppo_like_grads(model: trainer.PolicyAndValue) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 700, (2, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # a left-padded row
    logits, values = model(ids, mask, 5)
    loss = trainer.logprobs_of(logits, ids[:, 5:], 0.7).mean() + (values ** 2).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def test_lora_gradient_checkpointing_keeps_each_adapters_gradients() -> None:
    """Checkpointing recomputes the critic's layers in backward(), after lora_adapter(CRITIC)
    has been left: they were recomputed with the policy adapter, so the critic adapter got
    wrong gradients. With and without checkpointing, every gradient must be the same."""
    plain = _ppo_like_grads(_lora_policy_and_value())
    model = _lora_policy_and_value()
    trainer.enable_gradient_checkpointing(model.policy)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.policy.modules())
    checkpointed = _ppo_like_grads(model)
    assert plain.keys() == checkpointed.keys()
    for adapter in (trainer.POLICY, trainer.CRITIC):
        names = [n for n in plain if f".{adapter}." in n]
        assert names and all(plain[n].abs().sum() > 0 for n in names), adapter
    assert any(n.startswith("value_head") for n in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)
