"""alignlab's PPO trainer pieces on tiny models, in-process (alignlab.ppo.trainer): fast."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from alignlab.ppo import checkpoints, core, networks, trainer
from alignlab.ppo.config import PPOConfig


@pytest.mark.parametrize("lora", [False, True])
def test_eval_before_is_the_starting_policy(lora: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """``eval.before`` measured the reference model, which is method.reference when that is set
    (another model): it must be the policy PPO starts from."""
    from alignlab import evaluation

    seen: dict[str, Any] = {}

    def fake_evaluate(cfg: Any, policy: Any, tokenizer: Any, args: Any, **kw: Any) -> tuple:
        seen["policy"], seen["reference"] = policy, kw.get("reference")
        return {}, []

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    policy, reference = nn.Linear(2, 2), nn.Linear(2, 2)
    model = networks.PolicyAndValue(policy, None if lora else nn.Linear(2, 2), nn.Linear(2, 1),
                                   lora)
    nets = networks.PPOModels(model=model, reference=None if lora else reference, tokenizer=None)
    trainer.evaluate(SimpleNamespace(), nets, model, PPOConfig(), before=True)
    assert seen["policy"] is policy and seen["reference"] is None
    trainer.evaluate(SimpleNamespace(), nets, model, PPOConfig(), before=False)
    assert seen["policy"] is policy
    if lora:  # the reference is the base with the adapters off
        assert isinstance(seen["reference"], networks.AdaptersOff)
    else:
        assert seen["reference"] is reference
    assert model.training  # back in training mode after either


def _lora_policy_and_value(seed: int = 0) -> networks.PolicyAndValue:
    """llama-small with the two PPO adapters, their B weights random (not 0) so that the
    adapters differ, and a random value head."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from alignlab.models import build_builtin

    base = AutoModelForCausalLM.from_pretrained(build_builtin("llama-small", 0))
    torch.manual_seed(seed)  # after the load: building the built-in model draws from the RNG
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    policy = get_peft_model(base, cfg, adapter_name=networks.POLICY)
    policy.add_adapter(networks.CRITIC, cfg)
    for name, p in policy.named_parameters():
        p.requires_grad_("lora_" in name)
    head = nn.Linear(base.config.hidden_size, 1)
    return networks.PolicyAndValue(policy, None, head, lora=True).train()


