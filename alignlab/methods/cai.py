"""cai: the SL-CAI data stage of Constitutional AI (Bai et al. 2022, §3, arXiv 2212.08073).

For each red-team prompt the model (``model.path``) first answers; then, ``rounds`` times, a
principle is drawn at random from the constitution, the model critiques its current answer
against it and revises the answer. The constitution's few-shot chats are prepended to every
conversation and the model's own chat template formats it.

Output: ``run_dir/dataset`` (``datasets.load_from_disk``; ``push_to_hub`` works on it) in the
layout of HuggingFaceH4/cai-conversation-harmless, so the two are interchangeable: columns
``init_prompt, init_response, critic_prompt, critic_response, revision_prompt,
revision_response, prompt, messages, chosen, rejected`` (chosen = final revision, rejected =
initial answer) and disjoint splits ``train_sft``/``train_prefs``/``test_sft``/``test_prefs``.
The next stages read it directly:

    python -m alignlab method=sft data.format=cai data.path=RUN/dataset model.path=SFT/model
    python -m alignlab method=dpo data.format=cai data.path=RUN/dataset model.path=SFT2/model

Rows are appended to ``run_dir/rows/shard-*.jsonl`` as they finish (all rounds kept there);
``resume=true`` with the same ``hydra.run.dir`` continues a killed run without losing or
repeating a prompt.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignlab import backends, console, data, lengths, runs
from alignlab import constitution as const
from alignlab import rows as row_store
from alignlab.args import CAIArgs
from alignlab.data import RuleScorer
from alignlab.data.items import prompt_items
from alignlab.errors import AlignlabError
from alignlab.methods.spec import Method
from alignlab.training import merged_args

log = logging.getLogger("alignlab")

ARGS_CLASS = "alignlab.args:CAIArgs"
DATA_KIND = "prompts"
COLUMNS = ("init_prompt", "init_response", "critic_prompt", "critic_response", "revision_prompt",
           "revision_response", "prompt", "messages", "chosen", "rejected")
SPLITS = ("train_sft", "train_prefs", "test_sft", "test_prefs")


def stage_args(cfg: Any) -> Any:
    """``method.args`` (over model/hardware suggestions) as a checked CAIArgs."""
    args = CAIArgs(**merged_args(cfg, ARGS_CLASS))
    backends.check(args)  # and the bounds declared on CAIArgs (rounds, batch_size, ...)
    if not 0.0 < args.sft_fraction < 1.0:
        raise AlignlabError(f"method.args.sft_fraction={args.sft_fraction} must be between 0 and "
                            "1 (the share of rows in *_sft; the rest go to *_prefs).")
    return args


def _call_seed(seed: int, key: str, step: str) -> int:
    # Per chunk and step, so a resumed chunk doesn't replay another chunk's random numbers.
    return zlib.crc32(f"{seed}:{key}:{step}".encode()) & 0x7FFFFFFF


def context_warning(constitution: Any, args: Any, backend: Any) -> str | None:
    """A warning when the few-shot chats leave no room in the model's context for the
    conversation itself (prompt, answer, critique and revision: up to 3 x max_new_tokens), or
    None. Only a local model's tokenizer can count; other backends are not checked."""
    tokenizer = getattr(backend, "tokenizer", None)
    model = getattr(backend, "model", None)
    few = const.few_shot_messages(constitution, args.num_few_shot)
    if tokenizer is None or not few:
        return None
    context = lengths.context_length(model, tokenizer)
    if context is None:
        return None
    text = tokenizer.apply_chat_template(few, tokenize=False)
    used = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    need = used + 3 * args.max_new_tokens
    if need <= context:
        return None
    return (f"The constitution's few-shot context is {used} tokens; with the conversation's "
            f"three answers (up to 3 x max_new_tokens={args.max_new_tokens}) that is {need}, over "
            f"the model's context length of {context}: the start of every CAI conversation will "
            "be cut off. Use fewer few-shot chats (method.args.num_few_shot=N, 0 for none), "
            "shorter ones, or a model with a longer context.")


def fit_to_context(items: Sequence[dict[str, Any]], backend: Any, constitution: Any,
                   args: Any) -> tuple[list[dict[str, Any]], lengths.Fitted]:
    """Prompts whose longest conversation (the few-shot chats, the prompt, the answer, the
    critique request and critique, the revision request, and room for the revision: the
    longest principle, each answer up to ``max_new_tokens``) is over the model's context lose
    their oldest turns until it fits; those that never fit are skipped. Past the context
    they went into the model past its position limit. A backend that does not know its
    context (a server) is left to refuse them."""
    context = getattr(backend, "context", None)
    fitted = lengths.Fitted(rows=len(items), context=context)
    if not context or not hasattr(backend, "query_tokens"):
        return list(items), fitted
    few = const.few_shot_messages(constitution, args.num_few_shot)
    longest = max(constitution.principles, key=lambda p: len(p.critic) + len(p.revision))
    budget = context - 3 * args.max_new_tokens  # answer, critique and revision

    def fits(turns: list[dict[str, str]]) -> bool:
        conv = const.revision_conversation(few, turns, "", longest, "")
        return backend.query_tokens((conv, "")) <= budget

    out = []
    for it in items:
        turns, cut = lengths.fit_left(list(it["prompt"]), fits)
        if turns is None:
            fitted.skipped.append(str(it["key"]))
            continue
        fitted.cut += cut
        out.append({**it, "prompt": turns} if cut else it)
    return out, fitted


