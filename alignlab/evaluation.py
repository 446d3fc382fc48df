"""Evaluation shared by ``method=eval`` and the quick evaluation at the end of each stage."""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from alignlab import config, data, lengths, runs, stats
from alignlab.args import Backend
from alignlab.data import RuleScorer, RuleScores
from alignlab.errors import AlignlabError
from alignlab.generation import generate, left_pad

log = logging.getLogger("alignlab")


@dataclass
class EvalArgs:
    """Settings of ``method=eval`` (``method.args.<name>``)."""

    num_samples: int = field(default=3, metadata={"at_least": 1,
        "help": "Samples per held-out prompt."})
    temperature: float = field(default=0.7, metadata={"at_least": 0,
        "help": "Sampling temperature (0 = greedy)."})
    max_new_tokens: int = field(default=48, metadata={"at_least": 1,
        "help": "Longest response generated."})
    max_prompts: int | None = field(default=None, metadata={"at_least": 1,
        "help": "Cap on held-out prompts."})
    batch_size: int = field(default=64, metadata={"at_least": 1,
        "help": "Prompts per generate call."})
    judge: Judge = field(default="auto", metadata={
        "help": "Who decides wins: toy (the toy world's rule), reward (the reward model), llm "
                "(an LLM judge, judge_model, in both orders), or auto (toy on the toy world, "
                "else reward)."})
    num_examples: int = field(default=8, metadata={"at_least": 0,
        "help": "Samples shown in the report."})
    task: Literal["answers", "pairs"] = field(default="answers", metadata={
        "help": "answers: sample the policy on held-out prompts; pairs: score the data's "
                "labelled pairs with the reward model or the LLM judge (accuracy per category "
                "and calibration, as RewardBench), no policy needed."})
    split: Literal["test", "train", "all"] = field(default="test", metadata={
        "help": "The data split evaluated: test, train, or all (every row of the train "
                "split, none held out: a benchmark file)."})
    baseline_answers: str | None = field(default=None, metadata={
        "help": "A .json/.jsonl file of answers to compare with (prompt or instruction, and "
                "response or output), instead of sampling method.reference."})
    judge_model: str | None = field(default=None, metadata={
        "help": "judge=llm: the judge, a model folder, .gguf, builtin:<name> or hub id "
                "(judge_backend=openai: the served model name)."})
    judge_backend: Backend = field(default="transformers", metadata={
        "help": "judge=llm: transformers (in this process), openai (an OpenAI-compatible "
                "server at judge_base_url) or vllm."})
    judge_base_url: str | None = field(default=None, metadata={
        "help": "judge_backend=openai: the server's base URL, e.g. http://127.0.0.1:8000/v1."})
    judge_api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "judge_backend=openai: the environment variable holding the API key."})
    judge_concurrency: int = field(default=8, metadata={"at_least": 1,
        "help": "judge_backend=openai: requests in flight at once."})
    rubric: str | None = field(default=None, metadata={
        "help": "judge=llm: a text file holding the judge's question, or a constitution YAML "
                "(its choice questions); default: the configured constitution's, else a "
                "helpfulness question."})
    judge_cache: str | None = field(default=None, metadata={
        "help": "judge=llm: folder of cached verdicts (default: judgements/ in the run dir); "
                "point runs at one folder to share them."})


# Values of ``EvalArgs.judge``, the scorer that decides wins: ``toy`` is the data's rule (the toy
# world's, the only data with one), ``reward`` the reward model, ``auto`` the rule when there is
# one. Public names (config values, and ``win_rate.judge`` in eval.json).
RULE, REWARD, LLM = "toy", "reward", "llm"
Judge = Literal["auto", "toy", "reward", "llm"]
JUDGES = get_args(Judge)
ARGS = f"{__name__}:EvalArgs"


