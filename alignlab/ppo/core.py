"""The math of PPO for language models, on plain tensors (no models, no distributed code).

Shapes: ``B`` sequences, ``T`` response positions. ``mask`` is 1 on real response tokens (up to
and including the first EOS) and 0 on the padding after them. The records the trainer's phases
pass on (:class:`Rollout`, :class:`Advantages`, :class:`MicroBatch`) are defined here too, with
the shapes of their tensors. Sources:
- Ouyang et al. 2022 (InstructGPT), App. C: per-token KL penalty, score at the end, PPO-clip;
- Huang et al. 2024, "The N+ implementation details of RLHF with PPO" (arXiv 2403.17031):
  EOS trick, score placement, masked whitening, value clipping, temperature-scaled log-probs;
- Zheng et al. 2023, "Secrets of RLHF" (PPO-max): whitening, clipped value loss;
- Schulman et al. 2016 (GAE); Ziegler et al. 2019 (adaptive KL controller);
- Schulman 2020, "Approximating KL divergence" (k1/k3 estimators).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# What padding positions' log-probs are set to (TRL's old ``INVALID_LOGPROB``): with the same
# constant in old and new log-probs, the ratio there is exactly 1, whatever the model computed.
INVALID_LOGPROB = 1.0


def fill_padding(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``logprobs`` with :data:`INVALID_LOGPROB` wherever ``mask`` is 0.

    Log-probs of padding tokens are arbitrary (a pad token can be nearly impossible under the
    model); a large old-new gap there makes ``exp`` overflow, and ``0 * inf`` is NaN, which a
    masked mean keeps (and whose gradient is NaN too). Fill before the ratio, not after.
    """
    return torch.where(mask.bool(), logprobs, torch.full_like(logprobs, INVALID_LOGPROB))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (over ``dim``, or everything)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries of ``x`` (Bessel-corrected by default)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise ``x`` to unit variance (and zero mean) using only the masked entries.

    Padding must not enter the statistics (Huang et al. 2024, "whiten with masks"); it is set to 0
    in the result. ``shift_mean=False`` keeps the mean, as for rewards (shifting rewards would
    change which responses the policy prefers relative to the KL term).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T)[token] per position, one row at a time so the full
    (batch, length, vocab) log-softmax never exists (as ``trl``'s ``selective_log_softmax``,
    whose import alone costs ~230 MB of RSS)."""
    logits = logits.float() / temperature
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.stack([torch.logsumexp(row, -1) for row in logits])


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) per position, one row at a time."""
    out = []
    for row in logits.float():
        logp = torch.log_softmax(row, -1)
        out.append(-(logp.exp() * logp).sum(-1))
    return torch.stack(out)


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k1 estimate of KL(pi || pi_ref): ``log pi - log pi_ref`` (can be negative)."""
    return logprobs - ref_logprobs


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate: ``(r - 1) - log r`` with ``r = pi_ref / pi``; unbiased and >= 0."""
    log_ratio = (ref_logprobs - logprobs).clamp(-20.0, 20.0)  # exp() must not overflow
    return torch.expm1(log_ratio) - log_ratio


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                 estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate by name (``k1`` or ``k3``)."""
    if estimator == "k1":
        return kl_k1(logprobs, ref_logprobs)
    if estimator == "k3":
        return kl_k3(logprobs, ref_logprobs)
    raise ValueError(f"unknown KL estimator {estimator!r}")


def response_mask(responses: torch.Tensor, eos_ids: list[int] | torch.Tensor,
                  lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, has_eos) for generated ``responses`` [B, T].

    A response ends at its first EOS token (kept: the policy chose to stop, and that choice is
    trained) or, without EOS, at ``lengths`` (default: the full width, i.e. truncated). Tokens
    after the end are padding, whatever ``generate`` filled them with; this also works when the
    pad token equals EOS.
    """
    eos = torch.as_tensor(eos_ids, device=responses.device)
    is_eos = torch.isin(responses, eos)
    has_eos = is_eos.any(-1)
    width = responses.shape[1]
    idx = torch.arange(width, device=responses.device).expand_as(responses)
    first_eos = torch.where(is_eos, idx, width).min(-1).values
    if lengths is None:
        lengths = torch.full_like(first_eos, width)
    end = torch.where(has_eos, first_eos + 1, lengths)  # exclusive
    return (idx < end[:, None]).long(), has_eos


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token (the EOS if present, else the last generated one).

    The score belongs there: old TRL put it one slot *after* EOS, on a padding position that the
    mask then dropped from the loss. Rows without any real token get index 0.
    """
    idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), idx, -1).max(-1).values.clamp(min=0)


def per_token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                      kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards, non_score_reward): ``-kl_coef * kl`` on every real token plus the sequence
    score on its last real token (InstructGPT App. C; Huang et al. 2024)."""
    non_score = -kl_coef * kl * mask
    rewards = non_score.clone()
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards, non_score


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens.

    The episode ends at the last real token: the value after it is 0 (padding values and rewards
    are masked out first). Returns (advantages, returns) with ``returns = advantages + values``,
    the critic's regression target.
    """
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    width = values.shape[1]
    for t in reversed(range(width)):
        next_value = values[:, t + 1] if t + 1 < width else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, advantages + values


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor,
                cliprange: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip surrogate (Schulman et al. 2017), averaged over real tokens.

    Returns the loss and stats: ``clipfrac`` (share of tokens where the clipped term is active)
    and ``approxkl`` (0.5 * mean squared log-ratio, an estimate of KL(old || new)). Padding
    log-probs are replaced by a constant first (:func:`fill_padding`), so they cannot make NaN.
    """
    log_ratio = fill_padding(logprobs, mask) - fill_padding(old_logprobs, mask)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask),
                 "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
                 "ratio": masked_mean(ratio, mask)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss (Huang et al. 2024; PPO2's ``vf_loss``): the worse of the squared
    errors of the new value and of the value clipped to ``old ± cliprange_value``.

    Returns (loss = 0.5 * masked mean, clipfrac).
    """
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    err, err_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((err_clipped > err).float(), mask)
    return loss, clipfrac


def explained_variance(values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns) over real tokens (1 = perfect critic)."""
    var = masked_var(returns, mask, unbiased=False)
    return 1.0 - masked_var(returns - values, mask, unbiased=False) / var.clamp(min=1e-8)


def adaptive_kl_coef(kl_coef: float, current_kl: float, target: float, horizon: int,
                     n_steps: int) -> float:
    """Ziegler et al. 2019, §2.2: move beta so the sequence KL approaches ``target``.

    ``e = clip(KL / target - 1, -0.2, 0.2)``; ``beta *= 1 + e * n_steps / horizon``, where
    ``n_steps`` is the number of episodes since the last update.
    """
    error = min(max(current_kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)


def lr_multiplier(step: int, kind: str, warmup: int, total: int) -> float:
    """Learning-rate factor at optimizer ``step``: linear warm-up, then constant, linear decay
    to 0 or cosine decay to 0 over ``total`` steps (the schedules of transformers'
    ``get_scheduler``, whose import costs ~50 MB of RSS and pulls in peft)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_scheduler_type {kind!r}")


# ---------------------------------------------------------------------------------------------
# The records passed between the trainer's phases. Shapes: ``B`` rollout rows, ``P`` prompt
# columns (prompts left-padded to the longest), ``R`` response columns (right-padded).


@dataclass
class Rollout:
    """Sampled responses and what the policy, the reference and the critic said about them
    (no gradients). Padding: response tokens after a row's end are the pad id, and its
    log-probs there are :data:`INVALID_LOGPROB`; values there are whatever the critic said
    (every use masks them)."""

    query_responses: torch.Tensor  # LongTensor [B, P+R]: left-padded prompt, then the response
    attention_mask: torch.Tensor  # LongTensor [B, P+R]: 1 on real prompt and response tokens
    context: int  # P: the response starts at column P of ``query_responses``
    responses: torch.Tensor  # LongTensor [B, R]: ``query_responses[:, P:]``
    response_mask: torch.Tensor  # LongTensor [B, R]: 1 up to and including the first EOS
    has_eos: torch.Tensor  # BoolTensor [B]: the response ended with EOS (not truncated)
    logprobs: torch.Tensor  # FloatTensor [B, R]: log pi(token) at sampling time, temperature T
    ref_logprobs: torch.Tensor  # FloatTensor [B, R]: log pi_ref(token), temperature T
    values: torch.Tensor  # FloatTensor [B, R]: V(state before each response token)
    # critic=reward: the frozen reward model's hidden states [B, R, H] the values are read from
    features: torch.Tensor | None = None

    @property
    def size(self) -> int:
        """B: the number of rows."""
        return self.query_responses.shape[0]


@dataclass
class Advantages:
    """What the update learns from and the log reports, per rollout row: the scores, the KL
    penalty, and the per-token rewards, advantages and returns (all 0 on padding)."""

    scores: torch.Tensor  # FloatTensor [B]: reward model + reward functions (+ EOS trick)
    kl: torch.Tensor  # FloatTensor [B, R]: per-token KL estimate (the penalised estimator)
    non_score: torch.Tensor  # FloatTensor [B, R]: -kl_coef * kl on real tokens
    rewards: torch.Tensor  # FloatTensor [B, R]: non_score + score on the last real token
    advantages: torch.Tensor  # FloatTensor [B, R]: GAE, whitened over the real tokens
    returns: torch.Tensor  # FloatTensor [B, R]: GAE before whitening + values (critic target)


def advantages(rollout: Rollout, scores: torch.Tensor, kl_coef: float, estimator: str = "k1", *,
               whiten_rewards: bool = False, gamma: float = 1.0,
               lam: float = 0.95) -> Advantages:
    """Per-token rewards (-beta * KL on every token, the score on the last real token), GAE and
    masked whitening of the advantages (InstructGPT App. C; Huang et al. 2024)."""
    mask = rollout.response_mask.float()
    kl = kl_per_token(rollout.logprobs, rollout.ref_logprobs, estimator)
    rewards, non_score = per_token_rewards(scores, kl, mask, kl_coef)
    if whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    advantage, returns = gae(rewards, rollout.values, mask, gamma, lam)
    return Advantages(scores=scores, kl=kl, non_score=non_score, rewards=rewards,
                      advantages=masked_whiten(advantage, mask), returns=returns)


@dataclass
class MicroBatch:
    """Some rows of a rollout for one forward/backward, cut to the columns that are real in at
    least one of them: ``b`` rows, ``W`` columns, of which the last ``w`` are response ones."""

    query_responses: torch.Tensor  # LongTensor [b, W]
    attention_mask: torch.Tensor  # LongTensor [b, W]
    context: int  # W - w: prompt columns kept (those that are padding in every row are dropped)
    response_mask: torch.Tensor  # FloatTensor [b, w]
    old_logprobs: torch.Tensor  # FloatTensor [b, w]: the rollout's log-probs
    old_values: torch.Tensor  # FloatTensor [b, w]: the rollout's values
    advantages: torch.Tensor  # FloatTensor [b, w]
    returns: torch.Tensor  # FloatTensor [b, w]
    features: torch.Tensor | None = None  # [b, w, H]: the rollout's critic features, if any

    @property
    def responses(self) -> torch.Tensor:
        """LongTensor [b, w]: the response tokens."""
        return self.query_responses[:, self.context:]


def micro_batch(rollout: Rollout, adv: Advantages, rows: torch.Tensor,
                device: torch.device | str = "cpu") -> MicroBatch:
    """Rows ``rows`` of ``rollout`` on ``device``, without the columns that are padding in every
    one of them (prompt padding on the left, response padding on the right)."""
    real = rollout.attention_mask[rows].any(0).nonzero()
    first, end = int(real[0]), int(real[-1]) + 1
    width = end - rollout.context
    old_lp, old_v, advantage, ret, mask = (
        x[rows, :width].to(device)
        for x in (rollout.logprobs, rollout.values, adv.advantages, adv.returns,
                  rollout.response_mask.float()))
    return MicroBatch(query_responses=rollout.query_responses[rows, first:end].to(device),
                      attention_mask=rollout.attention_mask[rows, first:end].to(device),
                      context=rollout.context - first, response_mask=mask, old_logprobs=old_lp,
                      old_values=old_v, advantages=advantage, returns=ret,
                      features=None if rollout.features is None
                      else rollout.features[rows, :width].to(device))
