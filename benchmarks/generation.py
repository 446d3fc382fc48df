"""Does alignlab's own decoder earn its place? Critique-revision throughput, three ways.

The same SL-CAI rows (initial answer, critique, revision; the toy constitution's few-shot
chats) run through the ``transformers`` backend three ways, side by side in one run:

1. **pruned decoder, batched**: alignlab's loop (``generation.generate(prune_finished=True)``,
   what the backend uses): finished rows leave the batch and its KV cache, a prompt prefix
   shared by the batch is computed once, the cache grows in place;
2. **model.generate, batched**: plain ``model.generate`` on the same batches;
3. **model.generate, one prompt at a time**.

The modes alternate chunk by chunk so that all three see the same machine load. Prints a
Markdown table: rows/s, generated tokens/s and the speed-up over batched ``model.generate``.
A real model (whose answers end at different lengths) is the case that matters; the built-in
random-init model never stops early, so there every row runs to ``--max-new-tokens``.

    HF_HUB_OFFLINE=1 python benchmarks/generation.py --model smollm2-135m
    HF_HUB_OFFLINE=1 python benchmarks/generation.py --model llama-small
    HF_HUB_OFFLINE=1 python benchmarks/generation.py --model runs/sft/<id>/model

``--model`` is a model preset (``conf/model/<name>.yaml``) or a ``model.path``.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from typing import Any

MODES = ("pruned decoder, batched", "model.generate, batched", "model.generate, one at a time")


def _plain_chat(backend: Any, conversations: Any, *, temperature: float, max_new_tokens: int,
                seed: int) -> list[str]:
    """The backend's chat with plain ``model.generate`` instead of the pruned decoder."""
    from alignlab.generation import generate

    out = generate(backend.model, backend.tokenizer, conversations, temperature=temperature,
                   max_new_tokens=max_new_tokens, batch_size=backend.batch_size, seed=seed,
                   prune_finished=False)
    return [o[0] for o in out]


def _counting(chat: Any, tokenizer: Any, counter: list[int]) -> Any:
    """Wrap a chat function to count the tokens it generates."""
    def counted(conversations: Any, **kw: Any) -> list[str]:
        out = chat(conversations, **kw)
        counter[0] += sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) + 1
                          for o in out)
        return out
    return counted


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-small",
                        help="a model preset (conf/model/<name>.yaml) or a model.path")
    parser.add_argument("--prompts", type=int, default=64, help="red-team prompts (rows)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--single-prompts", type=int, default=8,
                        help="prompts for the one-at-a-time mode (the first of each chunk)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: "
                        "under load, OpenMP threads waiting on each other made every mode "
                        "several times slower)")
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from alignlab import backends, cli, config
    from alignlab import constitution as const
    from alignlab.args import CAIArgs
    from alignlab.data.items import prompt_items
    from alignlab.methods.cai import critique_revise

    if opts.threads:
        torch.set_num_threads(opts.threads)
    config.register()
    presets = {p.stem for p in (config.conf_dir() / "model").glob("*.yaml")}
    model = f"model={opts.model}" if opts.model in presets else f"model.path={opts.model}"
    cfg = cli.compose(["method=cai", "constitution=toy", model])
    items = prompt_items(cfg.data, categories=["harmful", "borderline"], seed=cfg.seed)
    items = [it for it in items if it["split"] == "train"]
    items = (items * (opts.prompts // max(1, len(items)) + 1))[:opts.prompts]
    items = [{**it, "key": f"bench-{i}"} for i, it in enumerate(items)]
    constitution = const.load(cfg.constitution)
    modes: dict[str, dict[str, Any]] = {}
    shared = None
    for name in MODES:
        batch = 1 if "one at a time" in name else opts.batch_size
        args = CAIArgs(batch_size=batch, rounds=opts.rounds, temperature=0.7,
                       max_new_tokens=opts.max_new_tokens)
        backend = backends.create(args, cfg) if shared is None else \
            backends.TransformersBackend(shared.model, shared.tokenizer, batch_size=batch)
        shared = shared or backend
        if "model.generate" in name:
            backend.chat = functools.partial(_plain_chat, backend)  # type: ignore[method-assign]
        counter = [0]
        backend.chat = _counting(backend.chat, backend.tokenizer, counter)  # type: ignore
        critique_revise(items[:2], backend, constitution, args, cfg.seed)  # warm-up
        counter[0] = 0
        modes[name] = {"backend": backend, "args": args, "rows": 0, "seconds": 0.0,
                       "tokens": counter}
    chunks = [items[c:c + opts.batch_size] for c in range(0, len(items), opts.batch_size)]
    per_chunk = max(1, opts.single_prompts // len(chunks))
    for chunk in chunks:
        for name, m in modes.items():
            rows = chunk[:per_chunk] if "one at a time" in name else chunk
            start = time.perf_counter()
            for c in range(0, len(rows), m["args"].batch_size):
                critique_revise(rows[c:c + m["args"].batch_size], m["backend"], constitution,
                                m["args"], cfg.seed)
            m["seconds"] += time.perf_counter() - start
            m["rows"] += len(rows)
            print(f"[bench] {name}: {m['rows']} rows in {m['seconds']:.0f} s", flush=True)
    base = modes[MODES[1]]["rows"] / modes[MODES[1]]["seconds"]
    print(f"\nCritique-revision (SL-CAI) throughput, transformers backend, model {opts.model}, "
          f"{opts.rounds} round(s), up to {opts.max_new_tokens} new tokens per step, torch "
          f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| mode | prompts per call | rows | seconds | rows/s | generated tokens/s | "
          "rows/s vs batched generate |")
    print("|---|---|---|---|---|---|---|")
    for name, m in modes.items():
        rate = m["rows"] / m["seconds"]
        print(f"| {name} | {m['args'].batch_size} | {m['rows']} | {m['seconds']:.1f} | "
              f"{rate:.2f} | {m['tokens'][0] / m['seconds']:.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
