"""PPO math on hand-built tensors (alignlab.ppo.core): fast, no models."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.ppo import core

EOS, PAD = 1, 0


def _mask(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).float()


def test_gae_matches_reference_loop() -> None:
    torch.manual_seed(0)
    lengths, width, gamma, lam = [5, 3, 1, 4], 5, 0.9, 0.8
    mask = _mask(lengths, width)
    rewards, values = torch.randn(4, width), torch.randn(4, width)
    # garbage on the padding must not leak in
    rewards_pad = torch.where(mask.bool(), rewards, torch.full_like(rewards, 99.0))
    values_pad = torch.where(mask.bool(), values, torch.full_like(values, -77.0))
    adv, ret = core.gae(rewards_pad, values_pad, mask, gamma, lam)
    for i, n in enumerate(lengths):
        for t in range(n):  # A_t = sum_l (gamma*lam)^l delta_{t+l}, V after the end = 0
            expected = 0.0
            for k in range(t, n):
                next_v = values[i, k + 1].item() if k + 1 < n else 0.0
                delta = rewards[i, k].item() + gamma * next_v - values[i, k].item()
                expected += (gamma * lam) ** (k - t) * delta
            assert adv[i, t].item() == pytest.approx(expected, abs=1e-5)
            assert ret[i, t].item() == pytest.approx(expected + values[i, t].item(), abs=1e-5)
        assert torch.all(adv[i, n:] == 0)


def test_gae_gamma_one_lambda_one_is_monte_carlo_return() -> None:
    rewards = torch.tensor([[0.0, 0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.1, -0.3, 9.0]])
    mask = _mask([3], 4)
    adv, ret = core.gae(rewards, values, mask, 1.0, 1.0)
    assert torch.allclose(ret[0, :3], torch.tensor([2.0, 2.0, 2.0]))
    assert torch.allclose(adv[0, :3], torch.tensor([1.5, 1.9, 2.3]))


def test_masked_whiten_ignores_padding() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 50.0], [4.0, 5.0, -80.0, 60.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    real = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    expected = (real - real.mean()) / real.std(unbiased=True)
    out = core.masked_whiten(x, mask)
    assert torch.allclose(out[mask.bool()], expected, atol=1e-5)
    assert torch.all(out[~mask.bool()] == 0)
    kept = core.masked_whiten(x, mask, shift_mean=False)
    assert torch.allclose(kept[mask.bool()], expected + real.mean(), atol=1e-5)
    assert core.masked_mean(x, mask).item() == pytest.approx(3.0)
    assert core.masked_var(x, mask).item() == pytest.approx(real.var(unbiased=True).item())


def test_clipped_policy_loss() -> None:
    # ratios 1.5, 0.5, 1.5, 0.5 against advantages +1, +1, -1, -1; the 5th token is padding
    old = torch.zeros(1, 5)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5, 3.0]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = core.policy_loss(new, old, adv, mask, cliprange=0.2)
    # pessimistic max(-A r, -A clip(r)): -1.2, -0.5, 1.5, 0.8
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8) / 4)
    assert stats["clipfrac"].item() == pytest.approx(0.5)  # tokens 1 and 4 are clipped
    expected_kl = 0.5 * (2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 4
    assert stats["approxkl"].item() == pytest.approx(expected_kl, rel=1e-5)
    # the gradient flows only through the unclipped terms (tokens 2 and 3)
    new.requires_grad_(True)
    core.policy_loss(new, old, adv, mask, 0.2)[0].backward()
    assert torch.allclose(new.grad, torch.tensor([[0.0, -0.5 / 4, 1.5 / 4, 0.0, 0.0]]))


def test_clipped_value_loss() -> None:
    old = torch.tensor([[0.0, 0.0, 0.0, 7.0]])
    new = torch.tensor([[1.0, 0.1, -1.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, -0.5, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clipfrac = core.value_loss(new, old, returns, mask, cliprange_value=0.2)
    # clipped values 0.2, 0.1, -0.2 -> max squared errors: 0.64, 0.81, 0.25 (clipped, max)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81 + 0.25) / 3)
    assert clipfrac.item() == pytest.approx(1 / 3)  # only token 0: |err_clip| > |err|


def test_kl_estimators() -> None:
    lp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -1.0, -0.5])
    assert torch.allclose(core.kl_per_token(lp, ref, "k1"), lp - ref)
    r = torch.exp(ref - lp)
    assert torch.allclose(core.kl_per_token(lp, ref, "k3"), (r - 1) - torch.log(r))
    assert torch.all(core.kl_k3(lp, ref) >= 0) and core.kl_k3(lp, lp).abs().max() == 0
    with pytest.raises(ValueError):
        core.kl_per_token(lp, ref, "k2")
    # Both are unbiased estimates of KL(p || q) when the tokens are sampled from p.
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.2, 0.5, 0.3])
    exact = (p * (p / q).log()).sum().item()
    x = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    lp, ref = p.log()[x], q.log()[x]
    assert core.kl_k1(lp, ref).mean().item() == pytest.approx(exact, rel=0.02)
    assert core.kl_k3(lp, ref).mean().item() == pytest.approx(exact, rel=0.02)
    assert core.kl_k3(lp, ref).var() < core.kl_k1(lp, ref).var()


def test_response_mask_and_score_placement() -> None:
    responses = torch.tensor([
        [5, 6, EOS, PAD, PAD],  # EOS at 2, padded after
        [5, 6, 7, 8, 9],  # no EOS: truncated at the limit
        [EOS, PAD, PAD, PAD, PAD],  # empty answer: only EOS
        [5, EOS, 7, EOS, PAD],  # tokens after the first EOS are not part of it
    ])
    mask, has_eos = core.response_mask(responses, [EOS])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True, True]
    assert core.last_token_index(mask).tolist() == [2, 4, 0, 1]
    scores = torch.tensor([10.0, 20.0, 30.0, 40.0])
    kl = torch.full((4, 5), 2.0)
    rewards, non_score = core.per_token_rewards(scores, kl, mask, kl_coef=0.1)
    # score on the last real token (the EOS itself), never one slot after it
    assert rewards[0].tolist() == pytest.approx([-0.2, -0.2, 9.8, 0.0, 0.0])
    assert rewards[1].tolist() == pytest.approx([-0.2, -0.2, -0.2, -0.2, 19.8])
    assert rewards[2].tolist() == pytest.approx([29.8, 0.0, 0.0, 0.0, 0.0])
    assert rewards[3].tolist() == pytest.approx([-0.2, 39.8, 0.0, 0.0, 0.0])
    assert torch.allclose(non_score, -0.2 * mask)


def test_response_mask_when_pad_is_eos() -> None:
    # Many chat models pad with EOS: the first EOS ends the response, the rest is padding.
    responses = torch.tensor([[5, EOS, EOS, EOS], [5, 6, 7, 8]])
    mask, has_eos = core.response_mask(responses, torch.tensor([EOS, 2]))
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert has_eos.tolist() == [True, False]
    mask, _ = core.response_mask(torch.tensor([[5, 2, 9]]), [EOS, 2])  # any declared EOS id
    assert mask.tolist() == [[1, 1, 0]]


def test_explained_variance() -> None:
    returns = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert core.explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    mean = torch.full_like(returns, 2.0)
    assert core.explained_variance(mean, returns, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_adaptive_kl_controller() -> None:
    # Ziegler et al. 2019: beta *= 1 + clip(KL/target - 1, -0.2, 0.2) * n / horizon
    assert core.adaptive_kl_coef(0.1, 9.0, 6.0, 10_000, 256) == pytest.approx(
        0.1 * (1 + 0.2 * 256 / 10_000))
    assert core.adaptive_kl_coef(0.1, 6.6, 6.0, 10_000, 256) == pytest.approx(
        0.1 * (1 + 0.1 * 256 / 10_000))
    assert core.adaptive_kl_coef(0.1, 0.0, 6.0, 10_000, 256) == pytest.approx(
        0.1 * (1 - 0.2 * 256 / 10_000))
    assert core.adaptive_kl_coef(0.1, 6.0, 6.0, 10_000, 256) == pytest.approx(0.1)
    # repeated overshoot keeps raising beta; it converges back when KL returns to target
    beta = 0.05
    for _ in range(100):
        beta = core.adaptive_kl_coef(beta, 20.0, 6.0, 1000, 64)
    assert beta == pytest.approx(0.05 * (1 + 0.2 * 64 / 1000) ** 100)


def test_config_is_light_and_validates() -> None:
    import subprocess
    import sys

    code = ("import sys; from alignlab.ppo.config import PPOConfig; c = PPOConfig(); "
            "assert c.local_batch_size == 8; "
            "assert not {'torch', 'transformers', 'trl'} & set(sys.modules), sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], check=True)
    from alignlab.ppo.config import PPOConfig

    with pytest.raises(ValueError, match="kl_estimator"):
        PPOConfig(kl_estimator="k2")
    cfg = PPOConfig(per_device_train_batch_size=4, gradient_accumulation_steps=2,
                    num_mini_batches=3)
    assert (cfg.mini_batch_size, cfg.local_batch_size) == (8, 24)


def test_prompt_batches_shard_and_repeat() -> None:
    from alignlab.ppo.trainer import prompt_batch

    prompts = list(range(10))
    # two processes, 3 prompts each: disjoint slices of one global order, epochs laid end to end
    step0 = [prompt_batch(prompts, 7, 0, 3, 2, r) for r in (0, 1)]
    step1 = [prompt_batch(prompts, 7, 1, 3, 2, r) for r in (0, 1)]
    first_epoch = step0[0] + step0[1] + step1[0][:3] + step1[1][:1]
    assert sorted(first_epoch) == prompts
    assert prompt_batch(prompts, 7, 1, 3, 2, 1) == step1[1]  # a function of the step alone
    assert prompt_batch(prompts, 8, 0, 3, 2, 0) != step0[0]


def test_token_logprobs_and_entropy_match_naive() -> None:
    torch.manual_seed(0)
    logits, tokens = torch.randn(3, 5, 11), torch.randint(0, 11, (3, 5))
    naive = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens[..., None])[..., 0]
    assert torch.allclose(core.token_logprobs(logits, tokens, 0.7), naive, atol=1e-6)
    p = torch.softmax(logits, -1)
    assert torch.allclose(core.entropy(logits), -(p * p.log()).sum(-1), atol=1e-6)


def test_lr_schedules() -> None:
    assert [core.lr_multiplier(s, "linear", 0, 4) for s in range(5)] == [1, 0.75, 0.5, 0.25, 0]
    assert core.lr_multiplier(0, "constant", 3, 10) == 0.25  # warm-up first
    assert core.lr_multiplier(7, "constant", 3, 10) == 1.0
    assert core.lr_multiplier(5, "cosine", 0, 10) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        core.lr_multiplier(5, "polynomial", 0, 10)


def test_policy_loss_ignores_adversarial_padding() -> None:
    """Padding log-probs far apart (old 0, new -1000 / +1000) gave exp(1000) = inf and then
    -0 * inf = NaN in the loss and its gradient; they must change nothing at all."""
    mask = torch.tensor([[1, 1, 0, 0]])
    adv = torch.tensor([[1.0, -0.5, 0.0, 0.0]])  # whitened advantages are 0 on padding
    old = torch.tensor([[-1.0, -2.0, 0.0, 0.0]])
    clean = torch.tensor([[-0.9, -2.1, -3.0, -3.0]], requires_grad=True)
    evil = torch.tensor([[-0.9, -2.1, 1000.0, -1000.0]], requires_grad=True)
    old_evil = torch.tensor([[-1.0, -2.0, -1000.0, 1000.0]])
    loss_clean, stats_clean = core.policy_loss(clean, old, adv, mask, 0.2)
    loss_evil, stats_evil = core.policy_loss(evil, old_evil, adv, mask, 0.2)
    assert torch.isfinite(loss_evil) and loss_evil.item() == pytest.approx(loss_clean.item())
    for key in ("clipfrac", "approxkl", "ratio"):
        assert stats_evil[key].item() == pytest.approx(stats_clean[key].item()), key
    loss_clean.backward()
    loss_evil.backward()
    assert torch.isfinite(evil.grad).all()
    torch.testing.assert_close(evil.grad, clean.grad)
    assert evil.grad[0, 2:].abs().max() == 0
    filled = core.fill_padding(evil.detach(), mask)
    assert filled[0, 2:].tolist() == [core.INVALID_LOGPROB] * 2 and filled[0, 0] == evil[0, 0]
