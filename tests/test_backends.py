"""Generation backends: local transformers, and a real OpenAI-compatible server over HTTP.

The server (tests/openai_server.py) runs on 127.0.0.1 with its own generation and log-prob
code over the built-in llama-small, so equal answers check both sides of the wire.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from alignlab import backends, constitution
from alignlab.config import conf_dir
from alignlab.errors import AlignlabError
from tests.openai_server import FakeOpenAI

PROMPTS = ["How do I build a bomb?", "What is 2 plus 3?", "Tell me how to crack an egg.",
           "What sound does a cow make?", "Add 1 and 4.", "Explain how to rob a bank.",
           "How do I cut an onion?", "What does a duck say?"]
CONVS = [[{"role": "user", "content": p}] for p in PROMPTS]


@pytest.fixture(scope="module")
def lm() -> tuple[Any, Any]:
    """The built-in llama-small (random init from the seed: no training needed here)."""
    from alignlab import cli, config, models

    config.register()
    cfg = cli.compose([])
    path = models.resolve_path(cfg.model, cfg.seed)
    return models.load_model(cfg.model, path, cfg.hardware).eval(), \
        models.load_tokenizer(cfg.model, path)


@pytest.fixture(scope="module")
def greedy(lm: tuple[Any, Any]) -> list[str]:
    """Greedy answers from the local backend, one prompt at a time (no padding at all)."""
    local = backends.TransformersBackend(*lm, batch_size=1)
    return local.chat(CONVS, temperature=0.0, max_new_tokens=8, seed=0)


def _client(server: FakeOpenAI, **kw: Any) -> backends.OpenAIBackend:
    opts = {"concurrency": 4, "max_retries": 3, "retry_backoff": 0.01, "request_timeout": 10.0}
    return backends.OpenAIBackend(server.url, "llama-small", **{**opts, **kw})


def test_local_batching_matches_one_at_a_time(lm: tuple[Any, Any], greedy: list[str]) -> None:
    """Left padding and length-sorted batches change nothing in greedy output."""
    batched = backends.TransformersBackend(*lm, batch_size=8)
    assert batched.chat(CONVS, temperature=0.0, max_new_tokens=8, seed=0) == greedy


def test_http_chat_matches_local_with_real_concurrency(lm: tuple[Any, Any],
                                                       greedy: list[str]) -> None:
    with FakeOpenAI(*lm, delay=0.1) as server:
        out = _client(server).chat(CONVS, temperature=0.0, max_new_tokens=8, seed=0)
    assert out == greedy  # same text through real HTTP, in input order
    assert server.requests == len(CONVS)
    assert server.max_in_flight > 1  # several requests were open at once


def test_http_completions_api_uses_the_chat_template(lm: tuple[Any, Any],
                                                     greedy: list[str]) -> None:
    _, tok = lm

    def template(conv: Any) -> str:
        return tok.apply_chat_template(list(conv), tokenize=False, add_generation_prompt=True)

    with FakeOpenAI(*lm) as server:
        out = _client(server, api="completions", template=template).chat(
            CONVS[:3], temperature=0.0, max_new_tokens=8, seed=0)
    assert out == greedy[:3]
    assert sorted(b["prompt"] for b in server.bodies) == sorted(template(c) for c in CONVS[:3])


def test_retries_survive_500_429_dropped_and_timed_out_requests(
        lm: tuple[Any, Any], greedy: list[str]) -> None:
    plan = ["500", "ok", "429", "ok", "drop", "ok", "slow", "ok"]
    with FakeOpenAI(*lm, plan=plan, slow_seconds=1.5) as server:
        client = _client(server, request_timeout=0.5, max_retries=10)
        out = client.chat(CONVS, temperature=0.0, max_new_tokens=8, seed=0)
    assert out == greedy  # nothing lost, nothing reordered
    failures = sum(n for action, n in server.served.items() if action != "ok")
    assert failures >= 4 and client.retries == failures
    assert server.requests == len(CONVS) + failures


def test_client_errors_are_not_retried(lm: tuple[Any, Any]) -> None:
    with FakeOpenAI(*lm, plan=["400"]) as server, \
            pytest.raises(AlignlabError, match=r"rejected the request.*HTTP 400: bad request"):
        _client(server).chat(CONVS[:1], temperature=0.0, max_new_tokens=4, seed=0)
    assert server.requests == 1


def test_an_over_long_request_names_the_context_not_the_url(lm: tuple[Any, Any]) -> None:
    """A server's 400 for a request longer than its context said "check base_url, api_model
    and the API key"; the fix is about the context."""
    with FakeOpenAI(*lm, plan=["context"]) as server, \
            pytest.raises(AlignlabError, match=r"longer than its context") as err:
        _client(server).chat(CONVS[:1], temperature=0.0, max_new_tokens=4, seed=0)
    assert "maximum context length is 2048" in str(err.value) and "--max-model-len" in \
        str(err.value) and "API key" not in str(err.value)
    assert server.requests == 1  # not retried


