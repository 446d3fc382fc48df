"""judge: RLAIF preference labels from an AI judge (Bai et al. 2022, §4.1, arXiv 2212.08073).

Candidates: ``num_candidates`` responses sampled per prompt from the policy (``model.path``), or
the data's own chosen/rejected (``source=pairs``). Every distinct pair is shown to the judge
(``judge_model``, default ``model.path``) with the conversation, one principle's question drawn
at random, and options (A)/(B). The soft label is the normalised probability of "A" vs "B" read
from the judge's log-probs; with ``swap`` the pair is judged in both orders and the two averaged,
which cancels the judge's position bias. ``clamp`` bounds the label (e.g. [0.4, 0.6] for
chain-of-thought judging, whose probabilities are overconfident).

Output: ``run_dir/dataset`` (``datasets.load_from_disk``) with splits train/test and columns
``prompt, chosen, rejected`` (TRL's conversational pairs), ``judge_prob`` = P(chosen better),
``judge_prob_shown_first`` / ``judge_prob_shown_second`` (the same measured with chosen as (A)
and as (B): their gap is the position bias), ``principle`` (and ``category`` on the toy world).
The next stage reads it with ``data.format=trl data.path=<judge run>/dataset``.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignlab import backends, console, data, lengths, runs, stats, verdicts
from alignlab import constitution as const
from alignlab import rows as row_store
from alignlab.args import JudgeArgs
from alignlab.data import RuleScorer
from alignlab.data.items import prompt_items
from alignlab.errors import AlignlabError
from alignlab.methods.spec import Method
from alignlab.training import merged_args

log = logging.getLogger("alignlab")

ARGS_CLASS = "alignlab.args:JudgeArgs"
DATA_KIND = "prompts"


def stage_args(cfg: Any) -> Any:
    """``method.args`` as a checked JudgeArgs."""
    args = JudgeArgs(**merged_args(cfg, ARGS_CLASS))
    backends.check(args)  # and the choices and bounds declared on JudgeArgs
    if args.clamp is not None:
        clamp = list(args.clamp)
        if len(clamp) != 2 or not 0.0 <= clamp[0] <= 0.5 <= clamp[1] <= 1.0:
            raise AlignlabError(f"method.args.clamp={clamp} must be [low, high] with "
                                "0 <= low <= 0.5 <= high <= 1, e.g. [0.4, 0.6].")
        args.clamp = clamp
    if args.gate_data and not Path(args.gate_data).expanduser().exists():
        raise AlignlabError(f"method.args.gate_data='{args.gate_data}' does not exist. Point it "
                            "at a file (or folder) of labelled pairs with chosen/rejected.")
    return args


def label_pairs(items: Sequence[dict[str, Any]], backend: Any, constitution: Any, args: Any,
                seed: int) -> list[dict[str, Any]]:
    """Judge each item's (a, b): P(a better), in both orders when ``args.swap``."""
    questions = []
    for it in items:
        (principle,) = const.sample_principles(
            constitution, const.rng_for(seed, f"judge-{it['key']}"), 1)
        questions.append(principle.choice or principle.critic)
    orders = [(it["a"], it["b"]) for it in items]
    if args.swap:
        orders += [(it["b"], it["a"]) for it in items]
    prompts = [list(it["prompt"]) for it in items] * (2 if args.swap else 1)
    qs = questions * (2 if args.swap else 1)
    reasoning: list[str | None] = [None] * len(orders)
    if args.chain_of_thought:
        first = str(items[0]["key"]) if items else ""
        reasoning = list(backend.chat(
            [const.judge_conversation(constitution, p, a, b, q, chain_of_thought=True)
             for p, (a, b), q in zip(prompts, orders, qs, strict=True)],
            temperature=args.temperature, max_new_tokens=args.max_new_tokens,
            seed=zlib.crc32(f"{seed}:{first}:cot".encode()) & 0x7FFFFFFF))
    queries = [const.judge_query(constitution, p, a, b, q, r)
               for p, (a, b), q, r in zip(prompts, orders, qs, reasoning, strict=True)]
    probs = [verdicts.two_way(lp) for lp in backend.option_logprobs(queries, const.OPTIONS)]
    n = len(items)
    rows = []
    for i, it in enumerate(items):
        p_ab = probs[i]  # a shown as (A)
        p_ba = 1.0 - probs[n + i] if args.swap else p_ab  # a shown as (B)
        if math.isnan(p_ab) or math.isnan(p_ba):  # a server refused it as too long
            rows.append({"key": it["key"], "split": it["split"], "too_long": True})
            continue
        p = (p_ab + p_ba) / 2
        if args.clamp is not None:
            p = min(max(p, args.clamp[0]), args.clamp[1])
        rows.append({"key": it["key"], "split": it["split"], "prompt": list(it["prompt"]),
                     "a": it["a"], "b": it["b"], "principle": questions[i], "prob_a": p,
                     "prob_a_shown_first": p_ab, "prob_a_shown_second": p_ba,
                     **({"reasoning": reasoning[i]} if args.chain_of_thought else {}),
                     **({"category": it["category"]} if "category" in it else {})})
    return rows


