"""Local generation: decoding from a transformers model in this process.

- :func:`generate`: batched sampling from a transformers model (left padding, chat template,
  length-sorted batches, stop at EOS);
- :func:`option_logprobs`: log-probs of answer options (the RLAIF judge's "(A)"/"(B)").

The generation stages' resumable row store is :mod:`alignlab.rows`; their work items come from
:mod:`alignlab.data.items`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Literal, overload

log = logging.getLogger("alignlab")
Conversation = Sequence[dict[str, str]]


# Every sampling setting that would change the distribution away from softmax(logits / T),
# at its neutral value. Set explicitly: ``generate`` fills each setting left unset (None) from the
# model's own ``generation_config.json``, and many instruct models ship processors there.
NEUTRAL_SAMPLING: dict[str, Any] = {
    "top_k": 0, "top_p": 1.0, "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "sequence_bias": None, "min_length": 0, "min_new_tokens": None,
    "exponential_decay_length_penalty": None, "renormalize_logits": False,
    "remove_invalid_values": False, "guidance_scale": None, "num_beams": 1,
    "diversity_penalty": 0.0, "length_penalty": 1.0, "watermarking_config": None,
}


@contextlib.contextmanager
def plain_sampling(model: Any) -> Iterator[None]:
    """Within this block ``model.generate`` samples from exactly softmax(logits / T).

    ``generate`` merges the model's ``generation_config`` into the one passed to it (values left
    None are taken from the model's), so a checkpoint's repetition_penalty, top_k, min_p, ... would
    silently change the sampled distribution while PPO's ratios, the KL penalty and evaluation's
    KL assume plain temperature sampling. Every transformers model inside ``model`` (a peft
    wrapper holds one) gets a config with only its special-token ids for the duration; pass
    :data:`NEUTRAL_SAMPLING` to ``generate`` as well.
    """
    from transformers import GenerationConfig

    holders = [m for m in model.modules()
               if isinstance(getattr(m, "generation_config", None), GenerationConfig)]
    saved = [m.generation_config for m in holders]
    for m, old in zip(holders, saved, strict=True):
        m.generation_config = GenerationConfig(
            bos_token_id=old.bos_token_id, eos_token_id=old.eos_token_id,
            pad_token_id=old.pad_token_id, decoder_start_token_id=old.decoder_start_token_id)
    try:
        yield
    finally:
        for m, old in zip(holders, saved, strict=True):
            m.generation_config = old


@overload
def generate(model: Any, tokenizer: Any, prompts: Sequence[Sequence[dict[str, str]]], *,
             return_ids: Literal[False] = False, **kwargs: Any) -> list[list[str]]: ...


@overload
def generate(model: Any, tokenizer: Any, prompts: Sequence[Sequence[dict[str, str]]], *,
             return_ids: Literal[True], **kwargs: Any
             ) -> tuple[list[list[str]], list[list[list[int]]]]: ...


def generate(model: Any, tokenizer: Any, prompts: Sequence[Sequence[dict[str, str]]], *,
             num_samples: int = 1, temperature: float = 0.7, max_new_tokens: int = 32,
             batch_size: int = 64, seed: int = 0, progress: bool = False,
             prune_finished: bool = False, return_ids: bool = False
             ) -> list[list[str]] | tuple[list[list[str]], list[list[list[int]]]]:
    """``num_samples`` responses for each conversation in ``prompts`` (greedy at temperature 0).

    Prompts are sorted by length so each batch pads little, and restored to input order.
    ``prune_finished`` drops each row from the batch (and its KV cache) as soon as it ends,
    instead of running the whole batch until its longest answer is done (as ``model.generate``
    does); it samples from the same distribution through a different random stream, and falls
    back to ``model.generate`` for models whose cache can't be pruned.

    ``return_ids`` also returns the sampled token ids of each response, in the same layout:
    exactly the tokens drawn, ending with the EOS token when one was sampled (a response cut at
    ``max_new_tokens`` has none) and without padding. Scoring these ids, rather than the
    decoded and re-tokenised text, gives the log-probability of what was actually sampled.
    """
    import torch
    from tqdm.auto import tqdm

    texts = [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True)
             for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[list[str]] = [[] for _ in texts]
    out_ids: list[list[list[int]]] = [[] for _ in texts]
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    eos = _eos_ids(model, tokenizer)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="generate", disable=not progress):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            # Seed per batch so results do not depend on what ran before.
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            new = None
            with torch.no_grad():
                if prune_finished:
                    new = _decode_pruned(model, enc["input_ids"].repeat_interleave(num_samples, 0),
                                         enc["attention_mask"].repeat_interleave(num_samples, 0),
                                         max_new_tokens=max_new_tokens, temperature=temperature,
                                         eos=eos)
                if new is None:
                    with plain_sampling(model):
                        ids = model.generate(
                            **enc, **NEUTRAL_SAMPLING, max_new_tokens=max_new_tokens,
                            do_sample=temperature > 0,
                            temperature=temperature if temperature > 0 else None,
                            num_return_sequences=num_samples,
                            pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=sorted(eos))
                    new = ids[:, enc["input_ids"].shape[1]:]
            decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
            rows = [_until_eos(r, eos) for r in (new.tolist() if hasattr(new, "tolist") else new)]
            for j, i in enumerate(idx):
                out[i] = [d.strip() for d in decoded[j * num_samples:(j + 1) * num_samples]]
                out_ids[i] = rows[j * num_samples:(j + 1) * num_samples]
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return (out, out_ids) if return_ids else out


def _until_eos(ids: list[int], eos: set[int]) -> list[int]:
    """The sampled tokens up to and including the first EOS; ``model.generate`` pads a finished
    row after it (with the pad token, which may itself be the EOS token)."""
    for k, token in enumerate(ids):
        if token in eos:
            return ids[:k + 1]
    return ids


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end an answer: the tokenizer's EOS and the model's generation EOS ids."""
    ids = {tokenizer.eos_token_id}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(config_eos) if isinstance(config_eos, (list, tuple)) else {config_eos}
    return {i for i in ids if i is not None}


