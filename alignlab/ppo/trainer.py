"""alignlab's PPO loop for causal LMs (TRL 1.16 deleted its PPOTrainer).

:func:`train` is a short loop over named phases, each a function readable on its own:
  :func:`setup`       accelerator, prompts, models, optimizer and schedule, evaluation of the
                      start, resume from the last checkpoint;
  :func:`rollout`     a batch of prompts (a fixed order from the seed, sharded over processes,
                      :func:`prompt_batch`), ``generate`` (left-padded prompts, stop at EOS),
                      then no-grad forwards for the policy's and the reference's log-probs and
                      the critic's values: a :class:`core.Rollout`;
  :func:`score`       the reward model and reward functions on the responses, EOS trick;
  :func:`core.advantages`  per-token rewards = -beta * KL on every token + score on the last
                      real token, GAE, masked advantage whitening: a :class:`core.Advantages`;
  :func:`update`      ``num_ppo_epochs`` passes of clipped policy + clipped value loss over
                      shuffled mini batches, with gradient accumulation and clipping;
  :func:`log_step`    means over processes, adaptive beta (optional), log history, console;
  :func:`checkpoint`  every ``save_steps`` updates; :func:`finish` saves and evaluates the policy.
What the phases share is a :class:`Session`; what is saved with a checkpoint, a
:class:`TrainState`.

The models a run holds (policy with critic, reference, reward model: a
:class:`~alignlab.ppo.networks.PPOModels`, ``nets`` here) are built in
:mod:`alignlab.ppo.networks`; checkpoints are written and read in :mod:`alignlab.ppo.checkpoints`.
Sources are cited in :mod:`alignlab.ppo.core`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from alignlab import console, data, evaluation, generation, runs, training
from alignlab import watch as watching
from alignlab.errors import AlignlabError
from alignlab.ppo import core
from alignlab.ppo.checkpoints import (
    TrainState,
    load_checkpoint,
    save_checkpoint,
    save_only_trainable,
)
from alignlab.ppo.networks import (
    POLICY,
    AdaptersOff,
    PolicyAndValue,
    PPOModels,
    build_models,
    lora_adapter,
    position_ids,
    save_policy,
)

log = logging.getLogger("alignlab")
ARGS_CLASS = "alignlab.ppo.config:PPOConfig"


# ---------------------------------------------------------------------------------------------
# Data: a fixed prompt order from the seed, so a resumed run draws exactly the same batches.


@functools.lru_cache(maxsize=2)
def epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The shuffled order of ``n`` prompts in ``epoch`` (the same on every process)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(n, generator=gen).tolist())


def prompt_batch(prompts: list[Any], seed: int, step: int, local_batch: int, world: int,
                 rank: int) -> list[Any]:
    """Prompts of update ``step`` (0-based) for process ``rank``: the epochs' orders laid end to
    end, cut into global batches, each split into per-process slices. A function of the step
    alone, so a resumed run draws exactly the batches the interrupted one would have."""
    n = len(prompts)
    start = (step * world + rank) * local_batch
    return [prompts[epoch_order(n, seed, pos // n)[pos % n]]
            for pos in range(start, start + local_batch)]


def encode_prompts(tokenizer: Any, prompts: list[Any], max_length: int | None) -> list[list[int]]:
    """Chat-template and tokenize prompts; keep the last ``max_length`` tokens of long ones."""
    texts = [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True)
             for p in prompts]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [x[-max_length:] if max_length else x for x in ids]


# ---------------------------------------------------------------------------------------------
# Rollouts


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-token log-probs of ``tokens`` under ``logits / temperature`` (the distribution the
    tokens were sampled from; Huang et al. 2024 detail "temperature in the log-probs")."""
    return core.token_logprobs(logits, tokens, temperature)


def scores_for(nets: PPOModels, prompts: list[Any], texts: list[str],
               response_ids: list[list[int]]) -> torch.Tensor:
    """Sum of the reward model's score and every reward function's, per response."""
    total = torch.zeros(len(texts))
    if nets.reward_model is not None:  # the RM reads the chat template, as in its training
        total += torch.tensor(evaluation.reward_scores(nets.reward_model, nets.reward_tokenizer,
                                                       prompts, texts))
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    for fn in nets.reward_funcs:
        out = fn(prompts=prompts, completions=completions, completion_ids=response_ids)
        total += torch.tensor([0.0 if v is None else float(v) for v in out])
    return total


