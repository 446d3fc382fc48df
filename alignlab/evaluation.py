"""Evaluation shared by ``method=eval`` and the quick evaluation at the end of each stage."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab import data, lengths, runs, stats
from alignlab.data import RuleScorer, RuleScores
from alignlab.errors import AlignlabError, did_you_mean
from alignlab.generation import generate

log = logging.getLogger("alignlab")


@dataclass
class EvalArgs:
    """Settings of ``method=eval`` (``method.args.<name>``)."""

    num_samples: int = field(default=3, metadata={"help": "Samples per held-out prompt."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (0 = greedy)."})
    max_new_tokens: int = field(default=48, metadata={"help": "Longest response generated."})
    max_prompts: int | None = field(default=None, metadata={"help": "Cap on held-out prompts."})
    batch_size: int = field(default=64, metadata={"help": "Prompts per generate call."})
    judge: str = field(default="auto", metadata={
        "help": "Who decides wins: toy (the toy world's rule), reward (the reward model), or "
                "auto (toy on the toy world, else reward)."})
    num_examples: int = field(default=8, metadata={"help": "Samples shown in the report."})


# Values of ``EvalArgs.judge``, the scorer that decides wins: ``toy`` is the data's rule (the toy
# world's, the only data with one), ``reward`` the reward model, ``auto`` the rule when there is
# one. Public names (config values, and ``win_rate.judge`` in eval.json).
RULE, REWARD = "toy", "reward"
JUDGES = ("auto", RULE, REWARD)


@dataclass
class EvalInputs:
    """What :func:`prepare` checked and loaded: the scorer that decides wins, the data's rule
    and the held-out data."""

    scorer: str  # RULE or REWARD
    prompts: Any  # held-out prompts (a datasets.Dataset, capped at max_prompts)
    pairs: Any = None  # held-out preference pairs, for the reward model's accuracy
    # The data's rule (its source's scorer), when it has one: scored whatever decides wins.
    rule: RuleScorer | None = None
    fitted: Any = None  # lengths.Fitted, once the prompts were fitted to the model's context


@dataclass
class Baseline:
    """The model a policy is compared with, scored as the policy is."""

    role: str  # "reference" or "start"
    scores: dict[str, Any]  # its mean score with a 95 % CI (the rule's: also per category)
    by_rule: bool  # scored by the data's rule, else by the reward model

    def to_dict(self) -> dict[str, Any]:
        """As in eval.json: ``{"role", "judge"|"reward": scores}``."""
        return {"role": self.role, "judge" if self.by_rule else "reward": self.scores}


@dataclass
class EvalResult:
    """What :func:`evaluate` measured; :meth:`to_dict` is eval.json. Every section is a mapping
    of figures with its 95 % interval and n (:mod:`alignlab.stats`), None when not measured."""

    n_prompts: int
    samples_per_prompt: int
    temperature: float
    length: dict[str, Any]  # response length in tokens: mean, n
    rule: dict[str, Any] | None = None  # the data's rule ("judge"): score, per category, ...
    reward: dict[str, Any] | None = None  # the reward model's mean score and pair accuracy
    kl: dict[str, Any] | None = None  # sequence KL(policy || reference)
    win_rate: dict[str, Any] | None = None  # vs the baseline's samples
    baseline: Baseline | None = None
    policy: str | None = None  # what was evaluated (method=eval)
    too_long: dict[str, Any] | None = None  # prompts cut or skipped to fit the context

    def to_dict(self) -> dict[str, Any]:
        """eval.json: the sections measured, under their public names."""
        out: dict[str, Any] = {"n_prompts": self.n_prompts,
                               "samples_per_prompt": self.samples_per_prompt,
                               "temperature": self.temperature, "length": self.length}
        baseline = self.baseline.to_dict() if self.baseline is not None else None
        for key, value in (("judge", self.rule), ("reward", self.reward), ("kl", self.kl),
                           ("win_rate", self.win_rate), ("baseline", baseline),
                           ("policy", self.policy), ("too_long", self.too_long)):
            if value is not None:
                out[key] = value
        return out

    def pick(self, *keys: str) -> dict[str, Any]:
        """The eval.json sections named ``keys`` that were measured (for a stage's metrics)."""
        return {k: v for k, v in self.to_dict().items() if k in keys}


def prepare(cfg: Any, args: EvalArgs, *, reward_model: bool) -> EvalInputs:
    """Check the evaluation's settings and load its held-out data, before any model is loaded.

    ``reward_model``: whether one will be given (its pair accuracy needs held-out pairs).
    Raises AlignlabError (one sentence and a fix) for an unknown or unusable judge, a
    nonsensical setting, or data without the columns evaluation needs; loading models and
    sampling first made a mistake cost the whole start-up instead of a second or two.
    """
    if args.judge not in JUDGES:
        raise AlignlabError(f"method.args.judge={args.judge!r} is not a judge."
                            f"{did_you_mean(str(args.judge), JUDGES)}")
    for name in ("num_samples", "max_new_tokens", "batch_size", "max_prompts"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise AlignlabError(f"method.args.{name}={value} must be at least 1.")
    if args.temperature < 0:
        raise AlignlabError(f"method.args.temperature={args.temperature} must be >= 0 "
                            "(0 = greedy).")
    rule = data.source(cfg.data).rule
    scorer = args.judge if args.judge != "auto" else (RULE if rule is not None else REWARD)
    if scorer == RULE and rule is None:
        raise AlignlabError("method.args.judge=toy only knows the toy world's prompts. Use "
                            "data=toy, or judge=reward with method.reward_model=<reward "
                            "run>/model.")
    if scorer == REWARD and not reward_model:
        raise AlignlabError("Evaluation needs a judge: set method.reward_model=<reward run>/model "
                            "(or use data=toy, whose rule judge needs no model).")
    prompts = data.load(cfg.data, "prompts", "test", keep_extra=True)
    if args.max_prompts:
        prompts = prompts.select(range(min(args.max_prompts, len(prompts))))
    pairs = data.load(cfg.data, "pairs", "test") if reward_model else None
    return EvalInputs(scorer=scorer, prompts=prompts, pairs=pairs, rule=rule)


def fit_prompts(inputs: EvalInputs, model: Any, tokenizer: Any,
                max_new_tokens: int) -> lengths.Fitted:
    """Held-out prompts longer than the model's context (less the answer's room) lose their
    oldest turns until they fit, or are skipped (they went into the model past its position
    limit); ``inputs.prompts`` is replaced, and what was done returned (and kept there)."""
    if inputs.fitted is not None:
        return inputs.fitted
    context = lengths.context_length(model, tokenizer)
    rows = inputs.prompts
    fitted = lengths.Fitted(rows=len(rows), context=context)
    inputs.fitted = fitted
    if context is None:
        return fitted
    budget = context - max_new_tokens

    def fits(turns: list[dict[str, str]]) -> bool:
        ids = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return len(tokenizer(ids, add_special_tokens=False, verbose=False)["input_ids"]) \
            <= budget

    keep, prompts = [], []
    for i, prompt in enumerate(rows["prompt"]):
        turns, cut = lengths.fit_left(prompt, fits)
        if turns is None:
            fitted.skipped.append(str(i))
            continue
        fitted.cut += cut
        keep.append(i)
        prompts.append(turns)
    if fitted.cut or fitted.skipped:
        import datasets

        inputs.prompts = datasets.Dataset.from_list(
            [{**row, "prompt": turns} for row, turns in zip(rows.select(keep), prompts,
                                                            strict=True)])
        log.warning("eval: %s", fitted.line("held-out prompts"))
    return fitted


def evaluate(cfg: Any, policy: Any, tokenizer: Any, args: EvalArgs | None = None, *,
             reference: Any = None, sample_reference: bool = False, reward_model: Any = None,
             reward_tokenizer: Any = None, inputs: EvalInputs | None = None, start: Any = None,
             progress: bool = True) -> tuple[EvalResult, list[dict[str, Any]]]:
    """Sample ``policy`` on the held-out prompts and measure it; returns (result, samples).

    Every 95 % interval is clustered by prompt (see :mod:`alignlab.stats`).

    - data with a rule (the toy world's; ``inputs.rule``, from the data's source): its score
      with a 95 % CI, overall and per category, with refusals and evasiveness. Sampled
      (T=0.7, several samples per prompt), because greedy decoding takes the majority answer
      and hides how mixed a policy still is;
    - ``reward_model``: its mean score on the samples and its accuracy on held-out pairs;
    - ``reference``: sequence KL(policy || reference) on the policy's own samples (see
      :func:`kl_to_reference`; none at temperature 0), and with ``sample_reference`` the win
      rate vs the reference's samples (ties count half);
    - ``start`` (the model training began from; used when the reference is not sampled): the
      win rate vs its samples.

    The model compared with (reference or start) gets its own score in ``baseline`` (with
    ``role``), and its responses stand beside the policy's in the samples
    (``reference_response``, ``reference_score``): "before -> after" on the same prompts.

    Every figure comes with its n (samples, prompts, or held-out pairs). ``inputs``: what
    :func:`prepare` returned, when the caller checked the inputs before loading the models.
    """
    args = args or EvalArgs()
    inputs = inputs or prepare(cfg, args, reward_model=reward_model is not None)
    fitted = fit_prompts(inputs, policy, tokenizer, args.max_new_tokens)
    if not inputs.prompts.num_rows:
        raise AlignlabError(f"Every held-out prompt is longer than the model's context "
                            f"({fitted.context} tokens, less max_new_tokens="
                            f"{args.max_new_tokens}), so nothing can be evaluated. Lower "
                            "method.args.max_new_tokens or use data with shorter prompts.")
    scorer, rule, prompts_ds = inputs.scorer, inputs.rule, inputs.prompts
    prompts = list(prompts_ds["prompt"])
    flat = [p for p in prompts for _ in range(args.num_samples)]
    # The prompt of each sample: intervals are clustered by prompt, whose samples correlate.
    groups = [i // args.num_samples for i in range(len(flat))]

    def sample(model: Any) -> tuple[list[str], list[list[int]]]:
        texts, ids = generate(model, tokenizer, prompts, num_samples=args.num_samples,
                              temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                              batch_size=args.batch_size, seed=cfg.seed, progress=progress,
                              return_ids=True)
        return [r for rs in texts for r in rs], [x for xs in ids for x in xs]

    responses, response_ids = sample(policy)
    sizes = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses]
    result = EvalResult(n_prompts=len(prompts), samples_per_prompt=args.num_samples,
                        temperature=args.temperature,
                        length={"mean": sum(sizes) / max(1, len(sizes)), "n": len(sizes)},
                        too_long=fitted.to_dict() if fitted.cut or fitted.skipped else None)
    scores: dict[str, list[float]] = {}
    if rule is not None:
        by_rule = rule(flat, responses)
        scores[RULE] = by_rule.items
        result.rule = _rule_section(by_rule, groups)
    if reward_model is not None:
        scores[REWARD] = reward_scores(reward_model, reward_tokenizer, flat, responses)
        correct = reward_pair_correct(reward_model, reward_tokenizer, inputs.pairs)
        # Pairs sharing a prompt are clustered like samples.
        accuracy = stats.mean_ci(correct, groups=[json.dumps(p, sort_keys=True)
                                                  for p in inputs.pairs["prompt"]])
        result.reward = {**stats.mean_ci(scores[REWARD], groups=groups),
                         "accuracy": accuracy["mean"],
                         **{f"accuracy_{k}": v for k, v in accuracy.items() if k != "mean"}}
    ref_responses: list[str] | None = None
    ref_scores: list[float] | None = None
    if reference is not None:
        if args.temperature > 0:
            result.kl = kl_to_reference(policy, reference, tokenizer, flat, response_ids,
                                        temperature=args.temperature, groups=groups)
        else:
            log.info("evaluation: no KL to the reference at temperature 0 (greedy responses "
                     "are not samples of a distribution)")
    baseline, role = (reference, "reference") if reference is not None and sample_reference \
        else (start, "start")
    if baseline is not None and (scorer == RULE or reward_model is not None):
        ref_responses = sample(baseline)[0]
        if scorer == RULE:
            ref_by_rule = rule(flat, ref_responses)
            ref_scores = ref_by_rule.items
            section = _rule_section(ref_by_rule, groups)
            section["per_category_n"] = section.pop("per_category_n")  # last, as it always was
        else:
            ref_scores = reward_scores(reward_model, reward_tokenizer, flat, ref_responses)
            ci = stats.mean_ci(ref_scores, groups=groups)
            section = {"score": ci["mean"], **ci}
        outcomes = stats.outcomes_from_scores(scores[scorer], ref_scores)
        result.win_rate = {**stats.win_rate(outcomes, groups=groups), "judge": scorer,
                           "versus": role}
        result.baseline = Baseline(role=role, scores=section, by_rule=scorer == RULE)
    categories = prompts_ds["category"] if "category" in prompts_ds.column_names else None
    samples = [{"prompt": p[-1]["content"], "response": r,
                "reference_response": ref_responses[i] if ref_responses else None,
                "reference_score": ref_scores[i] if ref_scores else None,
                "score": scores[scorer][i] if scorer in scores else None,
                "category": categories[i // args.num_samples] if categories else None}
               for i, (p, r) in enumerate(zip(flat, responses, strict=True))]
    return result, samples


def _rule_section(by_rule: RuleScores, groups: list[int]) -> dict[str, Any]:
    """The rule's figures in eval.json (``judge``): its mean score with a 95 % CI clustered by
    prompt, per category (with each category's n), refusals and evasiveness."""
    ci = stats.mean_ci(by_rule.items, groups=groups)
    return {"score": ci["mean"], **ci, "per_category": by_rule.per_category,
            "per_category_n": by_rule.per_category_n(), "refusals": by_rule.refusals,
            "evasiveness": by_rule.evasiveness}


def write(run_dir: Path, result: EvalResult, samples: list[dict[str, Any]]) -> None:
    """``eval.json`` and ``samples.jsonl`` in the run directory."""
    runs.write_json(run_dir / "eval.json", result.to_dict())
    runs.atomic_write(run_dir / "samples.jsonl",
                      "".join(json.dumps(s) + "\n" for s in samples))


def reward_accuracy(model: Any, tokenizer: Any, pairs: Any) -> float:
    """Share of held-out pairs where the reward model scores ``chosen`` above ``rejected``."""
    correct = reward_pair_correct(model, tokenizer, pairs)
    return sum(correct) / max(1, len(correct))


def reward_pair_correct(model: Any, tokenizer: Any, pairs: Any) -> list[float]:
    """Per held-out pair: 1.0 when the reward model scores ``chosen`` above ``rejected``."""
    def reply(column: str) -> list[str]:
        return [c[-1]["content"] for c in pairs[column]]

    chosen = reward_scores(model, tokenizer, pairs["prompt"], reply("chosen"))
    rejected = reward_scores(model, tokenizer, pairs["prompt"], reply("rejected"))
    return [float(c > r) for c, r in zip(chosen, rejected, strict=True)]


def kl_to_reference(policy: Any, reference: Any, tokenizer: Any, prompts: list,
                    response_ids: list[list[int]], *, temperature: float,
                    groups: list[int] | None = None) -> dict[str, Any]:
    """Sequence KL(policy || reference) of the policy's sampled responses.

    ``response_ids`` are the tokens sampled from the policy at ``temperature`` (see
    ``generate(return_ids=True)``), scored as they are under both models at that same
    temperature, so each log-ratio is log pi_T(y|x) - log ref_T(y|x) for y ~ pi_T: its mean is
    an unbiased Monte-Carlo estimate of KL(pi_T || ref_T), which is never negative.
    Scoring decoded and re-tokenised text at T=1, with an EOS appended to responses cut at the
    length limit, estimated no KL at all (and could come out negative).
    ``groups`` (the prompt of each sample) clusters the standard errors by prompt.
    """
    logp = sequence_logprobs(policy, tokenizer, prompts, response_ids, temperature=temperature)
    logq = sequence_logprobs(reference, tokenizer, prompts, response_ids,
                             temperature=temperature)
    result: dict[str, Any] = stats.sequence_kl(logp, logq, groups=groups)
    of = f" of {result['n_prompts']} prompts" if "n_prompts" in result else ""
    result["definition"] = (
        "sequence KL(policy‖reference) of the sampled responses: Monte-Carlo estimate of "
        f"E[log π(y|x) − log π_ref(y|x)], y ~ π, both at T={temperature:g}, "
        f"n={result['n']} samples{of}")
    return result


def sequence_logprobs(model: Any, tokenizer: Any, prompts: list, response_ids: list[list[int]],
                      *, temperature: float = 1.0, batch_size: int = 32) -> list[float]:
    """Summed log-probability of each response under ``model`` sampling at ``temperature``.

    ``response_ids`` are token ids as sampled (an EOS token counts only when it is there); the
    prompt is encoded exactly as ``generate`` encodes it. log softmax(logits / T) is the
    distribution ``generate`` draws from at temperature T. Sequences are left-padded, so the
    response tokens sit at the end and only the last positions' logits are computed.
    """
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    try:
        for i in range(0, len(prompts), batch_size):
            tails = [list(t) for t in response_ids[i:i + batch_size]]
            # As ``generate`` encodes a prompt: the chat template as text, then tokenised.
            seqs = [tokenizer(tokenizer.apply_chat_template(list(p), tokenize=False,
                                                            add_generation_prompt=True),
                              add_special_tokens=False)["input_ids"] + t
                    for p, t in zip(prompts[i:i + batch_size], tails, strict=True)]
            width = max(len(x) for x in seqs)
            keep = max(len(t) for t in tails) + 1  # the response tokens and the one before
            input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for j, x in enumerate(seqs):
                input_ids[j, width - len(x):] = torch.tensor(x)
                mask[j, width - len(x):] = 1
            inputs = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device),
                      "position_ids": ((mask.cumsum(-1) - 1).clamp(min=0)).to(device)}
            with torch.no_grad():
                try:
                    logits = model(**inputs, logits_to_keep=keep).logits
                except TypeError:  # a model without logits_to_keep: take them all
                    logits = model(**inputs).logits[:, -keep:]
            logp = torch.log_softmax(logits[:, :-1].float() / temperature, -1).cpu()
            target = input_ids[:, width - keep + 1:]
            logp = logp.gather(-1, target[..., None])[..., 0]
            # Column c predicts the token at width - keep + 1 + c: a response token when it
            # lies within the last len(tail) positions.
            lengths = torch.tensor([len(t) for t in tails])
            is_response = torch.arange(keep - 1)[None] >= (keep - 1) - lengths[:, None]
            # where, not a product: a prompt token the model rules out has log-prob -inf.
            out += torch.where(is_response, logp, 0.0).sum(-1).tolist()
    finally:
        model.train(was_training)
    return out


def reward_scores(model: Any, tokenizer: Any, prompts: list, responses: list[str],
                  batch_size: int = 32, max_length: int | None = None) -> list[float]:
    """Reward-model score of each (prompt, response).

    Rows are scored shortest first, so a batch pads little, and a row longer than ``max_length``
    (default: the model's context, at most 4096) keeps its last tokens, where the reply is: real
    multi-turn conversations run to thousands of tokens, and one of them padded a whole batch
    (and its attention) to its length.
    """
    import torch
    from tqdm.auto import tqdm

    texts = [tokenizer.apply_chat_template([*p, {"role": "assistant", "content": r}],
                                           tokenize=False)
             for p, r in zip(prompts, responses, strict=True)]
    limit = max_length or min(lengths.context_length(model, tokenizer) or 4096, 4096)
    ids = [x[-limit:] for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    model.eval()
    out = [0.0] * len(ids)
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc="reward model", disable=len(batches) < 4):
        idx = order[start:start + batch_size]
        width = max(len(ids[i]) for i in idx)
        batch = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):  # right padding, as the reward model was trained
            batch[row, :len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
            mask[row, :len(ids[i])] = 1
        with torch.no_grad():
            logits = model(input_ids=batch.to(device), attention_mask=mask.to(device)).logits
        for row, i in enumerate(idx):
            out[i] = float(logits[row, 0])
    return out