def _ppo_like_grads(model: networks.PolicyAndValue) -> dict[str, torch.Tensor]:
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
    networks.enable_gradient_checkpointing(model.policy)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.policy.modules())
    checkpointed = _ppo_like_grads(model)
    assert plain.keys() == checkpointed.keys()
    for adapter in (networks.POLICY, networks.CRITIC):
        names = [n for n in plain if f".{adapter}." in n]
        assert names and all(plain[n].abs().sum() > 0 for n in names), adapter
    assert any(n.startswith("value_head") for n in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


def _full_ppo_nets(seed: int = 0) -> tuple[networks.PolicyAndValue, networks.PPOModels]:
    """Full fine-tuning setup on llama-small: policy, critic (+ its score head), reference
    (a copy of the policy) and no reward (scores 0)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from alignlab.models import build_builtin

    path = build_builtin("llama-small", seed)
    tok = AutoTokenizer.from_pretrained(path)
    policy = AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(seed)
    critic = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model = networks.PolicyAndValue(policy, critic, networks.value_head_of(critic), False).train()
    nets = networks.PPOModels(model=model, tokenizer=tok,
                              eos_ids=networks.eos_token_ids(tok, policy),
                              reference=AutoModelForCausalLM.from_pretrained(path).eval())
    return model, nets


@pytest.mark.parametrize("from_generate", [False, True])
def test_bf16_rollout_matches_the_update(from_generate: bool) -> None:
    """Under bf16 the update runs in accelerator.autocast(); the rollout's log-probs, reference
    log-probs and values were computed in fp32, so before any weight changed the first ratio
    was off by the bf16 rounding (~1e-2 here). Computed under the same autocast, they equal
    the update's forward (the first minibatch's ratio is 1, approxkl 0)."""
    import functools

    bf16 = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
    model, nets = _full_ppo_nets()
    # one prompt, so no padding columns: the update trims those, and in bf16 a different width
    # rounds differently (~1e-3), which no choice of precision could remove
    prompts = [[{"role": "user", "content": "what is 2+3?"}]] * 4
    args = PPOConfig(response_length=6, temperature=0.7, logprobs_from_generate=from_generate,
                     bf16=True)
    assert not trainer.logprobs_from_generate(args)  # cached steps round differently in bf16
    torch.manual_seed(0)
    batch = trainer.rollout(nets, model, prompts, args, torch.device("cpu"), autocast=bf16)
    context, mask = batch.context, batch.response_mask
    assert batch.attention_mask[:, :context].all()
    # The update's forward as in train(): one micro batch of all rows, trimmed to real columns.
    end = int(batch.attention_mask.any(0).nonzero()[-1]) + 1
    ids, width = batch.query_responses[:, :end], end - context
    with torch.no_grad(), bf16():
        logits, values = model(ids, batch.attention_mask[:, :end], context)
        new = trainer.logprobs_of(logits, ids[:, context:], args.temperature)
        ref = nets.reference(input_ids=ids, attention_mask=batch.attention_mask[:, :end],
                            use_cache=False).logits[:, context - 1:-1]
        ref = trainer.logprobs_of(ref, ids[:, context:], args.temperature)
    real = mask[:, :width].bool()
    for got, want in ((batch.logprobs, new), (batch.ref_logprobs, ref), (batch.values, values)):
        torch.testing.assert_close(got[:, :width][real], want[real], atol=1e-4, rtol=0)
    old_lp, mask = batch.logprobs[:, :width], mask[:, :width]
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
    nets = networks.build_models(cfg, args)
    nets.eos_ids, nets.reward_funcs = networks.eos_token_ids(nets.tokenizer, sft), []
    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "what is 2+2?"}]]
    batch = trainer.rollout(nets, nets.model, prompts, args, torch.device("cpu"))

    ids, mask, context = batch.query_responses, batch.attention_mask, batch.context
    real = batch.response_mask.bool()

    def logprobs(model: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask,
                           position_ids=networks.position_ids(mask)).logits[:, context - 1:-1]
        return trainer.logprobs_of(logits, ids[:, context:], args.temperature)[real]

    sft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path),
                                          str(folder)).eval()
    want = logprobs(sft_model)
    bare = logprobs(AutoModelForCausalLM.from_pretrained(base_path).eval())
    assert (want - bare).abs().max() > 1e-2  # the adapter matters
    torch.testing.assert_close(batch.logprobs[real], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch.ref_logprobs[real], want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The phases of train(), one at a time, on tiny tensors and models.

EOS, PAD = 1, 0
STAT_KEYS = {"policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg",
             "val/clipfrac_avg", "policy/entropy_avg", "val/ratio"}


def _hand_rollout(prompt_lengths: list[int], responses: list[list[int]], *,
                  values: torch.Tensor | None = None, logprobs: torch.Tensor | None = None,
                  ref_logprobs: torch.Tensor | None = None) -> core.Rollout:
    """A rollout built by hand: prompts of token 3 left-padded to the longest, responses ended
    by EOS (or truncated), log-probs and values given or zero."""
    width_p = max(prompt_lengths)
    query = torch.tensor([[PAD] * (width_p - n) + [3] * n for n in prompt_lengths])
    query_mask = torch.tensor([[0] * (width_p - n) + [1] * n for n in prompt_lengths])
    resp = torch.tensor(responses)
    resp_mask, has_eos = core.response_mask(resp, [EOS])
    resp = torch.where(resp_mask.bool(), resp, PAD)
    zeros = torch.zeros(resp.shape)
    lp = logprobs if logprobs is not None else zeros
    ref = ref_logprobs if ref_logprobs is not None else zeros
    return core.Rollout(query_responses=torch.cat([query, resp], 1),
                        attention_mask=torch.cat([query_mask, resp_mask], 1), context=width_p,
                        responses=resp, response_mask=resp_mask, has_eos=has_eos,
                        logprobs=core.fill_padding(lp, resp_mask),
                        ref_logprobs=core.fill_padding(ref, resp_mask),
                        values=values if values is not None else zeros)


def test_rollout_record_shapes_and_padding() -> None:
    """rollout() on llama-small: the record's shapes, left-padded prompts, responses cut at
    their first EOS with pad tokens and INVALID_LOGPROB after it, and (the reference being a
    copy of the policy) reference log-probs equal to the policy's on real tokens."""
    model, nets = _full_ppo_nets()
    # every even id ends a response: rows stop at different lengths, so there is padding
    vocab = model.policy.config.vocab_size
    nets.eos_ids = sorted({*range(2, vocab, 2), *nets.eos_ids})
    prompts = [[{"role": "user", "content": "hi"}],
               [{"role": "user", "content": "what is 12 + 30 and then 7?"}]] * 3
    args = PPOConfig(response_length=8, temperature=1.0)
    torch.manual_seed(0)
    batch = trainer.rollout(nets, model, prompts, args, torch.device("cpu"))
    b, p, r = batch.size, batch.context, batch.responses.shape[1]
    assert b == 6 and 1 <= r <= 8
    assert batch.query_responses.shape == batch.attention_mask.shape == (b, p + r)
    for x in (batch.response_mask, batch.logprobs, batch.ref_logprobs, batch.values):
        assert x.shape == (b, r)
    assert batch.has_eos.shape == (b,)
    assert torch.equal(batch.responses, batch.query_responses[:, p:])
    assert torch.equal(batch.response_mask, batch.attention_mask[:, p:])
    prompt_mask = batch.attention_mask[:, :p]
    assert not prompt_mask[0].all() and prompt_mask[1].all()  # the short prompt is left-padded
    assert (prompt_mask.diff(dim=1) >= 0).all()  # padding only on the left
    assert (batch.query_responses[:, :p][prompt_mask == 0] == nets.tokenizer.pad_token_id).all()
    real, pad = batch.response_mask.bool(), ~batch.response_mask.bool()
    assert pad.any() and batch.has_eos.any()
    assert (batch.responses[pad] == nets.tokenizer.pad_token_id).all()
    assert (batch.logprobs[pad] == core.INVALID_LOGPROB).all()
    assert (batch.ref_logprobs[pad] == core.INVALID_LOGPROB).all()
    assert (batch.logprobs[real] < 0).all()
    torch.testing.assert_close(batch.ref_logprobs[real], batch.logprobs[real], atol=1e-4, rtol=0)
    last = core.last_token_index(batch.response_mask)
    ended = torch.isin(batch.responses[torch.arange(b), last], torch.tensor(nets.eos_ids))
    assert torch.equal(ended, batch.has_eos)
    assert model.training  # back in training mode for the update