def logprobs_from_generate(args: Any) -> bool:
    """Whether rollouts take the policy's log-probs from ``generate``'s logits.

    Not under bf16: generate's one-token KV-cache steps round differently from the update's
    full forward (~1e-3 in log-probs here), so the first ratio would not be 1; a second
    forward, under the update's autocast, gives exactly the update's numbers.
    """
    return bool(args.logprobs_from_generate) and not args.bf16


@torch.no_grad()
def rollout(nets: PPOModels, model: PolicyAndValue, prompts: list[Any], args: Any,
            device: torch.device, autocast: Callable[[], Any] = contextlib.nullcontext,
            seconds: dict[str, float] | None = None) -> core.Rollout:
    """Sample responses to ``prompts`` and the log-probs and values PPO needs (no gradients).

    ``autocast`` must be the update's (``accelerator.autocast``): log-probs, reference
    log-probs and values computed in another precision than the update's would make the first
    ratio differ from 1 by the rounding (bf16: ~1e-2), before any weight has changed.
    ``seconds``, when given, gets the time spent in ``generate`` and in the no-grad forwards.
    """
    from transformers import GenerationConfig

    tok = nets.tokenizer
    pad = tok.pad_token_id
    query, query_mask = generation.left_pad(
        encode_prompts(tok, prompts, args.max_prompt_length), pad)
    context = query.shape[1]
    eos = nets.eos_ids
    # A shared critic's pass computes the policy's logits anyway: take the log-probs from it.
    from_generate = logprobs_from_generate(args) and model.mode != "shared"
    # top_k=0/top_p=1: sample from exactly softmax(logits / T), the distribution PPO scores.
    gen_cfg = GenerationConfig(**generation.NEUTRAL_SAMPLING, max_new_tokens=args.response_length,
                               do_sample=True, temperature=args.temperature,
                               eos_token_id=eos, pad_token_id=pad, return_dict_in_generate=True,
                               output_logits=from_generate)
    chunk = args.local_rollout_forward_batch_size
    model.eval()
    started = time.perf_counter()
    pieces, gen_logprobs = [], []
    with (lora_adapter(model.policy, POLICY) if model.lora else contextlib.nullcontext(),
          generation.plain_sampling(model.policy), autocast()):
        for i in range(0, len(prompts), chunk):
            q, m = query[i:i + chunk].to(device), query_mask[i:i + chunk].to(device)
            out = model.policy.generate(input_ids=q, attention_mask=m, generation_config=gen_cfg)
            seq = out.sequences[:, context:]
            pieces.append(seq.cpu())
            if from_generate:  # raw logits of each step, before sampling warpers
                gen_logprobs.append(logprobs_of(torch.stack(out.logits, 1), seq,
                                                args.temperature).cpu())
    generated = time.perf_counter()
    width = max(p.shape[1] for p in pieces)
    responses = torch.cat([nn.functional.pad(p, (0, width - p.shape[1]), value=pad)
                           for p in pieces])
    resp_mask, has_eos = core.response_mask(responses, eos)
    responses = torch.where(resp_mask.bool(), responses, pad)  # nothing real after EOS

    ids = torch.cat([query, responses], 1)
    mask = torch.cat([query_mask, resp_mask], 1)
    logprobs, ref_logprobs, values, features = [], [], [], []
    if gen_logprobs:
        logprobs = [torch.cat([nn.functional.pad(lp, (0, width - lp.shape[1]))
                               for lp in gen_logprobs])]
    for i in range(0, len(prompts), chunk):
        b_ids, b_mask = ids[i:i + chunk].to(device), mask[i:i + chunk].to(device)
        b_resp = b_ids[:, context:]
        with autocast():
            feats = None
            if model.mode == "reward":  # the frozen RM's features, kept for the update
                feats = model.features(b_ids, b_mask, context)
                features.append(feats.cpu())
            if gen_logprobs:
                values.append(model.values(b_ids, b_mask, context, feats).cpu())
            else:
                logits, v = model(b_ids, b_mask, context, feats)
                logprobs.append(logprobs_of(logits, b_resp, args.temperature).cpu())
                values.append(v.cpu())
            if model.lora:
                ref_logits = model.policy_logits(b_ids, b_mask, context, adapter=None)
            else:
                ref_logits = nets.reference(input_ids=b_ids, attention_mask=b_mask,
                                           position_ids=position_ids(b_mask), use_cache=False,
                                           logits_to_keep=b_resp.shape[1] + 1).logits[:, :-1]
            ref_logprobs.append(logprobs_of(ref_logits, b_resp, args.temperature).cpu())
    model.train()
    if seconds is not None:
        seconds.update(generate=generated - started, forwards=time.perf_counter() - generated)
    return core.Rollout(
        query_responses=ids, attention_mask=mask, context=context, responses=responses,
        response_mask=resp_mask, has_eos=has_eos,
        # padding: a constant, as in the update (core.fill_padding), never a stray value
        logprobs=core.fill_padding(torch.cat(logprobs), resp_mask),
        ref_logprobs=core.fill_padding(torch.cat(ref_logprobs), resp_mask),
        values=torch.cat(values), features=torch.cat(features) if features else None)


