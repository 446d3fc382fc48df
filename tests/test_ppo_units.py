"""alignlab's PPO trainer pieces on tiny models, in-process (alignlab.ppo.trainer): fast."""

from __future__ import annotations

from pathlib import Path
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


def _full_ppo_env(seed: int = 0) -> tuple[trainer.PolicyAndValue, dict[str, Any]]:
    """Full fine-tuning setup on llama-small: policy, critic (+ its score head), reference
    (a copy of the policy) and no reward (scores 0)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from alignlab.models import build_builtin

    path = build_builtin("llama-small", seed)
    tok = AutoTokenizer.from_pretrained(path)
    policy = AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(seed)
    critic = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model = trainer.PolicyAndValue(policy, critic, trainer.value_head_of(critic), False).train()
    env = {"tokenizer": tok, "eos_ids": trainer.eos_token_ids(tok, policy),
           "reference": AutoModelForCausalLM.from_pretrained(path).eval(),
           "reward_model": None, "reward_funcs": []}
    return model, env


@pytest.mark.parametrize("from_generate", [False, True])
def test_bf16_rollout_matches_the_update(from_generate: bool) -> None:
    """Under bf16 the update runs in accelerator.autocast(); the rollout's log-probs, reference
    log-probs and values were computed in fp32, so before any weight changed the first ratio
    was off by the bf16 rounding (~1e-2 here). Computed under the same autocast, they equal
    the update's forward (the first minibatch's ratio is 1, approxkl 0)."""
    import functools

    from alignlab.ppo import core

    bf16 = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
    model, env = _full_ppo_env()
    # one prompt, so no padding columns: the update trims those, and in bf16 a different width
    # rounds differently (~1e-3), which no choice of precision could remove
    prompts = [[{"role": "user", "content": "what is 2+3?"}]] * 4
    args = PPOConfig(response_length=6, temperature=0.7, logprobs_from_generate=from_generate,
                     bf16=True)
    assert not trainer.logprobs_from_generate(args)  # cached steps round differently in bf16
    torch.manual_seed(0)
    batch = trainer.rollout(env, model, prompts, args, torch.device("cpu"), autocast=bf16)
    context, mask = int(batch["context"]), batch["resp_mask"]
    assert batch["mask"][:, :context].all()
    # The update's forward as in train(): one micro batch of all rows, trimmed to real columns.
    end = int(batch["mask"].any(0).nonzero()[-1]) + 1
    ids, width = batch["ids"][:, :end], end - context
    with torch.no_grad(), bf16():
        logits, values = model(ids, batch["mask"][:, :end], context)
        new = trainer.logprobs_of(logits, ids[:, context:], args.temperature)
        ref = env["reference"](input_ids=ids, attention_mask=batch["mask"][:, :end],
                               use_cache=False).logits[:, context - 1:-1]
        ref = trainer.logprobs_of(ref, ids[:, context:], args.temperature)
    real = mask[:, :width].bool()
    for got, want in ((batch["logprobs"], new), (batch["ref_logprobs"], ref),
                      (batch["values"], values)):
        torch.testing.assert_close(got[:, :width][real], want[real], atol=1e-4, rtol=0)
    old_lp, mask = batch["logprobs"][:, :width], mask[:, :width]
    _, stats = core.policy_loss(new, old_lp, torch.ones_like(new), mask, 0.2)
    assert stats["ratio"].item() == pytest.approx(1.0, abs=1e-4)
    assert stats["approxkl"].item() == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("lora", [False, True])
def test_ppo_starts_from_a_lora_sft_adapter(lora: bool, tmp_path: Path) -> None:
    """model.path=<LoRA SFT run>/model (an adapter folder) loaded the base and PPO's new LoRA
    replaced the adapter: policy and reference started from the base, not the SFT model.
    Loaded merged, both equal the SFT model (base + adapter). The adapter's base is a built-in
    model's cache folder that is gone: it is rebuilt."""
    import json

    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab import cli
    from alignlab.models import build_builtin

    base_path = build_builtin("llama-small", 0)
    torch.manual_seed(5)  # init_lora_weights=False: random B, so the adapter changes the model
    sft = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path),
                         LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "down_proj"],
                                    init_lora_weights=False, task_type="CAUSAL_LM"))
    folder = tmp_path / "sft" / "model"
    sft.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(base_path).save_pretrained(str(folder))
    adapter_cfg = json.loads((folder / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(base_path)
    adapter_cfg["base_model_name_or_path"] = str(tmp_path / "old-cache" / base_path.name)
    (folder / "adapter_config.json").write_text(json.dumps(adapter_cfg))

    cfg = cli.compose(["method=ppo", f"model.path={folder}", "method.reward_funcs=[toy_judge]",
                       f"model.lora={str(lora).lower()}", f"run_dir={tmp_path / 'ppo'}"])
    args = PPOConfig(response_length=5, logprobs_from_generate=False)
    env = trainer.build_models(cfg, args)
    env["eos_ids"], env["reward_funcs"] = trainer.eos_token_ids(env["tokenizer"], sft), []
    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "what is 2+2?"}]]
    batch = trainer.rollout(env, env["model"], prompts, args, torch.device("cpu"))

    ids, mask, context = batch["ids"], batch["mask"], int(batch["context"])
    real = batch["resp_mask"].bool()

    def logprobs(model: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask,
                           position_ids=trainer.position_ids(mask)).logits[:, context - 1:-1]
        return trainer.logprobs_of(logits, ids[:, context:], args.temperature)[real]

    sft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path),
                                          str(folder)).eval()
    want = logprobs(sft_model)
    bare = logprobs(AutoModelForCausalLM.from_pretrained(base_path).eval())
    assert (want - bare).abs().max() > 1e-2  # the adapter matters
    torch.testing.assert_close(batch["logprobs"][real], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch["ref_logprobs"][real], want, atol=1e-5, rtol=1e-5)