def fit_to_context(pairs: Sequence[dict[str, Any]], judge: Any, book: const.Constitution,
                   args: Any) -> tuple[list[dict[str, Any]], lengths.Fitted]:
    """Pairs fitted to the judge's context (see :func:`alignlab.verdicts.fit`); with chain of
    thought the reasoning and the follow-up come first."""
    reserve = args.max_new_tokens + 64 if args.chain_of_thought else 0
    return verdicts.fit(pairs, judge, book, reserve)


def sample_candidates(items: Sequence[dict[str, Any]], backend: Any, args: Any,
                      seed: int) -> list[dict[str, Any]]:
    """``args.num_candidates`` sampled responses per prompt."""
    k = args.num_candidates
    convs = [list(it["prompt"]) for it in items for _ in range(k)]
    first = str(items[0]["key"]) if items else ""
    out = backend.chat(convs, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                       seed=zlib.crc32(f"{seed}:{first}:sample".encode()) & 0x7FFFFFFF)
    return [{**{c: it[c] for c in ("key", "split", "prompt", "category") if c in it},
             "candidates": out[i * k:(i + 1) * k]} for i, it in enumerate(items)]


def comparisons(candidate_rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Every distinct pair (i < j) of each prompt's candidates; and how many were identical."""
    out, identical = [], 0
    for row in candidate_rows:
        cands = row["candidates"]
        for i in range(len(cands)):
            for j in range(i + 1, len(cands)):
                if cands[i].strip() == cands[j].strip():
                    identical += 1  # nothing to learn from a pair of equal answers
                    continue
                out.append({"key": f"{row['key']}-{i}-{j}", "split": row["split"],
                            "prompt": row["prompt"], "a": cands[i], "b": cands[j],
                            **({"category": row["category"]} if "category" in row else {})})
    return out, identical


def to_pairs(labels: Sequence[dict[str, Any]], min_margin: float) -> list[dict[str, Any]]:
    """Rows of the output dataset: the judge's winner as chosen; ties and near-ties dropped."""
    out = []
    for r in labels:
        p = r["prob_a"]
        if p == 0.5 or abs(p - 0.5) < min_margin:
            continue
        a_wins = p > 0.5
        win, lose = (r["a"], r["b"]) if a_wins else (r["b"], r["a"])
        first = r["prob_a_shown_first"] if a_wins else 1.0 - r["prob_a_shown_second"]
        second = r["prob_a_shown_second"] if a_wins else 1.0 - r["prob_a_shown_first"]
        out.append({"split": r["split"], "prompt": r["prompt"],
                    "chosen": [{"role": "assistant", "content": win}],
                    "rejected": [{"role": "assistant", "content": lose}],
                    "judge_prob": p if a_wins else 1.0 - p,
                    "judge_prob_shown_first": first, "judge_prob_shown_second": second,
                    "principle": r["principle"], "source": "ai",
                    **({"category": r["category"]} if "category" in r else {})})
    return out


def human_pairs(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output rows for the data's own (human-labelled) pairs: label 1, ``source`` human."""
    return [{"split": it["split"], "prompt": list(it["prompt"]),
             "chosen": [{"role": "assistant", "content": _text(it["chosen"])}],
             "rejected": [{"role": "assistant", "content": _text(it["rejected"])}],
             "judge_prob": 1.0, "judge_prob_shown_first": 1.0, "judge_prob_shown_second": 1.0,
             "principle": "human", "source": "human",
             **({"category": it["category"]} if "category" in it else {})} for it in items]


def build_dataset(pairs: Sequence[dict[str, Any]]) -> Any:
    """DatasetDict(train, test) of labelled pairs with a fixed schema (empty splits allowed)."""
    import datasets

    msgs = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    cols: dict[str, Any] = {"prompt": msgs, "chosen": msgs, "rejected": msgs,
                            "judge_prob": datasets.Value("float64"),
                            "judge_prob_shown_first": datasets.Value("float64"),
                            "judge_prob_shown_second": datasets.Value("float64"),
                            "principle": datasets.Value("string"),
                            "source": datasets.Value("string")}
    if pairs and all("category" in p for p in pairs):
        cols["category"] = datasets.Value("string")
    features = datasets.Features(cols)
    parts = {}
    for split in ("train", "test"):
        rows = [p for p in pairs if p["split"] == split]
        # from_dict, not from_list: an empty split must still carry the columns
        parts[split] = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in cols},
                                                  features=features)
    return datasets.DatasetDict(parts)