def critique_revise(items: Sequence[dict[str, Any]], backend: Any, constitution: Any, args: Any,
                    seed: int) -> list[dict[str, Any]]:
    """One CAI row per item: initial answer, then ``args.rounds`` critique-revision rounds.

    Every step runs as one batched ``backend.chat`` call over the whole chunk.
    """
    keep = [it for it in items if it.get("helpfulness")]
    items = [it for it in items if not it.get("helpfulness")]
    kept = _answer_only(keep, backend, constitution, args, seed) if keep else []
    if not items:
        return kept
    few = const.few_shot_messages(constitution, args.num_few_shot)
    prompts = [list(it["prompt"]) for it in items]
    principles = [const.sample_principles(constitution, const.rng_for(seed, str(it["key"])),
                                          args.rounds) for it in items]
    first = str(items[0]["key"]) if items else ""

    def chat(convs: list[list[dict[str, str]]], step: str) -> list[str]:
        return backend.chat(convs, temperature=args.temperature,
                            max_new_tokens=args.max_new_tokens,
                            seed=_call_seed(seed, first, step))

    init = chat([const.initial_conversation(few, p) for p in prompts], "init")
    current = list(init)
    rounds: list[list[dict[str, str]]] = [[] for _ in items]
    for r in range(args.rounds):
        critiques = chat([const.critique_conversation(few, p, cur, pr[r])
                          for p, cur, pr in zip(prompts, current, principles, strict=True)],
                         f"critic-{r}")
        revisions = chat([const.revision_conversation(few, p, cur, pr[r], crit)
                          for p, cur, pr, crit in zip(prompts, current, principles, critiques,
                                                      strict=True)], f"revision-{r}")
        for i in range(len(items)):
            rounds[i].append({"critic_prompt": principles[i][r].critic,
                              "critic_response": critiques[i],
                              "revision_prompt": principles[i][r].revision,
                              "revision_response": revisions[i]})
        current = revisions
    rows = []
    for i, it in enumerate(items):
        text = const.last_user_text(prompts[i])
        last = rounds[i][-1]
        rows.append({"key": it["key"], "split": it["split"], "prompt_messages": prompts[i],
                     "init_prompt": text, "init_response": init[i], **last, "prompt": text,
                     "rounds": rounds[i],
                     **({"category": it["category"]} if "category" in it else {})})
    return rows + kept


def _answer_only(items: Sequence[dict[str, Any]], backend: Any, constitution: Any, args: Any,
                 seed: int) -> list[dict[str, Any]]:
    """Rows for helpfulness prompts: the model's answer, kept as it is (no critique)."""
    few = const.few_shot_messages(constitution, args.num_few_shot)
    prompts = [list(it["prompt"]) for it in items]
    first = str(items[0]["key"]) if items else ""
    answers = backend.chat([const.initial_conversation(few, p) for p in prompts],
                           temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                           seed=_call_seed(seed, first, "helpful"))
    return [{"key": it["key"], "split": it["split"], "prompt_messages": prompts[i],
             "init_prompt": const.last_user_text(prompts[i]), "init_response": answers[i],
             "critic_prompt": "", "critic_response": "", "revision_prompt": "",
             "revision_response": answers[i], "prompt": const.last_user_text(prompts[i]),
             "rounds": [], "helpfulness": True,
             **({"category": it["category"]} if "category" in it else {})}
            for i, it in enumerate(items)]