def score(nets: PPOModels, prompts: list[Any], batch: core.Rollout, args: Any) -> torch.Tensor:
    """Scores [B] of the rollout's responses to ``prompts``: :func:`scores_for` on their real
    tokens, less ``missing_eos_penalty`` for those that did not end with EOS."""
    lists = [r[m.bool()].tolist()
             for r, m in zip(batch.responses, batch.response_mask, strict=True)]
    texts = nets.tokenizer.batch_decode(lists, skip_special_tokens=True)
    scores = scores_for(nets, prompts, texts, lists)
    if args.missing_eos_penalty is not None:
        # EOS trick (Huang et al. 2024): a truncated response scores less than any finished one
        # the RM could rate, so the policy learns to stop instead of rambling to the limit.
        scores = torch.where(batch.has_eos, scores, scores - args.missing_eos_penalty)
    return scores


# ---------------------------------------------------------------------------------------------
# Checkpoints: accelerate's save_state (model, optimizer, scheduler, per-process RNG states)
# plus trainer_state.json (a TrainState and the step), written last: a checkpoint without it is
# incomplete and runs.last_checkpoint ignores it.


# ---------------------------------------------------------------------------------------------
# Evaluation on held-out prompts, before and after: the stage evaluation every method shares
# (toy judge, RM score, KL to the reference), on the starting policy and on the trained one.


def evaluate(cfg: Any, nets: PPOModels, model: PolicyAndValue, args: Any, *,
             before: bool) -> tuple[evaluation.EvalResult, list[dict[str, Any]]]:
    """``evaluation.evaluate`` of the starting policy (``before``) or of the trained one."""
    eval_args = evaluation.EvalArgs(num_samples=args.eval_samples,
                                    max_prompts=args.eval_max_prompts,
                                    max_new_tokens=args.response_length)
    kw = {"reward_model": nets.reward_model, "reward_tokenizer": nets.reward_tokenizer}
    try:
        if before:  # the policy itself: method.reference may be a different model
            with lora_adapter(model.policy, POLICY) if model.lora else contextlib.nullcontext():
                return evaluation.evaluate(cfg, model.policy, nets.tokenizer, eval_args, **kw)
        reference = AdaptersOff(model.policy) if model.lora else nets.reference
        with lora_adapter(model.policy, POLICY) if model.lora else contextlib.nullcontext():
            return evaluation.evaluate(cfg, model.policy, nets.tokenizer, eval_args,
                                       reference=reference, **kw)
    finally:
        model.train()


# ---------------------------------------------------------------------------------------------
# The loop and its phases (rollout and score are above; advantages are core.advantages)