@dataclass
class EvalInputs:
    """What :func:`prepare` checked and loaded: the scorer that decides wins, the data's rule
    and the held-out data."""

    scorer: str  # RULE, REWARD or LLM
    prompts: Any  # held-out prompts (a datasets.Dataset, capped at max_prompts)
    pairs: Any = None  # held-out preference pairs, for the reward model's accuracy
    answers: dict[str, str] | None = None  # baseline_answers, by the prompt's last user turn
    safety: dict[str, str] | None = None  # category -> safe/unsafe (the data's source says)
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
    pairs: dict[str, Any] | None = None  # task=pairs: the scorer's accuracy on labelled pairs
    safety: dict[str, Any] | None = None  # over-refusal and compliance with unsafe prompts

    def to_dict(self) -> dict[str, Any]:
        """eval.json: the sections measured, under their public names."""
        out: dict[str, Any] = {"n_prompts": self.n_prompts}
        if self.pairs is None:  # sampled answers (task=pairs samples nothing)
            out.update(samples_per_prompt=self.samples_per_prompt,
                       temperature=self.temperature, length=self.length)
        baseline = self.baseline.to_dict() if self.baseline is not None else None
        for key, value in (("judge", self.rule), ("reward", self.reward), ("kl", self.kl),
                           ("win_rate", self.win_rate), ("baseline", baseline),
                           ("policy", self.policy), ("too_long", self.too_long),
                           ("pairs", self.pairs), ("safety", self.safety)):
            if value is not None:
                out[key] = value
        return out

    def pick(self, *keys: str) -> dict[str, Any]:
        """The eval.json sections named ``keys`` that were measured (for a stage's metrics)."""
        return {k: v for k, v in self.to_dict().items() if k in keys}


def prepare(cfg: Any, args: EvalArgs, *, reward_model: bool,
            pair_accuracy: bool = True) -> EvalInputs:
    """Check the evaluation's settings and load its held-out data, before any model is loaded.

    ``reward_model``: whether one will be given (its pair accuracy needs held-out pairs,
    unless ``pair_accuracy`` is False).
    Raises AlignlabError (one sentence and a fix) for an unknown or unusable judge, a
    nonsensical setting, or data without the columns evaluation needs; loading models and
    sampling first made a mistake cost the whole start-up instead of a second or two.
    """
    check_args(vars(args))
    rule = data.source(cfg.data).rule
    if args.split == "all" and rule is not None:
        raise AlignlabError("method.args.split=all is for data files; the toy world's splits "
                            "are train and test.")
    if args.task == "pairs":
        return _prepare_pairs(cfg, args, reward_model=reward_model, rule=rule)
    scorer = args.judge if args.judge != "auto" else (RULE if rule is not None else REWARD)
    if scorer == RULE and rule is None:
        raise AlignlabError("method.args.judge=toy only knows the toy world's prompts. Use "
                            "data=toy, or judge=reward with method.reward_model=<reward "
                            "run>/model.")
    if scorer == REWARD and not reward_model:
        raise AlignlabError("Evaluation needs a judge: set method.reward_model=<reward run>/model "
                            "(or use data=toy, whose rule judge needs no model).")
    prompts = data.load(cfg.data, "prompts", args.split, keep_extra=True)
    if args.max_prompts:
        prompts = prompts.select(range(min(args.max_prompts, len(prompts))))
    pairs = data.load(cfg.data, "pairs", args.split) if reward_model and pair_accuracy \
        else None
    answers = None
    if args.baseline_answers:
        answers = read_answers(args.baseline_answers)
        missing = [p for p in prompts["prompt"] if _last_user(p) not in answers]
        if missing:
            raise AlignlabError(
                f"method.args.baseline_answers has no answer for {len(missing)} of the "
                f"{len(prompts)} held-out prompts (the first: {_last_user(missing[0])[:60]!r}). "
                "Answer every prompt of the evaluated split there, keyed by its last user turn.")
    marked = "safety" in prompts.column_names
    if marked:
        found = sorted({str(v) for v in prompts["safety"]} - {"safe", "unsafe"})
        if found:
            raise AlignlabError(f"The prompts' safety column holds {found[:3]}; it must be safe "
                                "or unsafe (map another column with data.columns='{safety: "
                                "<column>}').")
        if rule is None and scorer != LLM:
            raise AlignlabError("The prompts are marked safe/unsafe, but nothing decides which "
                                "answers refuse: set method.args.judge=llm and "
                                "method.args.judge_model=<judge>.")
    if scorer == LLM and not answers and not cfg.method.reference and not marked:
        raise AlignlabError("method.args.judge=llm compares the policy with a baseline: set "
                            "method.reference=<model> (its answers are sampled) or "
                            "method.args.baseline_answers=<answers.jsonl>.")
    source = data.source(cfg.data)
    return EvalInputs(scorer=scorer, prompts=prompts, pairs=pairs, rule=rule, answers=answers,
                      safety=dict(source.safety) or None)