def to_record(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row in the dataset's columns (conversations built from the prompt turns)."""
    prompt = list(row["prompt_messages"])
    revised = [*prompt, {"role": "assistant", "content": row["revision_response"]}]
    return {"init_prompt": row["init_prompt"], "init_response": row["init_response"],
            "critic_prompt": row["critic_prompt"], "critic_response": row["critic_response"],
            "revision_prompt": row["revision_prompt"],
            "revision_response": row["revision_response"], "prompt": row["prompt"],
            "messages": revised, "chosen": revised,
            "rejected": [*prompt, {"role": "assistant", "content": row["init_response"]}]}


def build_dataset(rows: Sequence[dict[str, Any]], sft_fraction: float, seed: int) -> Any:
    """The DatasetDict: each split's rows divided (seeded, disjoint) into *_sft and *_prefs."""
    import random

    import datasets

    msgs = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    features = datasets.Features({c: msgs if c in ("messages", "chosen", "rejected")
                                  else datasets.Value("string") for c in COLUMNS})
    parts: dict[str, Any] = {}
    for split in ("train", "test"):
        records = [to_record(r) for r in rows if r["split"] == split
                   and not r.get("helpfulness")]
        # helpfulness rows are SFT data only: their chosen and rejected would be the same
        helpful = [to_record(r) for r in rows if r["split"] == split and r.get("helpfulness")]
        order = list(range(len(records)))
        random.Random(f"{seed}:cai-{split}").shuffle(order)
        n_sft = round(len(records) * sft_fraction)
        if len(records) >= 2:  # both halves get at least one row
            n_sft = min(max(n_sft, 1), len(records) - 1)
        for name, idx in ((f"{split}_sft", sorted(order[:n_sft])),
                          (f"{split}_prefs", sorted(order[n_sft:]))):
            picked = [records[i] for i in idx] + (helpful if name.endswith("_sft") else [])
            # from_dict, not from_list: an empty split must still carry the columns
            parts[name] = datasets.Dataset.from_dict(
                {c: [r[c] for r in picked] for c in COLUMNS}, features=features)
    return datasets.DatasetDict(parts)


def run(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Generate the critique-revision dataset into ``run_dir/dataset``; return its metrics."""
    from omegaconf import OmegaConf

    args = stage_args(cfg)
    book = const.load(cfg.constitution)  # checked before any model is loaded
    items = prompt_items(cfg.data, categories=args.categories, max_rows=args.max_prompts,
                         seed=cfg.seed)
    if args.helpful_categories:
        helpful = prompt_items(cfg.data, categories=args.helpful_categories,
                               max_rows=args.max_helpful_prompts, seed=cfg.seed)
        items += [{**it, "key": f"helpful-{it['key']}", "helpfulness": True} for it in helpful]
    settings = {k: v for k, v in vars(args).items()
                if k in ("rounds", "num_few_shot", "temperature", "max_new_tokens", "backend",
                         "api_model")}
    fingerprint = row_store.fingerprint(items, book, settings, str(cfg.model.path), cfg.seed)
    backend = backends.create(args, cfg)
    warning = context_warning(book, args, backend)
    if warning:
        log.warning(warning)
    items, fitted = fit_to_context(items, backend, book, args)
    try:  # before anything is generated
        fitted.check("prompts", float(cfg.data.max_dropped), "Use fewer few-shot chats "
                     "(method.args.num_few_shot), a lower method.args.max_new_tokens, or a "
                     "model with a longer context")
    except AlignlabError:
        backend.close()
        raise
    if fitted.cut or fitted.skipped:
        log.warning("cai: %s", fitted.line("prompts"))
    start = time.time()
    try:
        rows = row_store.run_rows(
            items, lambda chunk: critique_revise(chunk, backend, book, args, cfg.seed),
            run_dir / "rows", fingerprint=fingerprint, resume=bool(cfg.resume),
            chunk_size=args.batch_size, desc="cai", kill_at=runs.kill_after_step("cai"))
    finally:
        backend.close()
    wall = time.time() - start
    dataset = build_dataset(rows, args.sft_fraction, cfg.seed)
    dataset.save_to_disk(str(run_dir / "dataset"))
    metrics: dict[str, Any] = {
        "method": "cai", "constitution": book.name, "rows": len(rows),
        "splits": {k: len(v) for k, v in dataset.items()},
        "rounds": args.rounds, "backend": args.backend, "wall_seconds": round(wall, 2),
        "helpfulness_rows": sum(bool(r.get("helpfulness")) for r in rows),
        "revised_fraction": _share(r["revision_response"] != r["init_response"]
                                   for r in rows if not r.get("helpfulness")),
        "empty_revisions": sum(not r["revision_response"].strip() for r in rows),
        "retries": getattr(backend, "retries", 0),
        "too_long": fitted.to_dict(),
        "dataset": str(run_dir / "dataset"),
        "next": f"data.format=cai data.path={run_dir / 'dataset'}",
    }
    rule = data.source(OmegaConf.select(cfg, "data") or {}).rule
    if rule is not None:  # metrics key "toy_judge": the toy world's rule is the only one
        metrics["toy_judge"] = _rule_scores(rule, [r for r in rows if not r.get("helpfulness")])
    console.note(f"[alignlab] CAI dataset: {run_dir / 'dataset'} ({len(rows)} rows). Train on "
                 f"it with\n  python -m alignlab method=sft data.format=cai "
                 f"data.path={run_dir / 'dataset'} model.path=<model>")
    return metrics


def _share(flags: Any) -> float:
    values = list(flags)
    return sum(values) / max(1, len(values))


def _rule_scores(rule: RuleScorer, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The data's rule on the initial answers and on the final revisions (the critic and
    reviser's skill), overall and per category, with each side's borderline refusals."""
    prompts = [r["prompt_messages"] for r in rows]
    init = rule(prompts, [r["init_response"] for r in rows])
    revision = rule(prompts, [r["revision_response"] for r in rows])
    return {"init": init.score, "revision": revision.score,
            "per_category": {c: {"init": init.per_category[c],
                                 "revision": revision.per_category[c]}
                             for c in revision.per_category},
            "evasiveness": {"init": init.evasiveness, "revision": revision.evasiveness}}


SPEC = Method(name="cai", args_class=ARGS_CLASS, data_kind=DATA_KIND, stage=run,
              reads_constitution=True, starts_from_sft=True)