def run(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Sample (or take) candidates, judge every pair, write ``run_dir/dataset``."""
    from omegaconf import OmegaConf

    args = stage_args(cfg)
    book = const.load(cfg.constitution, need_choice=True)
    resume = bool(cfg.resume)
    judge_path = args.judge_model or None
    start = time.time()
    policy = None
    rule = data.source(OmegaConf.select(cfg, "data") or {}).rule
    gating = gate_items(cfg, args, rule)
    if args.source == "pairs":
        items = prompt_items(cfg.data, "pairs", categories=args.categories,
                             max_rows=args.max_prompts, seed=cfg.seed)
        candidates = [{**{c: it[c] for c in ("key", "split", "prompt", "category") if c in it},
                       "candidates": [_text(it["chosen"]), _text(it["rejected"])]}
                      for it in items]
    else:
        items = prompt_items(cfg.data, "prompts", categories=args.categories,
                             max_rows=args.max_prompts, seed=cfg.seed)
        policy = backends.create(args, cfg)
        fp = row_store.fingerprint(items, str(cfg.model.path), args.num_candidates,
                                   args.temperature, args.max_new_tokens, args.backend, cfg.seed)
        candidates = row_store.run_rows(
            items, lambda chunk: sample_candidates(chunk, policy, args, cfg.seed),
            run_dir / "candidates", fingerprint=fp, resume=resume,
            chunk_size=args.batch_size, desc="sample", kill_at=runs.kill_after_step("judge"))
    pairs, identical = comparisons(candidates)
    if policy is not None and judge_path not in (None, str(cfg.model.path)):
        policy.close()  # free the policy before the judge is loaded
        policy = None
    judge = policy or backends.create(args, cfg, judge_path)
    pairs, fitted = fit_to_context(pairs, judge, book, args)
    try:  # before any label is asked for
        fitted.check("pairs", float(cfg.data.max_dropped), "Use a judge with a longer context "
                     "(method.args.judge_model), or data with fewer turns")
    except AlignlabError:
        judge.close()
        raise
    fp = row_store.fingerprint(pairs, book, judge_path or str(cfg.model.path), args.swap,
                               args.chain_of_thought, args.clamp, cfg.seed)
    try:
        labels = row_store.run_rows(
            pairs, lambda chunk: label_pairs(chunk, judge, book, args, cfg.seed),
            run_dir / "labels", fingerprint=fp, resume=resume, chunk_size=args.batch_size,
            desc="judge", kill_at=runs.kill_after_step("judge"))
        labels, _ = verdicts.drop_refused(
            labels, labels, fitted, "pairs", float(cfg.data.max_dropped),
            "Serve the judge with a longer context (vLLM: --max-model-len), or use data with "
            "fewer turns; the labels made are kept for resume=true")
        gate = judge_gate(cfg, args, labels, rule, gating,
                          lambda chunk: label_pairs(chunk, judge, book, args, cfg.seed),
                          run_dir, resume)
    finally:
        judge.close()
    kept = to_pairs(labels, args.min_margin)
    distrusted = apply_gate(gate, args.gate)
    if distrusted and args.gate == "drop":  # "all": the judge was gated as a whole
        kept = [k for k in kept if ALL not in distrusted
                and k.get("category", ALL) not in distrusted]
    human: list[dict[str, Any]] = []
    if args.human_pairs:
        human = human_pairs(prompt_items(
            cfg.data, "pairs", categories=args.human_categories, max_rows=args.human_pairs,
            seed=cfg.seed))
    if not kept and not human and labels:
        raise AlignlabError(
            "No labelled pairs are left: the judge gate left out every AI label (see the "
            "warning above) and there are no human pairs, so the next stage would train on "
            "nothing. Use a better judge (method.args.judge_model), add human pairs "
            "(method.args.human_pairs=N), or method.args.gate=warn to keep the labels; "
            "resume=true reuses the labels already made.")
    dataset = build_dataset(kept + human)
    dataset.save_to_disk(str(run_dir / "dataset"))
    metrics: dict[str, Any] = {
        "method": "judge", "constitution": book.name, "source": args.source,
        "judge_model": judge_path or str(cfg.model.path), "prompts": len(items),
        "comparisons": len(labels), "identical_skipped": identical,
        "pairs": {k: len(v) for k, v in dataset.items()},
        "pairs_by_source": {"ai": len(kept), "human": len(human)},
        "dropped_near_ties": len(labels) - len(kept), **position_stats(labels),
        "retries": getattr(judge, "retries", 0), "wall_seconds": round(time.time() - start, 2),
        "dataset": str(run_dir / "dataset"),
        "next": f"data.format=trl data.path={run_dir / 'dataset'}",
    }
    too_long = fitted.line("pairs")
    if too_long:
        log.warning("judge: %s", too_long)
    metrics["too_long"] = fitted.to_dict()
    if gate is not None:
        metrics["gate"] = {"action": args.gate, "on": gate.on, "distrusted": distrusted,
                           "per_category": gate.per_category}
    if rule is not None:  # metrics keys "toy_agreement*": the toy world's rule is the only one
        metrics["toy_agreement"] = rule_agreement(labels, rule)
        # the labels RL-CAI trains on: after the confidence threshold (min_margin)
        metrics["toy_agreement_kept"] = rule_agreement(
            [r for r in labels if r["prob_a"] != 0.5 and abs(r["prob_a"] - 0.5) >= args.min_margin],
            rule)
    if args.source == "pairs":
        metrics["label_agreement"] = label_agreement(labels)
        agree = metrics["label_agreement"]
        console.note(f"[alignlab] judge agrees with the data's own labels on "
                     f"{agree['agreement']:.1%} [{agree['ci'][0]:.1%}, {agree['ci'][1]:.1%}] "
                     f"of {agree['n']} pairs")
    console.note(f"[alignlab] judge-labelled pairs: {run_dir / 'dataset'}. Train on them with\n"
                 f"  python -m alignlab method=dpo data.format=trl "
                 f"data.path={run_dir / 'dataset'} model.path=<policy>")
    return metrics


def _text(reply: Any) -> str:
    if isinstance(reply, str):
        return reply
    return "".join(m["content"] for m in reply if m["role"] == "assistant")


def position_stats(labels: Sequence[dict[str, Any]]) -> dict[str, float]:
    """How much the judge prefers whichever option is shown first, and how often both orders
    agree on the winner (only meaningful with ``swap``)."""
    if not labels:
        return {"first_position_preference": 0.0, "order_consistency": 0.0}
    first = [(r["prob_a_shown_first"] + 1.0 - r["prob_a_shown_second"]) / 2 for r in labels]
    agree = [(r["prob_a_shown_first"] > 0.5) == (r["prob_a_shown_second"] > 0.5)
             for r in labels]
    return {"first_position_preference": sum(first) / len(first) - 0.5,
            "order_consistency": sum(agree) / len(agree)}


def label_agreement(labels: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Agreement with the data's own labels (``source=pairs``: option a is the chosen reply).

    A hard label counts 1 when the judge prefers the chosen reply, 0.5 for a tie; ``soft`` is the
    mean probability it gave the chosen reply; ``ci`` a 95 % Wilson interval (one pair a prompt).
    """
    hard = [1.0 if r["prob_a"] > 0.5 else 0.5 if r["prob_a"] == 0.5 else 0.0 for r in labels]
    n = len(hard)
    agreement = sum(hard) / n if n else 0.0
    return {"agreement": agreement, "soft": sum(r["prob_a"] for r in labels) / max(1, n),
            "n": n, "ci": list(stats.wilson_interval(sum(hard), n)) if n else [0.0, 1.0]}


def rule_agreement(labels: Sequence[dict[str, Any]], rule: RuleScorer) -> dict[str, Any]:
    """Agreement with the data's rule (the toy world's) on the pairs where it prefers one
    response.

    A hard label counts 1 when the judge picks the rule's winner, 0.5 for a tie; ``soft`` is the
    mean probability the judge gave the rule's winner.
    """
    prompts = [r["prompt"] for r in labels]
    by_rule_a = rule(prompts, [r["a"] for r in labels])
    by_rule_b = rule(prompts, [r["b"] for r in labels])
    hard, soft, per_cat = [], [], {}
    for r, good_a, good_b, category in zip(labels, by_rule_a.items, by_rule_b.items,
                                           by_rule_a.categories, strict=True):
        if good_a == good_b:
            continue
        p = r["prob_a"] if good_a > good_b else 1.0 - r["prob_a"]
        h = 1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0
        hard.append(h)
        soft.append(p)
        per_cat.setdefault(category, []).append(h)
    return {"agreement": sum(hard) / max(1, len(hard)), "soft": sum(soft) / max(1, len(soft)),
            "n_decisive": len(hard), "n": len(labels),
            "per_category": {c: sum(v) / len(v) for c, v in sorted(per_cat.items())}}


# ---------------------------------------------------------------------------------------------
# The judge gate: is the judge better than chance, per category, before its labels are kept?

ALL = "all"  # the category of rows of data without a 'category' column


class Gate:
    """What the judge was measured on (``on``) and, per category, its agreement with the
    labels there: ``{"agreement", "ci": [low, high], "n", "trusted"}``."""

    def __init__(self, on: str, hits: Sequence[tuple[str, float]]) -> None:
        self.on = on
        by_cat: dict[str, list[float]] = {}
        for category, hit in hits:
            by_cat.setdefault(category, []).append(hit)
        self.per_category = {}
        for category, values in sorted(by_cat.items()):
            low, high = stats.wilson_interval(sum(values), len(values))
            self.per_category[category] = {"agreement": sum(values) / len(values),
                                           "ci": [low, high], "n": len(values),
                                           "trusted": low > 0.5}


def _hit(p_right: float) -> float:
    """1 when the judge prefers the labelled winner, 0.5 for a tie, else 0."""
    return 1.0 if p_right > 0.5 else 0.5 if p_right == 0.5 else 0.0


def gate_items(cfg: Any, args: Any, rule: RuleScorer | None) -> list[dict[str, Any]] | None:
    """The labelled pairs to gate the judge on, loaded before any sampling or judging (so a bad
    ``gate_data`` costs nothing); None when the gate is off or uses the data's rule."""
    if args.gate == "off" or (rule is not None and not args.gate_data):
        return None
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(cfg.data, resolve=True)
    if args.gate_data:
        spec.update({"name": "local", "format": "trl", "path": args.gate_data,
                     "train_split": None, "test_split": None, "max_samples": None})
    try:
        items = prompt_items(spec, "pairs", max_rows=args.gate_pairs, seed=cfg.seed)
    except AlignlabError:
        if args.gate_data:
            raise
        console.note("[alignlab] judge gate: the data has no labelled pairs to measure the judge "
                     "on; set method.args.gate_data=<labelled pairs> to gate it")
        return []
    if not args.gate_data and any(it["split"] == "test" for it in items):
        items = [it for it in items if it["split"] == "test"]  # pairs the judge never saw
    return [{"key": f"gate-{it['key']}", "split": it["split"], "prompt": it["prompt"],
             "a": _text(it["chosen"]), "b": _text(it["rejected"]),
             **({"category": it["category"]} if "category" in it else {})} for it in items]


def judge_gate(cfg: Any, args: Any, labels: Sequence[dict[str, Any]], rule: RuleScorer | None,
               pairs: list[dict[str, Any]] | None, judge_chunk: Any, run_dir: Path,
               resume: bool) -> Gate | None:
    """Measure the judge against labelled pairs, per category (None with ``gate=off``).

    ``gate_data`` (labelled pairs) first; else the data's rule where it has one (the toy world):
    the rule's verdict on the very pairs the judge labelled, the policy's own samples; else the
    data's own chosen/rejected pairs (the test split where there is one). ``pairs`` are those
    of :func:`gate_items`, judged in a resumable row store of their own (``run_dir/gate``).
    """
    if args.gate == "off":
        return None
    if pairs is None:  # the data's rule
        prompts = [r["prompt"] for r in labels]
        a, b = rule(prompts, [r["a"] for r in labels]), rule(prompts, [r["b"] for r in labels])
        hits = [(cat, _hit(r["prob_a"] if ga > gb else 1.0 - r["prob_a"]))
                for r, ga, gb, cat in zip(labels, a.items, b.items, a.categories, strict=True)
                if ga != gb]
        return Gate("the data's rule, on the judged samples", hits)
    if not pairs:
        return None
    judged = row_store.run_rows(
        pairs, judge_chunk, run_dir / "gate", resume=resume, chunk_size=args.batch_size,
        fingerprint=row_store.fingerprint(pairs, args.judge_model, cfg.seed), desc="gate")
    where = args.gate_data or "the data's own labelled pairs"
    return Gate(where, [(r.get("category", ALL), _hit(r["prob_a"])) for r in judged
                        if not r.get("too_long")])


def apply_gate(gate: Gate | None, action: str) -> list[str]:
    """One line per category where the judge is not better than chance; returns them.

    ``stop`` raises (the labels stay in ``run_dir/labels`` for ``resume=true``)."""
    if gate is None:
        return []
    bad = [c for c, g in gate.per_category.items() if not g["trusted"]]
    for category in bad:
        g = gate.per_category[category]
        then = {"drop": "its AI labels there are left out (method.args.gate=warn keeps them)",
                "warn": "its AI labels there are kept (method.args.gate=drop leaves them out)",
                "stop": "stopping (method.args.gate=drop leaves that category's labels out)"}
        log.warning("judge gate: on %s pairs the judge agrees with %s %.0f%% [%.0f%%, %.0f%%] "
                    "(n %d), not better than chance; %s.", category, gate.on,
                    100 * g["agreement"], 100 * g["ci"][0], 100 * g["ci"][1], g["n"],
                    then[action])
    if bad and action == "stop":
        raise AlignlabError(
            f"The judge is not better than chance on {', '.join(bad)} pairs (judge gate, "
            f"measured on {gate.on}), so its labels would teach the wrong preference. Use a "
            "better judge (method.args.judge_model), or method.args.gate=drop to leave those "
            "categories' AI labels out; the labels are kept for resume=true.")
    return bad


SPEC = Method(name="judge", args_class=ARGS_CLASS, data_kind=DATA_KIND, stage=run,
              reads_constitution=True, needs_choice=True, starts_from_sft=True)