_PRUNE_UNSUPPORTED: set[str] = set()  # model classes whose cache couldn't be pruned


def _decode_pruned(model: Any, input_ids: Any, attention_mask: Any, *, max_new_tokens: int,
                   temperature: float, eos: set[int]) -> list[list[int]] | None:
    """Sample token ids row by row, removing finished rows from the batch and KV cache.

    A prompt prefix shared by the whole batch is computed once (see :func:`_prefill`). Plain
    temperature sampling (no top-k/top-p), greedy at temperature 0: what
    ``model.generate(top_k=0, top_p=1.0)`` does. Returns None (caller falls back to
    ``model.generate``) for models whose cache has no batch selection.
    """
    import torch

    name = type(model).__name__
    if name in _PRUNE_UNSUPPORTED or getattr(model.config, "is_encoder_decoder", False):
        return None
    try:
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        _grow_in_place(cache)
    except (ImportError, TypeError, ValueError):
        _PRUNE_UNSUPPORTED.add(name)
        return None
    # transformers renamed the forward's ``past_key_values`` to ``cache`` (5.x, with a warning).
    params = inspect.signature(model.forward).parameters
    cache_kw = {("cache" if "cache" in params else "past_key_values"): cache, "use_cache": True}
    n = input_ids.shape[0]
    rows = torch.arange(n)
    try:
        out, attention_mask, last = _prefill(model, input_ids, attention_mask, cache, cache_kw)
    except (TypeError, AttributeError, NotImplementedError, ValueError):
        # a model without logits_to_keep/position_ids, or a cache we can't drive: generate()
        _PRUNE_UNSUPPORTED.add(name)
        return None
    result: list[list[int]] = [[] for _ in range(n)]
    eos_t = torch.tensor(sorted(eos), device=input_ids.device)
    for step in range(max_new_tokens):
        logits = out.logits[:, -1, :].float()
        if temperature > 0:
            token = torch.multinomial(torch.softmax(logits / temperature, -1), 1).squeeze(1)
        else:
            token = logits.argmax(-1)
        for r, t in zip(rows.tolist(), token.tolist(), strict=True):
            result[r].append(t)
        alive = ~torch.isin(token, eos_t)
        if step == max_new_tokens - 1 or not bool(alive.any()):
            break
        if not bool(alive.all()):
            keep = alive.nonzero().squeeze(1)
            try:
                cache.batch_select_indices(keep)
            except (AttributeError, NotImplementedError, ValueError):
                _PRUNE_UNSUPPORTED.add(name)
                return None
            rows, token, attention_mask, last = rows[keep.cpu()], token[keep], \
                attention_mask[keep], last[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(token), 1))], 1)
        last = last + 1
        out = model(input_ids=token[:, None], attention_mask=attention_mask,
                    position_ids=last[:, None], **cache_kw)
    return result


