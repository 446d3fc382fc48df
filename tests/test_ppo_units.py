"""alignlab's PPO trainer pieces on tiny models, in-process (alignlab.ppo.trainer): fast."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
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