def check_args(args: dict[str, Any]) -> None:
    """The choices and files of ``method.args`` that need no config around them (run by
    config validation before anything loads, and by :func:`prepare`)."""
    from alignlab import backends

    config.check_rules(args, ARGS, "method.args")  # the choices and bounds of EvalArgs
    judge = args.get("judge", "auto")
    for key in ("baseline_answers", "rubric"):
        value = args.get(key)
        if value and not Path(str(value)).expanduser().exists():
            raise AlignlabError(f"method.args.{key}='{value}' does not exist. Point it at a "
                                "file, or leave it unset.")
    if judge != LLM:
        for key in ("judge_model", "rubric", "judge_base_url"):
            if args.get(key):
                raise AlignlabError(f"method.args.{key} is set but method.args.judge={judge}: "
                                    f"set method.args.judge=llm to use an LLM judge.")
        return
    model = args.get("judge_model")
    if not model:
        raise AlignlabError("method.args.judge=llm needs method.args.judge_model: a model "
                            "folder, .gguf or builtin:<name> (or the served name with "
                            "judge_backend=openai). The policy is never its own judge.")
    bargs = backend_args(args)
    backends.check(bargs)
    env = args.get("judge_api_key_env")
    if isinstance(env, str) and env and not env.replace("_", "").isalnum():
        raise AlignlabError("method.args.judge_api_key_env must be the name of an environment "
                            "variable (e.g. OPENAI_API_KEY), not the key itself.")
    if bargs.backend != "openai" and runs.looks_local(str(model)) \
            and not Path(str(model)).expanduser().exists():
        raise AlignlabError(f"method.args.judge_model='{model}' does not exist. Point it at a "
                            "model folder or .gguf file, or use judge_backend=openai for a "
                            "served model.")


def backend_args(args: dict[str, Any]) -> Any:
    """The LLM judge's backend settings (BackendArgs) from ``method.args``."""
    from alignlab.args import BackendArgs

    return BackendArgs(backend=args.get("judge_backend", "transformers"),
                       base_url=args.get("judge_base_url"),
                       api_key_env=args.get("judge_api_key_env", "OPENAI_API_KEY"),
                       concurrency=int(args.get("judge_concurrency", 8)),
                       batch_size=JUDGE_BATCH, max_new_tokens=1,
                       temperature=0.0)