def test_score_sums_rewards_on_real_tokens_with_the_eos_trick() -> None:
    seen: dict[str, Any] = {}

    def length(prompts: list[Any], completions: list[Any], completion_ids: list[list[int]],
               **kw: Any) -> list[float]:
        seen.update(prompts=prompts, completions=completions, ids=completion_ids)
        return [float(len(ids)) for ids in completion_ids]

    def sparse(completion_ids: list[list[int]], **kw: Any) -> list[float | None]:
        return [None, 1.0, 2.0]  # None counts as 0

    tok = SimpleNamespace(batch_decode=lambda lists, skip_special_tokens: [
        "-".join(map(str, ids)) for ids in lists])
    nets = networks.PPOModels(model=None, reference=None, tokenizer=tok,
                            reward_funcs=[length, sparse])
    batch = _hand_rollout([2, 2, 2], [[5, 6, EOS, 9], [5, 6, 7, 8], [EOS, 4, 4, 4]])
    prompts = ["p0", "p1", "p2"]
    scores = trainer.score(nets, prompts, batch, PPOConfig(missing_eos_penalty=0.5))
    assert scores.tolist() == pytest.approx([3.0, 4.0 + 1.0 - 0.5, 1.0 + 2.0])
    assert seen["ids"] == [[5, 6, EOS], [5, 6, 7, 8], [EOS]]  # no padding, EOS kept
    assert seen["prompts"] == prompts
    assert seen["completions"][0] == [{"role": "assistant", "content": "5-6-1"}]
    no_penalty = trainer.score(nets, prompts, batch, PPOConfig(missing_eos_penalty=None))
    assert no_penalty.tolist() == pytest.approx([3.0, 5.0, 3.0])


def test_advantages_phase() -> None:
    """Score on the last real token, KL penalty on every real one, returns = Monte Carlo return
    with gamma = lam = 1, advantages whitened over real tokens only, padding inert."""
    values = torch.tensor([[0.5, 0.1, -0.3, 99.0], [0.2, 0.4, 0.6, 0.8], [1.0, -50, -50, -50]])
    lp = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.0, -1.0, -1.0, -1.0], [-3.0, 0, 0, 0]])
    ref = lp - torch.tensor([[0.1, 0.2, 0.3, 0.0], [0.0, 0.0, 0.0, 0.5], [1.0, 0, 0, 0]])
    batch = _hand_rollout([1, 1, 1], [[5, 6, EOS, PAD], [5, 6, 7, 8], [EOS, 4, 4, 4]],
                          values=values, logprobs=lp, ref_logprobs=ref)
    scores = torch.tensor([2.0, -1.0, 0.5])
    mask = batch.response_mask.bool()

    adv = core.advantages(batch, scores, 0.0, gamma=1.0, lam=1.0)
    assert adv.scores is scores
    assert adv.rewards.tolist() == [[0, 0, 2.0, 0], [0, 0, 0, -1.0], [0.5, 0, 0, 0]]
    expected_returns = scores[:, None].expand(-1, 4) * mask
    torch.testing.assert_close(adv.returns, expected_returns)
    real = adv.advantages[mask]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert real.var().item() == pytest.approx(1.0, abs=1e-4)
    assert (adv.advantages[~mask] == 0).all()
    # raw advantages are returns - values: whitening keeps their order on real tokens
    raw = (expected_returns - values)[mask]
    assert torch.equal(real.argsort(), raw.argsort())

    beta = 0.1
    adv = core.advantages(batch, scores, beta, "k1", gamma=1.0, lam=1.0)
    kl = (lp - ref) * mask
    torch.testing.assert_close(adv.kl * mask, kl)
    torch.testing.assert_close(adv.non_score, -beta * kl)
    assert adv.rewards[0].tolist() == pytest.approx([-0.01, -0.02, 2.0 - 0.03, 0.0])
    assert adv.rewards[1, 3].item() == pytest.approx(-1.0 - 0.05)
    kept = core.advantages(batch, scores, beta, whiten_rewards=True).rewards
    assert core.masked_mean(kept, mask).item() == pytest.approx(
        core.masked_mean(adv.rewards, mask).item(), abs=1e-6)  # whitening keeps the mean
    assert (kept[~mask] == 0).all()