_MIN_SHARED = 16  # shared prompt tokens worth a separate prefill


def _grow_in_place(cache: Any) -> None:
    """Swap the plain layers of a ``DynamicCache`` for ones that append in place.

    ``DynamicLayer.update`` concatenates, copying the whole cache at every decoding step: with
    32 rows and a few hundred tokens of context that copy costs more than the model's forward
    pass. The replacement keeps keys and values in a buffer with spare room (grown in chunks)
    and hands out views of its filled part, so a step writes one position. Batch selection and
    repetition (inherited) replace the tensors, after which the buffer is rebuilt from them.
    """
    from transformers.cache_utils import DynamicLayer

    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        growing = _growing_layer()
        cache.layers = [growing() for _ in cache.layers]


@functools.cache
def _growing_layer() -> type:
    """``DynamicLayer`` whose ``update`` writes into spare room of a buffer (see above)."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        chunk = 128

        def update(self, key_states: Any, value_states: Any, *args: Any,
                   **kwargs: Any) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            length = self.get_seq_length()
            need = length + key_states.shape[-2]
            buf = getattr(self, "_kbuf", None)
            if getattr(self, "_view", None) is not self.keys or buf is None \
                    or need > buf.shape[-2] or buf.shape[0] != key_states.shape[0]:
                b, h, _, d = key_states.shape
                kbuf = key_states.new_empty((b, h, need + self.chunk, d))
                vbuf = value_states.new_empty((b, h, need + self.chunk,
                                               value_states.shape[-1]))
                if length:
                    kbuf[..., :length, :] = self.keys
                    vbuf[..., :length, :] = self.values
                self._kbuf, self._vbuf = kbuf, vbuf
            self._kbuf[..., length:need, :] = key_states
            self._vbuf[..., length:need, :] = value_states
            self.keys = self._view = self._kbuf[..., :need, :]
            self.values = self._vbuf[..., :need, :]
            return self.keys, self.values

    return GrowingLayer


def _prefill(model: Any, input_ids: Any, attention_mask: Any, cache: Any,
             cache_kw: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Run the prompts through the model, filling the cache; returns (output, mask, last pos).

    When every prompt starts with the same tokens (the CAI few-shot chats, or one prompt
    repeated for several samples), that prefix is computed once and its cache copied to every
    row; the rest of each prompt follows it, left-padded *after* the prefix (the padding is
    masked, and positions skip it), so each row sees exactly its own unpadded prompt.
    """
    import torch

    rows = [ids[m.bool()].tolist() for ids, m in zip(input_ids, attention_mask, strict=True)]
    shared = 0
    shortest = min(len(r) for r in rows)
    while shared < shortest - 1 and all(r[shared] == rows[0][shared] for r in rows):
        shared += 1
    n, device = len(rows), input_ids.device
    if n == 1 or shared < _MIN_SHARED or not hasattr(cache, "batch_repeat_interleave"):
        position = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position,
                    logits_to_keep=1, **cache_kw)
        return out, attention_mask, position[:, -1]
    prefix = torch.tensor([rows[0][:shared]], device=device)
    model(input_ids=prefix, attention_mask=torch.ones_like(prefix),
          position_ids=torch.arange(shared, device=device)[None], logits_to_keep=1, **cache_kw)
    cache.batch_repeat_interleave(n)
    block, block_mask = left_pad([r[shared:] for r in rows], 0, device)
    block_mask = block_mask.to(attention_mask.dtype)
    mask = torch.cat([torch.ones((n, shared), dtype=attention_mask.dtype, device=device),
                      block_mask], 1)
    position = shared + (block_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=block, attention_mask=mask, position_ids=position, logits_to_keep=1,
                **cache_kw)
    return out, mask, position[:, -1]