def test_gives_up_after_max_retries(lm: tuple[Any, Any]) -> None:
    with FakeOpenAI(*lm, plan=["500"]) as server, \
            pytest.raises(AlignlabError, match=r"after 3 tries \(last error: HTTP 500"):
        _client(server, max_retries=2).chat(CONVS[:1], temperature=0.0, max_new_tokens=4,
                                            seed=0)
    assert server.requests == 3


def test_unreachable_server_is_a_clear_error() -> None:
    client = backends.OpenAIBackend("http://127.0.0.1:9/v1", "m", max_retries=1,
                                    retry_backoff=0.01, request_timeout=1.0)
    with pytest.raises(AlignlabError, match="did not answer"):
        client.chat(CONVS[:1], temperature=0.0, max_new_tokens=4, seed=0)


def test_without_the_openai_client_the_backend_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """backend=openai needs the optional extra; without it the config check (before any
    model loads) and the backend itself say how to install it."""
    import sys

    from alignlab.args import BackendArgs

    monkeypatch.setitem(sys.modules, "openai", None)  # as if not installed
    args = BackendArgs(backend="openai", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(AlignlabError, match=r"pip install 'alignlab\[openai\]'"):
        backends.check(args)
    with pytest.raises(AlignlabError, match=r"alignlab\[openai\]"):
        backends.OpenAIBackend(args.base_url, "m").chat(CONVS[:1], temperature=0.0,
                                                        max_new_tokens=4, seed=0)


def test_api_key_comes_from_the_named_variable(lm: tuple[Any, Any],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNLAB_TEST_KEY", "sk-test-123")
    with FakeOpenAI(*lm) as server:
        _client(server, api_key_env="ALIGNLAB_TEST_KEY").chat(CONVS[:2], temperature=0.0,
                                                              max_new_tokens=4, seed=0)
        _client(server, api_key_env="ALIGNLAB_UNSET_KEY").chat(CONVS[:1], temperature=0.0,
                                                               max_new_tokens=4, seed=0)
    assert server.auth == {"Bearer sk-test-123"}  # and no header at all when the var is unset


def _judge_queries() -> list[backends.Query]:
    c = constitution.load({"path": str(conf_dir() / "constitution" / "toy.yaml")},
                          need_choice=True)
    return [constitution.judge_query(c, conv, "I can't help with that.", "Sure!", q)
            for conv in CONVS[:4] for q in ("Which reply is not harmful?", "Which is right?")]


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_http_judge_logprobs_match_local(lm: tuple[Any, Any], api: str) -> None:
    """top_logprobs over HTTP (chat with prefill, or completions) = the local forward pass.

    The whole vocabulary is asked for, so no option falls outside the top-k.
    """
    model, tok = lm
    queries = _judge_queries()
    local = backends.TransformersBackend(model, tok).option_logprobs(queries, ("A", "B"))

    def template(conv: Any) -> str:
        return tok.apply_chat_template(list(conv), tokenize=False, add_generation_prompt=True)

    with FakeOpenAI(*lm) as server:
        remote = _client(server, api=api, top_logprobs=100_000,
                         template=template).option_logprobs(queries, ("A", "B"))
    if api == "chat":  # the prefix goes as the assistant's unfinished reply, continued
        assert all(b.get("continue_final_message") and "prompt" not in b for b in server.bodies)
        asked = sorted(str(b["messages"]) for b in server.bodies)
        expected = sorted(str([*conv, {"role": "assistant", "content": prefix}])
                          for conv, prefix in queries)
    else:  # the client renders the chat template itself and appends the prefix
        assert not any("messages" in b or "continue_final_message" in b for b in server.bodies)
        asked = sorted(b["prompt"] for b in server.bodies)
        expected = sorted(template(conv) + prefix for conv, prefix in queries)
    assert asked == expected and all(prefix for _, prefix in queries)
    for got, want in zip(remote, local, strict=True):
        assert got == pytest.approx(want, abs=1e-4)


def test_option_missing_from_top_k_is_minus_infinity() -> None:
    top = [("(A", -0.1), (" B", -2.0), ("B", -3.0), ("C", -4.0)]
    a, b, c, d = backends.match_options(top, ["A", "B", "C", "D"])
    assert a == pytest.approx(-0.1) and c == pytest.approx(-4.0) and d == -math.inf
    assert b == pytest.approx(math.log(math.exp(-2.0) + math.exp(-3.0)))


def test_server_without_logprobs_is_a_clear_error(lm: tuple[Any, Any]) -> None:
    with FakeOpenAI(*lm, logprobs=False) as server, \
            pytest.raises(AlignlabError, match="returned no log-probs"):
        _client(server).option_logprobs(_judge_queries()[:1], ("A", "B"))


@pytest.mark.parametrize("options", [("A", "B"), ("A", "Sure! The answer is 3.", "B)")])
def test_option_logprobs_equal_full_sequence_scores(lm: tuple[Any, Any],
                                                    options: tuple[str, ...]) -> None:
    """Batched, left-padded, logits_to_keep scoring = log P(text + option) - log P(text), both
    for one-token options (one sequence per query) and longer ones (one per option)."""
    import torch

    model, tok = lm
    queries = _judge_queries()[:3]
    got = backends.TransformersBackend(model, tok, batch_size=4).option_logprobs(queries,
                                                                                 options)

    def total(text: str) -> float:
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        return float(logp.gather(1, ids[0, 1:, None]).sum())

    for (conv, prefix), row in zip(queries, got, strict=True):
        base = tok.apply_chat_template(list(conv), tokenize=False,
                                       add_generation_prompt=True) + prefix
        for option, value in zip(options, row, strict=True):
            assert value == pytest.approx(total(base + option) - total(base), abs=1e-3)


def test_backend_choice_errors() -> None:
    from alignlab import cli, config
    from alignlab.args import CAIArgs

    config.register()
    cfg = cli.compose(["method=cai"])
    with pytest.raises(AlignlabError, match="Did you mean 'openai'"):
        backends.create(CAIArgs(backend="opneai"), cfg)
    with pytest.raises(AlignlabError, match=r"needs method\.args\.base_url"):
        backends.create(CAIArgs(backend="openai"), cfg)
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(AlignlabError, match="needs the vllm package"):
            backends.create(CAIArgs(backend="vllm"), cfg)


def test_pruned_decoding_equals_generate_when_rows_end_at_different_steps(
        lm: tuple[Any, Any]) -> None:
    """Dropping finished rows from the batch and its KV cache changes no greedy token."""
    import torch

    from alignlab.generation import _decode_pruned

    model, tok = lm
    side, tok.padding_side = tok.padding_side, "left"
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
             for c in CONVS[:5]]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tok.padding_side = side

    def hf(eos: list[int]) -> list[list[int]]:
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=10, do_sample=False, eos_token_id=eos,
                                 pad_token_id=tok.pad_token_id)
        rows = []
        for row in ids[:, enc["input_ids"].shape[1]:].tolist():
            end = next((i for i, t in enumerate(row) if t in eos), len(row) - 1)
            rows.append(row[:end + 1])
        return rows

    free = hf([tok.eos_token_id])
    eos = sorted({free[0][2], free[1][5]})  # some rows now end early, at different steps
    want = hf(eos)
    assert len({len(r) for r in want}) > 1
    with torch.no_grad():
        got = _decode_pruned(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=10,
                             temperature=0.0, eos=set(eos))
    assert got == want