def test_micro_batch_drops_only_padding_columns() -> None:
    batch = _hand_rollout([2, 3, 4], [[EOS, 4, 4, 4], [5, EOS, 4, 4], [5, 6, 7, 8]],
                          values=torch.arange(12.0).view(3, 4))
    adv = core.advantages(batch, torch.tensor([1.0, 2.0, 3.0]), 0.1)
    part = core.micro_batch(batch, adv, torch.tensor([0, 1]))
    # prompt column 0 is padding in both rows, response columns 2-3 too: 8 -> 5 columns
    assert part.query_responses.shape == part.attention_mask.shape == (2, 5)
    assert part.context == 3 and part.responses.shape == (2, 2)
    assert part.attention_mask.sum() == batch.attention_mask[:2].sum()  # nothing real dropped
    assert torch.equal(part.query_responses, batch.query_responses[:2, 1:6])
    assert torch.equal(part.responses, batch.responses[:2, :2])
    assert part.response_mask.tolist() == [[1.0, 0.0], [1.0, 1.0]]
    assert torch.equal(part.old_values, batch.values[:2, :2])
    for got, full in ((part.old_logprobs, batch.logprobs), (part.advantages, adv.advantages),
                      (part.returns, adv.returns)):
        assert torch.equal(got, full[:2, :2])
    whole = core.micro_batch(batch, adv, torch.tensor([2, 0]))  # no column is padding in row 2
    assert whole.query_responses.shape == (2, 8) and whole.context == 4
    assert torch.equal(whole.old_values, batch.values[[2, 0]])


