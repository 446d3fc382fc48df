"""Throughput of the critique-revision stage: batched vs one prompt at a time.

Runs the same SL-CAI rows (initial answer, critique, revision; the toy constitution) through the
``transformers`` backend twice, with the same model and sampling settings: once in batches of
``--batch-size`` prompts, once one prompt per generate() call. Prints a Markdown table.

    HF_HUB_OFFLINE=1 python benchmarks/generation.py                 # built-in llama-small
    HF_HUB_OFFLINE=1 python benchmarks/generation.py --model runs/sft/<id>/model --prompts 128

With the random-init built-in model no answer stops early, so both modes generate exactly
``--max-new-tokens`` tokens per step and the comparison is token for token. The defaults are
the stage's (``conf/method/cai.yaml``: batch 32, 128 new tokens). The one-at-a-time mode runs
about ``--single-prompts`` of the same prompts (rows/s is a per-row rate), because it is slow,
and the two modes alternate chunk by chunk so that both see the same machine load. The result
depends on the machine: batching wins by amortising per-step overhead, so it gains less where
the batched matrix products themselves are slow (a CPU shared with other jobs, long prompts).
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from typing import Any


def _seconds(items: list[dict[str, Any]], backend: Any, constitution: Any, args: Any,
             seed: int) -> float:
    from alignlab.methods.cai import critique_revise

    start = time.perf_counter()
    for c in range(0, len(items), args.batch_size):
        critique_revise(items[c:c + args.batch_size], backend, constitution, args, seed)
    return time.perf_counter() - start


def _plain_chat(backend: Any, conversations: Any, *, temperature: float, max_new_tokens: int,
                seed: int) -> list[str]:
    from alignlab.generation import generate

    out = generate(backend.model, backend.tokenizer, conversations, temperature=temperature,
                   max_new_tokens=max_new_tokens, batch_size=backend.batch_size, seed=seed,
                   prune_finished=False)
    return [o[0] for o in out]


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:llama-small", help="model.path to load")
    parser.add_argument("--prompts", type=int, default=64, help="red-team prompts (rows)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--single-prompts", type=int, default=16,
                        help="prompts for the one-at-a-time run (the first of the same set)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: "
                        "torch's choice)")
    parser.add_argument("--decoder", choices=("pruned", "generate"), default="pruned",
                        help="pruned: alignlab's loop (finished rows leave the batch, shared "
                        "prefix computed once; what the backend uses); generate: plain "
                        "model.generate, for comparison")
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from alignlab import backends, cli, config
    from alignlab import constitution as const
    from alignlab.args import CAIArgs
    from alignlab.data.items import prompt_items

    if opts.threads:
        torch.set_num_threads(opts.threads)
    config.register()
    cfg = cli.compose(["method=cai", "constitution=toy", f"model.path={opts.model}"])
    items = prompt_items(cfg.data, categories=["harmful", "borderline"], seed=cfg.seed)
    items = [it for it in items if it["split"] == "train"]
    items = (items * (opts.prompts // max(1, len(items)) + 1))[:opts.prompts]
    items = [{**it, "key": f"bench-{i}"} for i, it in enumerate(items)]
    constitution = const.load(cfg.constitution)
    modes = {}
    for name, batch in (("batched", opts.batch_size), ("one at a time", 1)):
        args = CAIArgs(batch_size=batch, rounds=opts.rounds, temperature=0.7,
                       max_new_tokens=opts.max_new_tokens)
        backend = backends.create(args, cfg)
        if opts.decoder == "generate":
            backend.chat = functools.partial(_plain_chat, backend)  # type: ignore[method-assign]
        _seconds(items[:2], backend, constitution, args, cfg.seed)  # warm-up
        modes[name] = [backend, args, 0, 0.0]  # backend, args, rows, seconds
    # Interleave the modes chunk by chunk, so both see the same machine load (on a shared
    # machine the load changes from minute to minute).
    chunks = [items[c:c + opts.batch_size] for c in range(0, len(items), opts.batch_size)]
    per_chunk = max(1, opts.single_prompts // len(chunks))
    for chunk in chunks:
        for name, rows in (("batched", chunk), ("one at a time", chunk[:per_chunk])):
            backend, args, _, _ = modes[name]
            modes[name][3] += _seconds(rows, backend, constitution, args, cfg.seed)
            modes[name][2] += len(rows)
    results = [(name, m[1].batch_size, m[2], m[3], m[2] / m[3]) for name, m in modes.items()]
    base = results[1][4]
    print(f"\nCritique-revision rows/s, transformers backend ({opts.decoder} decoder), model "
          f"{opts.model}, "
          f"{opts.rounds} round(s), {opts.max_new_tokens} new tokens per "
          f"step, torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| mode | prompts per generate() | rows | seconds | rows/s | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, batch, n, seconds, rate in results:
        print(f"| {name} | {batch} | {n} | {seconds:.1f} | {rate:.2f} | {rate / base:.1f}x |")


if __name__ == "__main__":
    main()