@dataclass
class Session:
    """What the phases of one run share: made by :func:`setup`."""

    cfg: Any
    run_dir: Path
    args: Any  # the PPOConfig
    accelerator: Any
    nets: PPOModels
    model: nn.Module  # nets.model as accelerate prepared it (DDP-wrapped on several processes)
    inner: PolicyAndValue  # the unwrapped model: rollouts, evaluation and saving use it
    params: list[nn.Parameter]  # the trainable ones
    optimizer: torch.optim.Optimizer
    scheduler: Any
    prompts: list[Any]
    state: TrainState
    max_steps: int
    start_step: int = 0  # the last step done (a checkpoint's on resume)
    do_eval: bool = False
    eval_before: dict[str, Any] | None = None
    kill_at: int | None = None  # test hook: exit after this step
    watch: Any = None  # alignlab.watch.Watch: the held-out judge during training (or None)
    last_step: int = 0  # the last update done (max_steps, unless the watch stopped the run)
    step_keys: Any = None  # the console line's (log key, label) pairs (the method's row)

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def global_batch(self) -> int:
        """Prompts per update over all processes."""
        return self.args.local_batch_size * self.world


def plan_steps(args: Any, n_prompts: int, world: int) -> int:
    """Number of PPO updates: ``max_steps``, else from ``total_episodes``, else from
    ``num_train_epochs`` passes over the prompts (over all processes)."""
    global_batch = args.local_batch_size * world
    if args.max_steps > 0:
        return args.max_steps
    if args.total_episodes:
        return math.ceil(args.total_episodes / global_batch)
    return math.ceil(args.num_train_epochs * n_prompts / global_batch)