class _TinyPolicyAndValue(nn.Module):
    """PolicyAndValue's interface on an embedding: logits and values of response positions."""

    def __init__(self, vocab: int = 11, hidden: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.Embedding(vocab, hidden), nn.Linear(hidden, vocab)
        self.value_head = nn.Linear(hidden, 1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, context: int,
                features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(ids)[:, context - 1:-1] * mask[:, context - 1:-1, None]
        return self.head(h), self.value_head(h).squeeze(-1)


class _FakeAccelerator:
    """accelerate.Accelerator's surface used by the phases, on one CPU process; it counts."""

    def __init__(self, num_processes: int = 1) -> None:
        self.num_processes, self.process_index, self.is_main_process = num_processes, 0, True
        self.device = torch.device("cpu")
        self.calls: dict[str, list[Any]] = {}

    def _note(self, name: str, *args: Any) -> None:
        self.calls.setdefault(name, []).append(args)

    def autocast(self) -> Any:
        import contextlib

        return contextlib.nullcontext()

    def no_sync(self, model: nn.Module) -> Any:
        import contextlib

        self._note("no_sync")
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        self._note("clip", max_norm)
        return nn.utils.clip_grad_norm_(params, max_norm)

    def reduce(self, x: torch.Tensor, reduction: str) -> torch.Tensor:
        self._note("reduce", reduction)
        return x.clone()

    def wait_for_everyone(self) -> None:
        self._note("wait")

    def save_state(self, path: str) -> None:
        Path(path).mkdir(parents=True)
        (Path(path) / "model.safetensors").write_text("weights")

    def load_state(self, path: str, strict: bool = True) -> None:
        self._note("load", path, strict)


def _session(args: PPOConfig, tmp: Path | None = None, **kw: Any) -> trainer.Session:
    fields: dict[str, Any] = {
        "cfg": None, "run_dir": tmp, "args": args, "accelerator": _FakeAccelerator(),
        "nets": None, "model": None, "inner": None, "params": [], "optimizer": None,
        "scheduler": None, "prompts": [], "max_steps": 3,
        "state": checkpoints.TrainState(kl_coef=args.kl_coef, log_history=[], max_steps=3,
                                    trainable=["w"])}
    return trainer.Session(**{**fields, **kw})


def test_update_phase_learns_on_a_tiny_model() -> None:
    """update(): epochs x mini batches optimizer steps, DDP sync only at each mini batch's last
    micro batch, a first ratio of 1, and over the epochs both losses fall, the log-probs of
    tokens with positive advantages rise and those with negative ones fall."""
    model = _TinyPolicyAndValue()
    args = PPOConfig(per_device_train_batch_size=1, gradient_accumulation_steps=2,
                     num_mini_batches=2, num_ppo_epochs=6, learning_rate=0.05, temperature=1.0,
                     max_grad_norm=5.0, vf_coef=1.0, cliprange_value=10.0)
    # no (previous token, token) pair in two rows: the embedding model can move each freely
    responses = [[5, 6, EOS, 8], [7, EOS, 8, 8], [9, 2, EOS, 8], [4, 4, 4, 4]]
    probe = _hand_rollout([2, 3, 1, 2], responses)
    with torch.no_grad():
        logits, values = model(probe.query_responses, probe.attention_mask, probe.context)
        lp0 = trainer.logprobs_of(logits, probe.responses, args.temperature)
    batch = _hand_rollout([2, 3, 1, 2], responses, logprobs=lp0, ref_logprobs=lp0,
                          values=values)
    mask = batch.response_mask.float()
    sign = torch.tensor([1.0, 1.0, -1.0, -1.0])[:, None]
    adv = core.Advantages(scores=torch.zeros(4), kl=torch.zeros(4, 4),
                          non_score=torch.zeros(4, 4), rewards=torch.zeros(4, 4),
                          advantages=sign * mask, returns=torch.full((4, 4), 1.0) * mask)
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=args.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    run = _session(args, model=model, inner=model, params=params, optimizer=optimizer,
                   scheduler=scheduler)

    stats = trainer.update(run, batch, adv, step=1)
    n_micro = 4  # per epoch: one row each
    assert set(stats) == STAT_KEYS
    assert all(len(v) == args.num_ppo_epochs * n_micro for v in stats.values())
    assert scheduler.last_epoch == args.num_ppo_epochs * args.num_mini_batches
    calls = run.accelerator.calls
    assert len(calls["no_sync"]) == args.num_ppo_epochs * args.num_mini_batches  # 1 of 2 each
    assert calls["clip"] == [(5.0,)] * (args.num_ppo_epochs * args.num_mini_batches)
    assert stats["val/ratio"][0] == pytest.approx(1.0, abs=1e-6)
    assert stats["policy/approxkl_avg"][0] == pytest.approx(0.0, abs=1e-10)

    def per_epoch(key: str) -> list[float]:
        return [sum(stats[key][i:i + n_micro]) for i in range(0, len(stats[key]), n_micro)]

    assert per_epoch("loss/policy_avg")[-1] < per_epoch("loss/policy_avg")[0] - 0.1
    assert per_epoch("loss/value_avg")[-1] < 0.5 * per_epoch("loss/value_avg")[0]
    with torch.no_grad():
        logits, _ = model(batch.query_responses, batch.attention_mask, batch.context)
        lp1 = trainer.logprobs_of(logits, batch.responses, args.temperature)
    moved = core.masked_mean(lp1 - lp0, mask, dim=1)
    assert (moved[:2] > 0).all() and (moved[2:] < 0).all(), moved
    # the same step shuffles the same way: a second run from the same weights is identical
    model2 = _TinyPolicyAndValue()
    params2 = list(model2.parameters())
    optimizer2 = torch.optim.Adam(params2, lr=args.learning_rate)
    run2 = _session(args, model=model2, inner=model2, params=params2, optimizer=optimizer2,
                    scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer2, lambda step: 1.0))
    assert trainer.update(run2, batch, adv, step=1) == stats


def test_step_metrics_and_log_step() -> None:
    """The log row has exactly the metrics.json keys; its numbers come from the rollout (sums
    over real tokens, means over rows), scaled by the world size where they are totals; beta is
    logged before the adaptive controller moves it; rows are kept every logging_steps and at
    the last step."""
    from alignlab import console
    lp = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.0, -1.0, -1.0, -1.0]])
    ref = lp - torch.tensor([[0.5, 0.5, 0.5, 9.0], [0.25, 0.25, 0.25, 0.25]])
    batch = _hand_rollout([1, 2], [[5, 6, EOS, PAD], [5, 6, 7, 8]], logprobs=lp,
                          ref_logprobs=ref)
    scores = torch.tensor([1.0, 3.0])
    adv = core.advantages(batch, scores, 0.2)
    stats = {k: [0.5, 1.5] for k in STAT_KEYS}
    local = trainer.step_metrics(batch, adv, stats, seconds=2.0)

    args = PPOConfig(logging_steps=2, adaptive_kl=True, kl_target=1.0, kl_horizon=100,
                     kl_coef=0.2, per_device_train_batch_size=2)
    sched = SimpleNamespace(get_last_lr=lambda: [0.25])
    run = _session(args, scheduler=sched, accelerator=_FakeAccelerator(num_processes=2))
    from alignlab.methods import ppo as ppo_method
    run.step_keys = ppo_method.SPEC.step_keys  # what methods/ppo.run passes
    lines: list[str] = []
    bar = SimpleNamespace(write=lines.append, update=lambda n: None,
                          set_postfix=lambda **kw: None)
    phases = {"generate": 0.25, "forwards": 0.125, "score": 0.0625, "rollout": 0.5,
              "update": 1.5}
    rows = [trainer.log_step(run, step, local, phases, 2.0, bar) for step in (1, 2, 3)]
    row = rows[0]
    assert set(row) == set(local) | {"objective/kl_coef", "lr", "episode", "time/rollout_s",
                                     "time/step_s", "step", "time/generate_s", "time/forwards_s",
                                     "time/score_s", "time/update_s"}
    assert (row["time/generate_s"], row["time/update_s"]) == (0.25, 1.5)
    assert set(local) == STAT_KEYS | {
        "objective/scores", "objective/kl", "objective/kl_k1", "objective/kl_k3",
        "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward",
        "val/explained_variance", "val/num_eos_tokens", "response/length", "tokens/s"}
    assert row["objective/scores"] == pytest.approx(2.0)
    assert row["objective/kl"] == pytest.approx((1.5 + 1.0) / 2)  # padding's 9.0 left out
    assert row["objective/kl_k1"] == pytest.approx(row["objective/kl"])
    assert row["objective/non_score_reward"] == pytest.approx(-0.2 * 1.25)
    assert row["objective/rlhf_reward"] == pytest.approx(2.0 - 0.2 * 1.25)
    assert row["objective/entropy"] == pytest.approx((3.5 + 4.0) / 2)
    assert row["response/length"] == pytest.approx(3.5)
    assert row["val/num_eos_tokens"] == 1 * 2  # one per process, two processes
    assert row["tokens/s"] == pytest.approx((1 + 3 + 2 + 4) / 2.0 * 2)
    assert row["loss/value_avg"] == pytest.approx(1.0)
    assert (row["lr"], row["episode"], row["step"]) == (0.25, 4, 1)
    assert row["objective/kl_coef"] == 0.2  # before adapting
    assert rows[1]["objective/kl_coef"] == pytest.approx(
        core.adaptive_kl_coef(0.2, 1.25, 1.0, 100, 4))
    assert run.state.kl_coef == pytest.approx(rows[2]["objective/kl_coef"] * (1 + 0.2 * 4 / 100))
    assert [r["step"] for r in run.state.log_history] == [2, 3]
    assert lines == [console.step_line(s, 3, rows[s - 1], run.step_keys) for s in (2, 3)]
    assert "score 2" in lines[0] and "kl 1.25" in lines[0], lines  # the PPO row's keys
    assert run.accelerator.calls["reduce"] == [("mean",)] * 3