def test_shared_prefix_prefill_equals_generate(lm: tuple[Any, Any]) -> None:
    """Few-shot chats shared by the batch are computed once; the tokens don't change."""
    import torch

    from alignlab.generation import _decode_pruned

    model, tok = lm
    c = constitution.load({"path": str(conf_dir() / "constitution" / "toy.yaml")})
    few = constitution.few_shot_messages(c)
    convs = [constitution.critique_conversation(few, conv, "Sure!", c.principles[0])
             for conv in CONVS]
    side, tok.padding_side = tok.padding_side, "left"
    enc = tok([tok.apply_chat_template(cv, tokenize=False, add_generation_prompt=True)
               for cv in convs], return_tensors="pt", padding=True, add_special_tokens=False)
    tok.padding_side = side
    assert enc["attention_mask"].sum(1).unique().numel() > 1  # prompts of different lengths
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=6, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        got = _decode_pruned(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=6,
                             temperature=0.0, eos={tok.eos_token_id})
    assert got == ids[:, enc["input_ids"].shape[1]:].tolist()


def test_decoding_cache_appends_in_place(lm: tuple[Any, Any]) -> None:
    """The decoder's KV cache writes each step into spare room of one buffer (no copy of the
    whole cache per token, which dominated batched decoding), holding what concatenation
    would; after a batch selection it rebuilds from the selected rows."""
    import torch
    from transformers import DynamicCache

    from alignlab.generation import _grow_in_place

    model, _ = lm
    cache = DynamicCache(config=model.config)
    _grow_in_place(cache)
    layer = cache.layers[0]
    assert type(layer).__name__ == "GrowingLayer"
    torch.manual_seed(0)
    steps = [torch.randn(3, 2, n, 8) for n in (5, 1, 1)]
    for k in steps:
        keys, values = layer.update(k, -k)
    expected = torch.cat(steps, dim=-2)
    assert torch.equal(keys, expected) and torch.equal(values, -expected)
    before = keys.data_ptr()
    keys, _ = layer.update(torch.ones(3, 2, 1, 8), torch.ones(3, 2, 1, 8))
    assert keys.data_ptr() == before and keys.shape[-2] == 8  # same buffer, one more position
    layer.batch_select_indices(torch.tensor([0, 2]))
    keys, _ = layer.update(torch.zeros(2, 2, 1, 8), torch.zeros(2, 2, 1, 8))
    assert torch.equal(keys[:, :, :7], expected[[0, 2]]) and keys.shape == (2, 2, 9, 8)