def read_answers(path: str) -> dict[str, str]:
    """Answers in a .json/.jsonl file, by the prompt's text: rows with ``prompt`` (a string or
    messages) or ``instruction`` (AlpacaEval), and ``response`` or ``output``."""
    file = Path(path).expanduser()
    text = file.read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if file.suffix == ".json" else \
            [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise AlignlabError(f"method.args.baseline_answers='{path}' is not valid JSON "
                            f"({err.msg}, line {err.lineno}). Write one JSON object a line: "
                            '{"prompt": ..., "response": ...}.') from None
    out: dict[str, str] = {}
    for n, row in enumerate(rows if isinstance(rows, list) else [], 1):
        prompt = row.get("prompt", row.get("instruction")) if isinstance(row, dict) else None
        answer = row.get("response", row.get("output")) if isinstance(row, dict) else None
        if prompt is None or not isinstance(answer, str):
            raise AlignlabError(f"Row {n} of method.args.baseline_answers='{path}' needs a "
                                "prompt (or instruction) and a response (or output) string.")
        out[_last_user(prompt)] = answer
    if not out:
        raise AlignlabError(f"method.args.baseline_answers='{path}' holds no answers.")
    return out


def _last_user(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt.strip()
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return (users[-1] if users else "").strip()


def _prepare_pairs(cfg: Any, args: EvalArgs, *, reward_model: bool,
                   rule: RuleScorer | None) -> EvalInputs:
    """``task=pairs``: the labelled pairs of the split, scored by the reward model or the LLM
    judge."""
    scorer = args.judge if args.judge != "auto" else REWARD
    if scorer == RULE:
        raise AlignlabError("method.args.task=pairs scores labelled pairs with a reward model "
                            "or an LLM judge: use method.args.judge=reward (and "
                            "method.reward_model) or judge=llm.")
    if scorer == REWARD and not reward_model:
        raise AlignlabError("method.args.task=pairs needs a scorer: method.reward_model=<reward "
                            "run>/model, or method.args.judge=llm with method.args.judge_model.")
    pairs = data.load(cfg.data, "pairs", args.split, keep_extra=True)
    if args.max_prompts:
        pairs = pairs.select(range(min(args.max_prompts, len(pairs))))
    return EvalInputs(scorer=scorer, prompts=None, pairs=pairs, rule=rule)


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
        marks = safety_marks(inputs, args.num_samples)
        if marks is not None and by_rule.refused:
            result.safety = safety_section([float(r) for r in by_rule.refused], marks, groups,
                                           by_rule.categories, decided_by=RULE)
    if reward_model is not None:
        scores[REWARD] = reward_scores(reward_model, reward_tokenizer, flat, responses)
        result.reward = stats.mean_ci(scores[REWARD], groups=groups)
        if inputs.pairs is not None:
            correct = reward_pair_correct(reward_model, reward_tokenizer, inputs.pairs)
            # Pairs sharing a prompt are clustered like samples.
            accuracy = stats.mean_ci(correct, groups=[json.dumps(p, sort_keys=True)
                                                      for p in inputs.pairs["prompt"]])
            result.reward.update(accuracy=accuracy["mean"], **{
                f"accuracy_{k}": v for k, v in accuracy.items() if k != "mean"})
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
    # The baseline's own scorer: the rule where the data has one, else the reward model.
    by = RULE if rule is not None and scorer in (RULE, LLM) else \
        REWARD if reward_model is not None else None
    if inputs.answers is not None:
        ref_responses, role = [inputs.answers[_last_user(p)] for p in flat], "answers"
    elif baseline is not None and (by is not None or scorer == LLM):
        ref_responses = sample(baseline)[0]
    if ref_responses is not None and by is not None:
        if by == RULE:
            ref_by_rule = rule(flat, ref_responses)
            ref_scores = ref_by_rule.items
            section = _rule_section(ref_by_rule, groups)
            section["per_category_n"] = section.pop("per_category_n")  # last, as it always was
        else:
            ref_scores = reward_scores(reward_model, reward_tokenizer, flat, ref_responses)
            ci = stats.mean_ci(ref_scores, groups=groups)
            section = {"score": ci["mean"], **ci}
        if scorer != LLM:  # the LLM judge's win rate comes from judge_answers
            outcomes = stats.outcomes_from_scores(scores[scorer], ref_scores)
            result.win_rate = {**stats.win_rate(outcomes, groups=groups), "judge": scorer,
                               "versus": role}
        result.baseline = Baseline(role=role, scores=section, by_rule=by == RULE)
    shown = scorer if scorer in scores else by
    categories = prompts_ds["category"] if "category" in prompts_ds.column_names else None
    samples = [{"prompt": p[-1]["content"], "response": r,
                "reference_response": ref_responses[i] if ref_responses else None,
                "reference_score": ref_scores[i] if ref_scores else None,
                "score": scores[shown][i] if shown in scores else None,
                "category": categories[i // args.num_samples] if categories else None}
               for i, (p, r) in enumerate(zip(flat, responses, strict=True))]
    return result, samples


def load_judge(cfg: Any, args: EvalArgs) -> tuple[Any, Any, str]:
    """The LLM judge (a backend), its rubric and its identity in the verdict cache."""
    from alignlab import backends, verdicts

    book = verdicts.rubric(args.rubric, cfg.get("constitution"))
    bargs = backend_args(vars(args))
    judge = backends.create(bargs, cfg, str(args.judge_model))
    return judge, book, verdicts.judge_identity(bargs.backend, str(args.judge_model))


JUDGE_BATCH = 16  # pairs (two queries each) per judge call and durable chunk


def _judged(cfg: Any, items: list[dict[str, Any]], judge: Any, book: Any, what: str, fix: str,
            ask: Any) -> tuple[list[dict[str, Any]], list[Any], dict[str, int], Any]:
    """``ask(items)`` (the cached verdicts) after fitting the items to the judge's context;
    refused past ``data.max_dropped`` before anything is asked, and again after, counting what
    a server refused as too long. Returns the items kept, their verdicts, the counts and what
    fitting did (one line when anything was cut or skipped)."""
    from alignlab import verdicts

    max_dropped = float(cfg.data.max_dropped)
    items, fitted = verdicts.fit(items, judge, book)
    fitted.check(what, max_dropped, fix)
    found, counts = ask(items)
    items, found = verdicts.drop_refused(items, found, fitted, what, max_dropped, fix)
    if fitted.cut or fitted.skipped:
        log.warning("eval: %s", fitted.line(what))
    return items, found, counts, fitted


def _compared(cfg: Any, items: list[dict[str, Any]], judge: Any, book: Any, judge_id: str,
              cache: Path, what: str, fix: str) -> tuple[list[dict[str, Any]], list[Any],
                                                         dict[str, int], Any]:
    """:func:`_judged` with the judge comparing each pair's ``a`` and ``b`` in both orders."""
    from alignlab import verdicts

    return _judged(cfg, items, judge, book, what, fix,
                   lambda kept: verdicts.compare(kept, judge, book, judge_id=judge_id,
                                                 cache=cache, seed=cfg.seed,
                                                 batch_size=JUDGE_BATCH,
                                                 kill_at=runs.kill_after_step("eval")))


def judge_answers(cfg: Any, args: EvalArgs, inputs: EvalInputs, result: EvalResult,
                  samples: list[dict[str, Any]], judge: Any, book: Any, judge_id: str,
                  cache: Path) -> None:
    """The LLM judge's win rate of the policy's answers over the baseline's (``samples``,
    from :func:`evaluate`): each pair asked in both orders; ties half; 95 % interval clustered
    by prompt; position consistency; the length-controlled win rate. Fills
    ``result.win_rate`` and each sample's ``judge_p`` (P(policy's answer better))."""
    from alignlab import verdicts

    flat = [p for p in inputs.prompts["prompt"] for _ in range(args.num_samples)]
    pairs = [{"key": str(i), "prompt": list(conv), "a": s["response"],
              "b": s["reference_response"]} for i, (conv, s) in enumerate(zip(flat, samples,
                                                                               strict=True))]
    pairs, found, counts, fitted = _compared(
        cfg, pairs, judge, book, judge_id, cache, "comparisons",
        "Use a judge with a longer context (method.args.judge_model), or lower "
        "method.args.max_new_tokens")
    index = [int(p["key"]) for p in pairs]
    for i, v in zip(index, found, strict=True):
        samples[i]["judge_p"] = v["p"]
    groups = [i // args.num_samples for i in index]
    result.win_rate = {
        **verdicts.win_rate(found, [len(pairs[j]["a"]) for j in range(len(pairs))],
                            [len(pairs[j]["b"]) for j in range(len(pairs))], groups,
                            seed=cfg.seed),
        "judge": LLM, "judge_model": str(args.judge_model), "rubric": book.name,
        "versus": "answers" if inputs.answers is not None else "reference",
        "judgements": counts,
        **({"too_long": fitted.to_dict()} if fitted.cut or fitted.skipped else {})}
    log.info("eval: judged %d comparisons (%d asked now, %d from the cache, %d identical)",
             len(found), counts["asked"], counts["cached"], counts["identical"])


def safety_marks(inputs: EvalInputs, num_samples: int) -> list[str] | None:
    """Each sample's prompt's mark, safe or unsafe: the prompts' safety column, else the
    source's mark of their category; None when the prompts are not marked."""
    ds = inputs.prompts
    if "safety" in ds.column_names:
        marks = [str(v) for v in ds["safety"]]
    elif inputs.safety and "category" in ds.column_names:
        marks = [inputs.safety.get(str(c), "") for c in ds["category"]]
    else:
        return None
    return [m for m in marks for _ in range(num_samples)]


def safety_section(refused: list[float], marks: list[str], groups: list[Any],
                   categories: list[Any] | None, *, decided_by: str) -> dict[str, Any] | None:
    """Over-refusal (the share of answers to safe prompts that refuse) and compliance with
    unsafe prompts (the share that do not), each with its 95 % interval clustered by prompt,
    and the share refused per category (XSTest's layout)."""
    out: dict[str, Any] = {"decided_by": decided_by}
    for name, mark, value in (("over_refusal", "safe", lambda r: r),
                              ("unsafe_compliance", "unsafe", lambda r: 1.0 - r)):
        idx = [i for i, m in enumerate(marks) if m == mark]
        if idx:
            out[name] = stats.mean_ci([value(refused[i]) for i in idx],
                                      groups=[groups[i] for i in idx])
    if len(out) == 1:
        return None
    if categories is not None and any(c is not None for c in categories):
        per: dict[str, Any] = {}
        for cat in sorted({str(c) for c in categories}):
            idx = [i for i, c in enumerate(categories) if str(c) == cat]
            per[cat] = {"refused": sum(refused[i] for i in idx) / len(idx), "n": len(idx),
                        "safety": marks[idx[0]]}
        out["per_category"] = per
    return out


def judge_refusals(cfg: Any, args: EvalArgs, inputs: EvalInputs, result: EvalResult,
                   samples: list[dict[str, Any]], judge: Any, judge_id: str,
                   cache: Path) -> None:
    """The LLM judge decides which answers refuse, on prompts marked safe/unsafe: fills
    ``result.safety`` and each sample's ``refused`` (P(it refuses))."""
    from alignlab import verdicts

    marks = safety_marks(inputs, args.num_samples)
    if marks is None:
        return
    flat = [p for p in inputs.prompts["prompt"] for _ in range(args.num_samples)]
    items = [{"key": str(i), "prompt": list(conv), "a": s["response"], "b": ""}
             for i, (conv, s) in enumerate(zip(flat, samples, strict=True))]
    items, probs, counts, _ = _judged(
        cfg, items, judge, None, "answers (for the refusal judge)", "Use a judge with a "
        "longer context, or lower method.args.max_new_tokens",
        lambda kept: verdicts.refusals(kept, judge, judge_id=judge_id, cache=cache,
                                       batch_size=JUDGE_BATCH,
                                       kill_at=runs.kill_after_step("eval")))
    index = [int(it["key"]) for it in items]
    for i, p in zip(index, probs, strict=True):
        samples[i]["refused"] = p
    cats = [samples[i]["category"] for i in index]
    section = safety_section([float(p > 0.5) for p in probs], [marks[i] for i in index],
                             [i // args.num_samples for i in index],
                             cats if any(c is not None for c in cats) else None,
                             decided_by=LLM)
    if section is not None:
        result.safety = {**section, "judge_model": str(args.judge_model), "judgements": counts}


CALIBRATION_EDGES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def calibration(p_chosen: list[float], groups: list[Any]) -> dict[str, Any]:
    """Accuracy by confidence: pairs bucketed by the scorer's confidence max(p, 1 - p) in its
    answer (p = P(chosen better)), each bucket's accuracy with its 95 % interval beside its mean
    confidence, and the expected calibration error (the n-weighted mean gap)."""
    from alignlab import verdicts

    buckets, gap = [], 0.0
    for low, high in itertools.pairwise(CALIBRATION_EDGES):
        idx = [i for i, p in enumerate(p_chosen)
               if low <= max(p, 1 - p) < high or (high == 1.0 and max(p, 1 - p) == 1.0)]
        if not idx:
            continue
        hits = [verdicts.outcome(p_chosen[i]) for i in idx]
        conf = sum(max(p_chosen[i], 1 - p_chosen[i]) for i in idx) / len(idx)
        ci = stats.interval(hits, groups=[groups[i] for i in idx])
        buckets.append({"confidence": [low, high], "mean_confidence": conf,
                        **ci.to_json("accuracy")})
        gap += len(idx) * abs(ci.mean - conf)
    return {"buckets": buckets, "ece": gap / max(1, len(p_chosen))}


def pair_benchmark(cfg: Any, args: EvalArgs, inputs: EvalInputs, *, reward_model: Any = None,
                   reward_tokenizer: Any = None, judge: Any = None, book: Any = None,
                   judge_id: str = "", cache: Path | None = None
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``task=pairs``: how often the scorer prefers the labelled chosen reply, overall and per
    category (the data's ``category`` column; RewardBench's ``subset`` via data.columns), each
    with its 95 % interval clustered by prompt and n, and its calibration. The reward model's
    P(chosen) is sigmoid(margin) (Bradley-Terry); the LLM judge's is the mean of both orders.
    Returns eval.json's ``pairs`` section and one row per pair."""
    from alignlab import verdicts

    pairs = inputs.pairs
    replies = {c: [_reply(x) for x in pairs[c]] for c in ("chosen", "rejected")}
    prompts = [list(p) for p in pairs["prompt"]]
    extra: dict[str, Any] = {}
    keep = list(range(len(prompts)))
    if inputs.scorer == REWARD:
        chosen = reward_scores(reward_model, reward_tokenizer, prompts, replies["chosen"])
        rejected = reward_scores(reward_model, reward_tokenizer, prompts, replies["rejected"])
        margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
        p_chosen = [1.0 / (1.0 + math.exp(-max(min(m, 50.0), -50.0))) for m in margins]
    else:
        assert cache is not None
        items = [{"key": str(i), "prompt": p, "a": c, "b": r} for i, (p, c, r) in
                 enumerate(zip(prompts, replies["chosen"], replies["rejected"], strict=True))]
        items, found, counts, fitted = _compared(
            cfg, items, judge, book, judge_id, cache, "pairs",
            "Use a judge with a longer context (method.args.judge_model), or data with fewer "
            "turns")
        if fitted.cut or fitted.skipped:
            extra["too_long"] = fitted.to_dict()
        keep = [int(it["key"]) for it in items]
        p_chosen = [v["p"] for v in found]
        margins = [v["p"] - 0.5 for v in found]
        extra.update(position_consistency=verdicts.position_stats(found)[
            "position_consistency"], judgements=counts, judge_model=str(args.judge_model),
            rubric=book.name)
    groups = [json.dumps(prompts[i], sort_keys=True) for i in keep]
    hits = [verdicts.outcome(p) for p in p_chosen]
    cats = list(pairs["category"]) if "category" in pairs.column_names else None
    ci = stats.mean_ci(hits, groups=groups)
    section: dict[str, Any] = {"accuracy": ci["mean"], **{k: v for k, v in ci.items()
                                                          if k != "mean"},
                               "scorer": inputs.scorer, "split": args.split}
    if cats is not None:
        per: dict[str, Any] = {}
        for cat in sorted({str(cats[i]) for i in keep}):
            idx = [j for j, i in enumerate(keep) if str(cats[i]) == cat]
            per[cat] = stats.interval([hits[j] for j in idx],
                                      groups=[groups[j] for j in idx]).to_json("accuracy")
        section["per_category"] = per
    section["calibration"] = calibration(p_chosen, groups)
    section.update(extra)
    rows = [{"prompt": _last_user(prompts[i]), "chosen": replies["chosen"][i],
             "rejected": replies["rejected"][i], "p_chosen": p, "margin": m,
             "category": cats[i] if cats else None}
            for i, p, m in zip(keep, p_chosen, margins, strict=True)]
    return section, rows


def _reply(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "".join(m["content"] for m in value if m["role"] == "assistant")


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
            keep = max(len(t) for t in tails) + 1  # the response tokens and the one before
            input_ids, mask = left_pad(seqs, pad)
            width = input_ids.shape[1]
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