def make_optimizer(params: list[nn.Parameter], args: Any,
                   total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW and its learning-rate schedule over ``total_steps`` optimizer steps."""
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, eps=args.adam_epsilon,
                                  weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        core.lr_multiplier, kind=args.lr_scheduler_type, warmup=args.warmup_steps,
        total=total_steps))
    return optimizer, scheduler


def setup(cfg: Any, run_dir: Path) -> Session:
    """Accelerator, prompts, models, optimizer and schedule, the starting policy's evaluation,
    and the state to start from (the last checkpoint's with ``resume=true``). The order of
    these steps fixes what the RNG draws: a resumed run continues the interrupted one exactly."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed

    args = training.trainer_config(cfg, ARGS_CLASS, run_dir)
    # step_scheduler_with_optimizer=False: accelerate's scheduler wrapper would otherwise step
    # the schedule once per process at each optimizer step (it assumes a dataloader whose
    # batches grow with the world size), while the schedule counts steps of one process: on
    # N processes the schedule ran out after 1/N of training.
    accelerator = Accelerator(cpu=args.use_cpu, mixed_precision="bf16" if args.bf16 else "no",
                              step_scheduler_with_optimizer=False)
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        # `accelerate launch --use_fsdp/--use_deepspeed` directly, past the config check.
        raise AlignlabError(f"alignlab's PPO runs under DDP only, not "
                            f"{accelerator.distributed_type.value}: its rollouts cannot generate "
                            "from sharded weights. Launch with hardware=multi-gpu (DDP).")
    set_seed(args.seed)  # same init on every process (DDP also broadcasts rank 0's weights)

    prompts = list(data.load(cfg.data, "prompts", "train")["prompt"])
    nets = build_models(cfg, args)
    for frozen in (nets.reference, nets.reward_model):
        if frozen is not None:
            frozen.to(accelerator.device)
    max_steps = plan_steps(args, len(prompts), accelerator.num_processes)
    params = [p for p in nets.model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(
        params, args, max_steps * args.num_ppo_epochs * args.num_mini_batches)
    model, optimizer, scheduler = accelerator.prepare(nets.model, optimizer, scheduler)
    inner: PolicyAndValue = accelerator.unwrap_model(model)
    trainable = save_only_trainable(accelerator, inner)

    # Evaluate on the main process only (the other ranks wait): toy world, or any data with an RM.
    do_eval = cfg.quick_eval and accelerator.is_main_process and (
        data.source(cfg.data).rule is not None or nets.reward_model is not None)
    eval_before = evaluate(cfg, nets, inner, args, before=True)[0].to_dict() if do_eval else None
    state, start_step = TrainState(args.kl_coef, [], max_steps, sorted(trainable)), 0
    ckpt = runs.last_checkpoint(run_dir) if cfg.resume else None
    if ckpt is not None:
        state, start_step = load_checkpoint(accelerator, ckpt, trainable)
        if accelerator.is_main_process:
            console.note(f"[alignlab] resuming PPO from {ckpt} (step {start_step})")
    else:
        set_seed(args.seed, device_specific=True)  # different samples on each process
    if args.logprobs_from_generate and not logprobs_from_generate(args) \
            and accelerator.is_main_process:
        console.note("[alignlab] bf16: rollout log-probs come from a forward pass under the "
                     "update's autocast, not from generate's logits")
    return Session(cfg=cfg, run_dir=run_dir, args=args, accelerator=accelerator, nets=nets,
                   model=model, inner=inner, params=params, optimizer=optimizer,
                   scheduler=scheduler, prompts=prompts, state=state, max_steps=max_steps,
                   start_step=start_step, do_eval=do_eval, eval_before=eval_before,
                   kill_at=runs.kill_after_step(cfg.method.name),
                   watch=watching.create(cfg, max_new_tokens=args.response_length,
                                         temperature=args.temperature),
                   last_step=start_step)


def micro_step(run: Session, part: core.MicroBatch, n_micro: int) -> dict[str, float]:
    """Forward and backward of one micro batch: clipped policy loss + ``vf_coef`` * clipped
    value loss, divided by ``n_micro`` (the micro batches of its mini batch, whose gradients
    add up before the optimizer step). Returns the micro batch's stats."""
    args, accelerator = run.args, run.accelerator
    with accelerator.autocast():
        logits, vpred = run.model(part.query_responses, part.attention_mask, part.context,
                                  part.features)
        new_logprobs = logprobs_of(logits, part.responses, args.temperature)
        pg_loss, pg = core.policy_loss(new_logprobs, part.old_logprobs, part.advantages,
                                       part.response_mask, args.cliprange)
        vf_loss, vf_clip = core.value_loss(vpred, part.old_values, part.returns,
                                           part.response_mask, args.cliprange_value)
        accelerator.backward((pg_loss + args.vf_coef * vf_loss) / n_micro)
    with torch.no_grad():
        entropy = core.masked_mean(core.entropy(logits.detach() / args.temperature),
                                   part.response_mask)
    return {key: float(value.detach()) for key, value in (
        ("policy/approxkl_avg", pg["approxkl"]), ("policy/clipfrac_avg", pg["clipfrac"]),
        ("loss/policy_avg", pg_loss), ("loss/value_avg", vf_loss),
        ("val/clipfrac_avg", vf_clip), ("policy/entropy_avg", entropy),
        ("val/ratio", pg["ratio"]))}


def update(run: Session, batch: core.Rollout, adv: core.Advantages,
           step: int) -> dict[str, list[float]]:
    """``num_ppo_epochs`` passes over the rollout in shuffled mini batches (one optimizer step
    each, gradients clipped) of micro batches (one :func:`micro_step` each). The shuffles come
    from a generator seeded by the step, not the global RNG. Returns each micro batch's stats."""
    args, accelerator = run.args, run.accelerator
    stats: dict[str, list[float]] = {}
    gen = torch.Generator().manual_seed(args.seed * 7919 + step)
    for _ in range(args.num_ppo_epochs):
        order = torch.randperm(batch.size, generator=gen)
        for mb in order.split(args.mini_batch_size):
            micro = mb.split(args.per_device_train_batch_size)
            for k, rows in enumerate(micro):
                # DDP averages gradients over processes at the last micro batch only
                last = k == len(micro) - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(run.model):
                    part = core.micro_batch(batch, adv, rows, accelerator.device)
                    for key, value in micro_step(run, part, len(micro)).items():
                        stats.setdefault(key, []).append(value)
            accelerator.clip_grad_norm_(run.params, args.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
    return stats


def step_metrics(batch: core.Rollout, adv: core.Advantages, stats: dict[str, list[float]],
                 seconds: float) -> dict[str, torch.Tensor]:
    """This process's numbers for the log row of an update that took ``seconds``."""
    mask = batch.response_mask.float()
    seq_kl = {e: (core.kl_per_token(batch.logprobs, batch.ref_logprobs, e) * mask).sum(1).mean()
              for e in ("k1", "k3")}
    return {
        "objective/scores": adv.scores.mean(),
        "objective/kl": (adv.kl * mask).sum(1).mean(),
        "objective/kl_k1": seq_kl["k1"], "objective/kl_k3": seq_kl["k3"],
        "objective/entropy": (-batch.logprobs * mask).sum(1).mean(),
        "objective/non_score_reward": adv.non_score.sum(1).mean(),
        "objective/rlhf_reward": adv.scores.mean() + adv.non_score.sum(1).mean(),
        "val/explained_variance": core.explained_variance(batch.values, adv.returns, mask),
        "val/num_eos_tokens": batch.has_eos.float().sum(),
        "response/length": mask.sum(1).mean(),
        "tokens/s": batch.attention_mask.sum() / seconds,  # prompt + response, real tokens
        **{k: torch.tensor(v).mean() for k, v in stats.items()},
    }


def log_step(run: Session, step: int, local: dict[str, torch.Tensor], phases: dict[str, float],
             step_time: float, bar: Any) -> dict[str, float]:
    """The update's log row (means over processes), adaptive beta, the log history (every
    ``logging_steps`` and at the end), the log file and the console. Returns the row.
    ``phases``: this process's seconds in generate, the no-grad forwards (policy, critic,
    reference), scoring (reward model and functions), the whole rollout and the update."""
    args, accelerator, state = run.args, run.accelerator, run.state
    keys = sorted(local)
    reduced = accelerator.reduce(torch.stack([torch.as_tensor(local[k], dtype=torch.float32)
                                              for k in keys]).to(accelerator.device),
                                 reduction="mean")
    row = {k: float(v) for k, v in zip(keys, reduced.tolist(), strict=True)}
    row["tokens/s"] *= run.world  # every process generates its own share
    row["val/num_eos_tokens"] *= run.world
    row.update({"objective/kl_coef": state.kl_coef, "lr": run.scheduler.get_last_lr()[0],
                "episode": step * run.global_batch, "time/step_s": step_time, "step": step,
                **{f"time/{name}_s": value for name, value in phases.items()}})
    if args.adaptive_kl:
        state.kl_coef = core.adaptive_kl_coef(state.kl_coef, row["objective/kl"], args.kl_target,
                                              args.kl_horizon, run.global_batch)
    if step % args.logging_steps == 0 or step == run.max_steps:
        state.log_history.append(row)
        if accelerator.is_main_process:  # full row to the log file, a short line on screen
            log.info("step %d: %s", step, json.dumps({k: round(v, 4) for k, v in row.items()}),
                     extra={console.FILE_ONLY: True})
            if not args.disable_tqdm:
                console.bar_note(bar, console.step_line(step, run.max_steps, row, run.step_keys))
    bar.update(1)
    bar.set_postfix(score=f"{row['objective/scores']:.3f}", kl=f"{row['objective/kl']:.3f}")
    return row


def checkpoint(run: Session, step: int) -> None:
    """A checkpoint every ``save_steps`` updates; the kill test hook after it."""
    if run.args.save_strategy == "steps" and step % run.args.save_steps == 0:
        save_checkpoint(run.accelerator, run.run_dir, step, run.state, run.args.save_total_limit)
    if run.kill_at is not None and step >= run.kill_at:
        run.accelerator.wait_for_everyone()
        os._exit(75)  # test hook: as if killed right after this update (and its checkpoint)


def stop_if_asked(run: Session, step: int) -> None:
    """After SIGTERM/SIGINT: checkpoint the last finished update and stop the run."""
    if not runs.stop_requested():
        return
    if step > run.start_step + 1:  # an update since the start (or the resumed checkpoint)
        save_checkpoint(run.accelerator, run.run_dir, step - 1, run.state,
                        run.args.save_total_limit)
    raise runs.Interrupted(runs.stop_requested() or "SIGTERM", runs.last_checkpoint(run.run_dir))


def check_finite(row: dict[str, float], step: int) -> None:
    """Stop on a non-finite loss or KL (AlignlabError) before the next update builds on it."""
    for key in ("loss/policy_avg", "loss/value_avg", "objective/kl"):
        if key in row and not training.is_finite(row[key]):
            raise training.diverged(key, row[key], step)


def watched(run: Session, step: int, row: dict[str, float]) -> bool:
    """The held-out judge after ``step`` updates, when due; True when the run should stop."""
    if run.watch is None or not run.watch.due(step):
        return False
    model = run.inner
    with lora_adapter(model.policy, POLICY) if model.lora else contextlib.nullcontext():
        return run.watch.check(step, model.policy, run.nets.tokenizer,
                               proxy=row.get("objective/scores"), kl=row.get("objective/kl"),
                               main=run.accelerator.is_main_process)


def finish(run: Session, wall: float) -> dict[str, Any]:
    """Save the policy to ``run_dir/model``, evaluate it (main process); returns the metrics."""
    accelerator, cfg, run_dir, state = run.accelerator, run.cfg, run.run_dir, run.state
    if os.environ.get(runs.RANK_CHECK_ENV):  # test hook: hash of each rank's weights
        training.write_rank_fingerprint(run.inner, run_dir, accelerator.process_index, run.world)
    out = run_dir / "model"
    metrics: dict[str, Any] = {
        "method": cfg.method.name,
        "train": {"global_step": run.last_step, "train_runtime": round(wall, 2),
                  **(state.log_history[-1] if state.log_history else {})},
        "log_history": state.log_history, "world_size": run.world,
        "wall_seconds": round(wall, 2), **training.peak_memory(),
        **({"watch": run.watch.summary()} if run.watch is not None else {})}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # Saved under a temporary name, then renamed: a kill mid-save leaves no half model.
        save_policy(run.inner, run.nets.tokenizer, runs.fresh_partial_dir(out))
        runs.commit_dir(runs.partial_dir(out), out)
        if run.do_eval:
            result, samples = evaluate(cfg, run.nets, run.inner, run.args, before=False)
            evaluation.write(run_dir, result, samples)
            metrics["eval"] = {"before": run.eval_before, "after": result.to_dict()}
            metrics.update(result.pick("judge", "kl"))
    accelerator.wait_for_everyone()
    return metrics


def train(cfg: Any, run_dir: Path, step_keys: Any = None) -> dict[str, Any]:
    """Run PPO for ``cfg`` into ``run_dir``; returns the metrics for metrics.json.
    ``step_keys``: what the console line of a logged update shows (the method's row)."""
    run = setup(cfg, run_dir)
    run.step_keys = step_keys
    args, accelerator = run.args, run.accelerator
    started = time.time()
    bar = tqdm(total=run.max_steps, initial=run.start_step, desc="ppo",
               disable=args.disable_tqdm or not accelerator.is_main_process)
    with runs.stoppable():  # SIGTERM/SIGINT: stop after the update under way
        for step in range(run.start_step + 1, run.max_steps + 1):
            stop_if_asked(run, step)
            t0 = time.perf_counter()
            prompts = prompt_batch(run.prompts, args.seed, step - 1, args.local_batch_size,
                                   run.world, accelerator.process_index)
            phases: dict[str, float] = {}
            batch = rollout(run.nets, run.inner, prompts, args, accelerator.device,
                            autocast=accelerator.autocast, seconds=phases)
            t_score = time.perf_counter()
            scores = score(run.nets, prompts, batch, args)
            phases["score"] = time.perf_counter() - t_score
            adv = core.advantages(batch, scores, run.state.kl_coef, args.kl_estimator,
                                  whiten_rewards=args.whiten_rewards, gamma=args.gamma,
                                  lam=args.lam)
            phases["rollout"] = time.perf_counter() - t0
            t_update = time.perf_counter()
            stats = update(run, batch, adv, step)
            phases["update"] = time.perf_counter() - t_update
            step_time = time.perf_counter() - t0
            row = log_step(run, step, step_metrics(batch, adv, stats, step_time), phases,
                           step_time, bar)
            check_finite(row, step)
            checkpoint(run, step)
            run.last_step = step
            if watched(run, step, row):
                break  # over-optimised: the best policy by the held-out judge is back
    bar.close()
    training.check_finite_weights(run.inner, run.last_step)
    return finish(run, time.time() - started)