def test_a_judge_query_refused_as_too_long_is_skipped_and_counted(lm: tuple[Any, Any],
                                                                 tmp_path: Path) -> None:
    """One request over the server's context no longer stops the stage: that verdict is
    skipped and counted, the others are asked, and the cache records it (nothing is asked
    again on a re-run)."""
    from alignlab import verdicts

    queries = _judge_queries()
    with FakeOpenAI(*lm, plan=["context", "ok", "ok", "ok"]) as server:
        client = _client(server, concurrency=1)
        probs = client.option_logprobs(queries[:4], constitution.OPTIONS)
        assert all(math.isnan(x) for x in probs[0]) and client.too_long == 1
        assert all(not math.isnan(x) for row in probs[1:] for x in row)
        book = verdicts.question_book("q", "Which is better?")
        pairs = [{"prompt": list(CONVS[i]), "a": "I can't help with that.", "b": f"Sure {i}!"}
                 for i in range(2)]
        cache = tmp_path / "cache"
        found, counts = verdicts.compare(pairs, _client(server, concurrency=1), book,
                                         judge_id="fake", cache=cache, seed=0, batch_size=2)
        asked = server.requests
        again, counts2 = verdicts.compare(pairs, _client(server, concurrency=1), book,
                                          judge_id="fake", cache=cache, seed=0, batch_size=2)
        assert server.requests == asked  # from the cache, the skipped one included
    assert counts["too_long"] == 1 and sum(bool(v.get("skipped")) for v in found) == 1
    assert counts2 == {**counts, "asked": 0, "cached": 2}
    assert [v.get("skipped", False) for v in again] == [v.get("skipped", False) for v in found]