def left_pad(seqs: Sequence[Sequence[int]], pad: int, device: Any = None) -> tuple[Any, Any]:
    """(ids, mask) of token sequences right-aligned in one batch (left padding), so their
    last tokens, the ones scored or continued, share positions."""
    import torch

    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
    for i, x in enumerate(seqs):
        if len(x):
            ids[i, width - len(x):] = torch.tensor(list(x), dtype=torch.long, device=device)
            mask[i, width - len(x):] = 1
    return ids, mask


def option_logprobs(model: Any, tokenizer: Any, queries: Sequence[tuple[Conversation, str]],
                    options: Sequence[str], *, batch_size: int = 32) -> list[list[float]]:
    """log P(option | chat-templated conversation + answer prefix) for each query and option.

    When every option is one token after the prefix (the judge's "A"/"B"), a query is a single
    sequence and all its options are read from the last position's logits: one forward pass
    per batch of queries. Otherwise each (query, option) is its own sequence, scored over the
    option's tokens; those are found by tokenising the whole text (prefix + option) and
    comparing with the prefix alone, so a tokenizer that merges "(" and "A" is still scored
    right. Left padding puts the scored tokens at the end, so only the last few positions'
    logits are computed (``logits_to_keep``), which keeps memory small for large vocabularies.
    """
    import torch

    # Sequences to run: (token ids, [(option index, first scored position, option token ids)]).
    seqs: list[tuple[list[int], list[tuple[int, int, list[int]]]]] = []
    owner: list[int] = []  # query index of each sequence
    for q, (conv, prefix) in enumerate(queries):
        base = tokenizer.apply_chat_template(list(conv), tokenize=False,
                                             add_generation_prompt=True) + prefix
        base_ids = tokenizer(base, add_special_tokens=False)["input_ids"]
        full = [tokenizer(base + option, add_special_tokens=False)["input_ids"]
                for option in options]
        if all(len(ids) == len(base_ids) + 1 and ids[:-1] == base_ids for ids in full):
            seqs.append((base_ids, [(k, len(base_ids), [ids[-1]]) for k, ids in
                                    enumerate(full)]))
            owner.append(q)
            continue
        for k, ids in enumerate(full):
            start = 0
            while start < min(len(ids), len(base_ids)) and ids[start] == base_ids[start]:
                start += 1
            start = max(1, min(start, len(ids) - 1))
            seqs.append((ids[:-1], [(k, start, ids[start:])]))  # the last token is only a target
            owner.append(q)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = [[0.0] * len(options) for _ in queries]
    # Shortest first, so a batch pads little: real conversations run from tens to thousands of
    # tokens, and one long one padded its whole batch (and its attention) to its length.
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    try:
        for b in range(0, len(order), batch_size):
            rows = order[b:b + batch_size]
            chunk = [seqs[i] for i in rows]
            # Positions whose logits are read: from the first scored token's predecessor on.
            keep = max(len(ids) - start + 1 for ids, targets in chunk for _, start, _ in targets)
            input_ids, mask = left_pad([ids for ids, _ in chunk], pad)
            # Positions count from each sequence's first real token, as without padding.
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            inputs = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device),
                      "position_ids": position_ids.to(device)}
            with torch.no_grad():
                try:
                    logits = model(**inputs, logits_to_keep=keep).logits
                except TypeError:  # a model without logits_to_keep: take them all
                    logits = model(**inputs).logits[:, -keep:]
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            for j, (ids, targets) in enumerate(chunk):
                for k, start, tokens in targets:
                    total = 0.0
                    for n, token in enumerate(tokens):
                        # Token n of the option sits at position start + n of the unpadded
                        # sequence and is predicted by the logits one position earlier, which
                        # is index (width - len(ids)) + start + n - 1 - (width - keep) here.
                        total += float(logp[j, keep - len(ids) + start + n - 1, token])
                    scores[owner[rows[j]]][k] = total
    finally:
        model.train(was_training)
    return scores