def test_checkpoint_phase_keeps_the_last_and_resumes(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """checkpoint(): every save_steps updates, trainer_state.json (state + step, in this key
    order), the oldest beyond save_total_limit removed; load_checkpoint() restores what it
    wrote and refuses another model setup; the kill hook exits after the step's checkpoint."""
    from alignlab.errors import AlignlabError

    args = PPOConfig(save_steps=2, save_total_limit=2)
    run = _session(args, tmp_path)
    for step in range(1, 7):
        run.state.log_history.append({"step": step})
        trainer.checkpoint(run, step)
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    saved = json.loads((ckpts / "checkpoint-6" / "trainer_state.json").read_text())
    assert list(saved) == ["kl_coef", "log_history", "max_steps", "trainable", "global_step"]
    assert saved == {"kl_coef": args.kl_coef, "log_history": [{"step": s} for s in range(1, 7)],
                     "max_steps": 3, "trainable": ["w"], "global_step": 6}

    accelerator = _FakeAccelerator()
    state, step = checkpoints.load_checkpoint(accelerator, ckpts / "checkpoint-4", {"w"})
    assert step == 4 and state == checkpoints.TrainState(args.kl_coef, [{"step": s} for s in
                                                                    range(1, 5)], 3, ["w"])
    assert accelerator.calls["load"] == [(str(ckpts / "checkpoint-4"), False)]
    with pytest.raises(AlignlabError, match="different model setup"):
        checkpoints.load_checkpoint(accelerator, ckpts / "checkpoint-4", {"w", "lora_A"})

    class Killed(Exception):
        pass

    def fake_exit(code: int) -> None:
        assert (ckpts / "checkpoint-8" / "trainer_state.json").exists()  # saved first
        raise Killed(code)

    monkeypatch.setattr(trainer.os, "_exit", fake_exit)
    run.kill_at = 8
    trainer.checkpoint(run, 7)  # not yet
    with pytest.raises(Killed, match="75"):
        trainer.checkpoint(run, 8)


def test_plan_steps() -> None:
    args = PPOConfig(per_device_train_batch_size=4, num_mini_batches=2)  # 8 prompts/process
    assert trainer.plan_steps(args, 100, world=1) == 13  # one epoch, rounded up
    assert trainer.plan_steps(args, 100, world=2) == 7
    assert trainer.plan_steps(PPOConfig(per_device_train_batch_size=4, num_mini_batches=2,
                                        num_train_epochs=2.5), 64, world=1) == 20
    assert trainer.plan_steps(PPOConfig(total_episodes=100, per_device_train_batch_size=4),
                              5, world=2) == 13
    assert trainer.plan_steps(PPOConfig(max_steps=3, total_episodes=100), 5, world=2) == 3


def test_setup_builds_a_run_and_resumes_its_checkpoint(tmp_path: Path) -> None:
    """setup() on llama-small: the planned steps, the trainable weights in the optimizer at the
    starting learning rate, frozen reference on the device, EOS ids; after a checkpoint,
    resume=true starts after it with its state and its (changed) weights."""
    from accelerate.state import AcceleratorState

    from alignlab import cli

    # An earlier test in this worker may have built a bf16 PPOConfig, which fixes accelerate's
    # process-wide state to bf16; a run is one process, so start from a clean state as one does.
    AcceleratorState._reset_state(reset_partial_state=True)

    cfg = cli.compose(["method=ppo", "method.reward_funcs=[toy_judge]", "model.from_sft=false",
                       "quick_eval=false", "data.toy.n_prompts=40", "method.args.use_cpu=true",
                       "method.args.per_device_train_batch_size=2",
                       "method.args.num_mini_batches=2", "method.args.num_train_epochs=2",
                       "method.args.total_episodes=null",  # llama-small's preset sets it
                       "method.args.save_steps=1", "method.args.learning_rate=1e-4",
                       f"run_dir={tmp_path}"])
    run = trainer.setup(cfg, tmp_path)
    assert run.start_step == 0 and run.max_steps == math.ceil(2 * len(run.prompts) / 4)
    assert run.state == checkpoints.TrainState(run.args.kl_coef, [], run.max_steps,
                                           sorted(n for n, p in run.inner.named_parameters()
                                                  if p.requires_grad))
    assert run.params and all(p.requires_grad for p in run.params)
    assert {id(p) for g in run.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in run.params}
    assert run.scheduler.get_last_lr() == [1e-4]
    assert not any(p.requires_grad for p in run.nets.reference.parameters())
    assert run.nets.tokenizer.eos_token_id in run.nets.eos_ids
    assert not run.do_eval and run.eval_before is None

    with torch.no_grad():
        run.inner.value_head.weight.add_(1.0)
    head = run.inner.value_head.weight.detach().clone()
    run.state.log_history.append({"step": 1})
    trainer.checkpoint(run, 1)
    cfg.resume = True
    resumed = trainer.setup(cfg, tmp_path)
    assert resumed.start_step == 1 and resumed.state == run.state
    torch.testing.assert_close(resumed.inner.value_head.weight, head)


@pytest.mark.parametrize("lora", [True, False])
def test_shared_critic_is_one_pass_with_the_same_numbers(lora: bool, tmp_path: Path) -> None:
    """method.args.critic=shared: the values come from a head on the policy's own pass (one
    backbone pass per forward, against two with the separate critic), they are the head on
    the hidden states the output layer reads, the rollout's log-probs and values are the
    update's first forward (ratio 1), and the value loss trains the policy's weights too."""
    from alignlab import cli

    overrides = ["method=ppo", "model=llama-small", f"model.lora={str(lora).lower()}",
                 "method.args.response_length=6", "method.args.critic=shared",
                 "method.reward_funcs=[toy_judge]"]
    cfg = cli.compose(overrides)
    args = trainer.training.trainer_config(cfg, trainer.ARGS_CLASS, tmp_path)
    nets = networks.build_models(cfg, args)
    model = nets.model
    assert model.mode == "shared" and model.critic is None
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert "value_head.weight" in names
    assert not any(f".{networks.CRITIC}." in n for n in names)  # no critic adapter
    base = model.policy.get_base_model() if lora else model.policy
    layer = base.model.layers[0]
    passes: list[int] = []
    layer.register_forward_hook(lambda *_: passes.append(1))

    prompts = [[{"role": "user", "content": "what is 2+3?"}],
               [{"role": "user", "content": "name a colour please"}]] * 2
    torch.manual_seed(0)
    batch = trainer.rollout(nets, model, prompts, args, torch.device("cpu"))
    ids, mask, context = batch.query_responses, batch.attention_mask, batch.context
    passes.clear()
    with torch.no_grad():
        logits, values = model(ids, mask, context)
    assert len(passes) == 1  # policy and critic in one pass
    new = trainer.logprobs_of(logits, batch.responses, args.temperature)
    real = batch.response_mask.bool()
    torch.testing.assert_close(batch.logprobs[real], new[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.values[real], values[real], atol=1e-5, rtol=0)
    with torch.no_grad(), (networks.lora_adapter(model.policy, networks.POLICY) if lora
                           else contextlib.nullcontext()):
        hidden = getattr(base, base.base_model_prefix)(
            input_ids=ids, attention_mask=mask, position_ids=networks.position_ids(mask),
            use_cache=False)[0]
    want = model.value_head(hidden[:, context - 1:-1]).squeeze(-1)
    torch.testing.assert_close(values, want, atol=1e-5, rtol=0)

    torch.nn.init.normal_(model.value_head.weight)  # zero at the start: no gradient through it
    _, values = model(ids, mask, context)
    (values ** 2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads["value_head.weight"].abs().sum() > 0
    trunk = [g for n, g in grads.items() if not n.startswith("value_head")]
    assert trunk and any(g.abs().sum() > 0 for g in trunk)  # the value loss reaches the policy

    passes.clear()
    separate = _lora_policy_and_value()
    separate.policy.get_base_model().model.layers[0].register_forward_hook(
        lambda *_: passes.append(1))
    with torch.no_grad():
        separate(ids, mask, context)
    assert len(passes) == 2  # the separate critic: a second backbone pass


def _toy_reward_model(folder: Path, extra_token: bool = False) -> Path:
    """A one-logit classifier on llama-small (random score head), with its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignlab.models import build_builtin

    path = build_builtin("llama-small", 0)
    torch.manual_seed(3)
    rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    tok = AutoTokenizer.from_pretrained(path)
    if extra_token:
        tok.add_tokens(["<not-in-the-policy>"])
    rm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("lora", [False, True])
def test_reward_critic_reads_the_frozen_reward_model(lora: bool, tmp_path: Path) -> None:
    """method.args.critic=reward: the values start as the reward model's score head on its own
    hidden states at each response position (Ouyang et al.'s critic init), those features are
    computed once in the rollout, and the update runs the policy's backbone once and no reward
    model; the value loss trains the value head only, never the reward model."""
    from alignlab import cli

    rm_dir = _toy_reward_model(tmp_path / "rm")
    overrides = ["method=ppo", "model=llama-small", f"model.lora={str(lora).lower()}",
                 "method.args.response_length=6", "method.args.critic=reward",
                 f"method.reward_model={rm_dir}"]
    cfg = cli.compose(overrides)
    args = trainer.training.trainer_config(cfg, trainer.ARGS_CLASS, tmp_path)
    nets = networks.build_models(cfg, args)
    model, rm = nets.model, nets.reward_model
    assert model.mode == "reward" and model.critic is None
    torch.testing.assert_close(model.value_head.weight, rm.score.weight)
    assert model.value_head.weight is not rm.score.weight
    assert not any(p is q for p in model.parameters() for q in rm.parameters())
    assert not any(f".{networks.CRITIC}." in n for n, _ in model.named_parameters())

    prompts = [[{"role": "user", "content": "what is 2+3?"}],
               [{"role": "user", "content": "name a colour please"}]] * 2
    torch.manual_seed(0)
    batch = trainer.rollout(nets, model, prompts, args, torch.device("cpu"))
    ids, mask, context = batch.query_responses, batch.attention_mask, batch.context
    assert batch.features is not None
    assert batch.features.shape == (*batch.responses.shape, rm.config.hidden_size)
    with torch.no_grad():  # the reward model's score at every response position
        hidden = rm.model(input_ids=ids, attention_mask=mask,
                          position_ids=networks.position_ids(mask))[0]
        want = rm.score(hidden[:, context - 1:-1]).squeeze(-1)
    real = batch.response_mask.bool()
    torch.testing.assert_close(batch.values[real], want[real], atol=1e-5, rtol=0)

    passes = {"policy": 0, "reward": 0}
    base = model.policy.get_base_model() if lora else model.policy
    base.model.layers[0].register_forward_hook(lambda *_: passes.__setitem__(
        "policy", passes["policy"] + 1))
    rm.model.layers[0].register_forward_hook(lambda *_: passes.__setitem__(
        "reward", passes["reward"] + 1))
    adv = core.advantages(batch, torch.zeros(batch.size), 0.1)
    part = core.micro_batch(batch, adv, torch.arange(batch.size))
    _, values = model(part.query_responses, part.attention_mask, part.context,
                      part.features)
    assert passes == {"policy": 1, "reward": 0}
    real = part.response_mask.bool()
    torch.testing.assert_close(values[real], part.old_values[real], atol=1e-5, rtol=0)
    (values ** 2).mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {"value_head.weight"} | ({"value_head.bias"}
                                             if model.value_head.bias is not None else set())
    assert all(p.grad is None for p in rm.parameters())


def test_reward_critic_refuses_a_missing_or_foreign_reward_model(tmp_path: Path) -> None:
    """critic=reward without a reward model, or with one whose tokenizer is not the policy's:
    one message naming the fix."""
    from alignlab import cli
    from alignlab.errors import AlignlabError

    base = ["method=ppo", "model=llama-small", "method.args.critic=reward"]
    cases = {"there is none": ["method.reward_funcs=[toy_judge]"],
             "tokenizers differ": [
                 f"method.reward_model={_toy_reward_model(tmp_path / 'rm', extra_token=True)}"]}
    for message, extra in cases.items():
        cfg = cli.compose([*base, *extra])
        args = trainer.training.trainer_config(cfg, trainer.ARGS_CLASS, tmp_path)
        with pytest.raises(AlignlabError, match=message):
            networks.build_models(cfg, args)
