"""Generation backends shared by the CAI, judge and evaluation stages.

Three ways to get text (and judge log-probs) out of a model, behind one small interface:

- ``transformers``: the model loaded in this process; batched, left-padded, length-sorted
  generation (:func:`alignlab.generation.generate`) and option log-probs from one forward pass.
- ``openai``: any OpenAI-compatible HTTP server (vLLM, TGI, llama.cpp, SGLang, OpenAI itself).
  Requests run on a thread pool (``concurrency``) through the ``openai`` client (the optional
  extra ``alignlab[openai]``), which retries what a retry can fix (408/409/429/5xx, timeouts,
  dropped connections) with exponential back-off from ``retry_backoff`` and the server's
  Retry-After; its errors become alignlab's one-line messages. The API key is read from the
  environment variable named by ``api_key_env``: it is never written to a config, a log or an
  error message, and no Authorization header is sent without one.
- ``vllm``: vLLM in this process, on a GPU; a clear error where vLLM is not installed.

Importing this module is cheap; torch/transformers/vllm are imported by the backends that need
them. Their settings (``BackendArgs``, shared by ``method.args`` of cai and judge) live in
:mod:`alignlab.args`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, get_args

from alignlab import config, generation, lengths, models
from alignlab.args import Backend as BackendName
from alignlab.args import BackendArgs
from alignlab.config import cuda_present
from alignlab.errors import AlignlabError

log = logging.getLogger("alignlab")

Conversation = Sequence[dict[str, str]]
# A judge query: the conversation to continue, and the start of the assistant's answer
# (e.g. "The answer is: (") after which the options are scored.
Query = tuple[Conversation, str]
BACKENDS = get_args(BackendName)  # declared once, on BackendArgs.backend
# HTTP statuses the openai client retries: the server is busy, restarting or timed out.
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
_NO_OPENAI = AlignlabError(
    "method.args.backend=openai talks to the server with the openai client, which is not "
    "installed. Install it with `pip install 'alignlab[openai]'` (or `pip install openai`).")
_OPENAI_FIRST_DELAY = 0.5  # the openai client's first back-off (openai._constants)
# The request fields the openai client takes by name; the rest (vLLM's continue_final_message
# and add_generation_prompt) go in the request body as they are.
_CHAT_KEYS = {"model", "messages", "max_tokens", "temperature", "seed", "logprobs",
              "top_logprobs"}
_COMPLETION_KEYS = {"model", "prompt", "max_tokens", "temperature", "seed", "logprobs"}


class TooLong(AlignlabError):
    """A server refused one request as longer than the model's context."""


class Backend(Protocol):
    """What the stages need from a model: sampled answers and option log-probs."""

    name: str

    def chat(self, conversations: Sequence[Conversation], *, temperature: float,
             max_new_tokens: int, seed: int) -> list[str]:
        """One sampled assistant reply per conversation, in input order."""
        ...

    def option_logprobs(self, queries: Sequence[Query],
                        options: Sequence[str]) -> list[list[float]]:
        """log P(option | conversation + prefix) for each query and option (-inf if unseen)."""
        ...

    def close(self) -> None:
        """Free the model or the connection pool."""
        ...


# ---------------------------------------------------------------------------------------------
# transformers


class TransformersBackend:
    """A model loaded in this process (the default; what the toy world runs on)."""

    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def chat(self, conversations: Sequence[Conversation], *, temperature: float,
             max_new_tokens: int, seed: int) -> list[str]:
        # Finished rows leave the batch: answers of very different lengths (critiques!) don't
        # keep the whole batch running to the longest one.
        out = generation.generate(self.model, self.tokenizer, conversations, num_samples=1,
                                  temperature=temperature, max_new_tokens=max_new_tokens,
                                  batch_size=self.batch_size, seed=seed, prune_finished=True)
        return [o[0] for o in out]

    def option_logprobs(self, queries: Sequence[Query],
                        options: Sequence[str]) -> list[list[float]]:
        return generation.option_logprobs(self.model, self.tokenizer, queries, options,
                                          batch_size=self.batch_size)

    @property
    def context(self) -> int | None:
        """The longest sequence the model takes (its position limit)."""
        return lengths.context_length(self.model, self.tokenizer)

    def query_tokens(self, query: Query) -> int:
        """The tokens of a query as :meth:`option_logprobs` runs it."""
        conv, prefix = query
        text = self.tokenizer.apply_chat_template(list(conv), tokenize=False,
                                                  add_generation_prompt=True) + prefix
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def close(self) -> None:
        self.model = None


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP


class OpenAIBackend:
    """An OpenAI-compatible server, called concurrently with retries and back-off."""

    name = "openai"
    context: int | None = None  # unknown here: an over-long request is refused by the server

    def __init__(self, base_url: str, model: str, *, api: str = "chat",
                 api_key_env: str | None = "OPENAI_API_KEY", concurrency: int = 8,
                 max_retries: int = 5, retry_backoff: float = 1.0,
                 request_timeout: float = 120.0, top_logprobs: int = 20, prefill: bool = True,
                 template: Callable[[Conversation], str] | None = None) -> None:
        if api not in ("chat", "completions"):
            raise AlignlabError(f"method.args.api='{api}' is unknown. Use chat or completions.")
        if api == "completions" and template is None:
            raise AlignlabError("method.args.api=completions needs a local tokenizer with a chat "
                                "template to build prompts. Set model.path to a local folder (or "
                                "hub id) of the served model, or use api=chat.")
        self.base_url = base_url.rstrip("/")
        self.model, self.api, self.template = model, api, template
        self.concurrency = max(1, int(concurrency))
        self.max_retries, self.retry_backoff = int(max_retries), float(retry_backoff)
        self.timeout = float(request_timeout)
        self.top_logprobs, self.prefill = int(top_logprobs), bool(prefill)
        # Read once; kept only in memory and sent only in the Authorization header.
        self._key = os.environ.get(api_key_env) if api_key_env else None
        self.retries = 0  # how many retries this backend needed (reported in metrics)
        self.too_long = 0  # judge queries the server refused as longer than its context
        self._lock = threading.Lock()
        self._openai: Any = None

    # -- transport ------------------------------------------------------------------------------

    def _connect(self) -> Any:
        """The ``openai`` client, made once (it is thread-safe), retrying with this backend's
        back-off and counting its retries."""
        with self._lock:
            if self._openai is not None:
                return self._openai
            try:
                import openai
            except ImportError:
                raise _NO_OPENAI from None
            backend = self

            class Client(openai.OpenAI):
                def _calculate_retry_timeout(self, remaining_retries: int, options: Any,
                                             response_headers: Any = None) -> float:
                    with backend._lock:
                        backend.retries += 1
                    log.warning("a request to %s failed; retry %d of %d", backend.base_url,
                                backend.max_retries - remaining_retries + 1, backend.max_retries)
                    delay = super()._calculate_retry_timeout(remaining_retries, options,
                                                             response_headers)
                    if self._parse_retry_after_header(response_headers) is not None:
                        return delay  # the server said when
                    return delay * backend.retry_backoff / _OPENAI_FIRST_DELAY

            # A placeholder key when there is none: the header is then omitted per request.
            self._openai = Client(base_url=self.base_url, api_key=self._key or "unused",
                                  max_retries=self.max_retries, timeout=self.timeout)
            return self._openai

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One request (``chat/completions`` or ``completions``) and its JSON answer; what the
        client could not fix by retrying is one clear error."""
        client = self._connect()
        import openai
        endpoint = client.completions if path == "completions" else client.chat.completions
        known = _COMPLETION_KEYS if path == "completions" else _CHAT_KEYS
        extra = {k: v for k, v in payload.items() if k not in known}  # vLLM's own fields
        headers = {} if self._key else {"Authorization": openai.omit}
        try:
            answer = endpoint.create(**{k: v for k, v in payload.items() if k in known},
                                     extra_body=extra or None, extra_headers=headers)
        except openai.APIStatusError as err:
            raise self._rejected(path, payload, err.status_code, _error_text(err)) from None
        except openai.APIConnectionError as err:  # timeouts too, after the retries
            cause = err.__cause__ or err
            raise self._no_answer(path, f"{type(cause).__name__}: {cause}") from None
        except openai.APIResponseValidationError:
            raise self._no_answer(path, "the answer was not JSON") from None
        return answer.model_dump()

    def _rejected(self, path: str, payload: dict[str, Any], status: int,
                  detail: str) -> AlignlabError:
        if status in (400, 413, 422) and _CONTEXT_ERROR.search(detail):
            return TooLong(
                f"The model served at {self.base_url} ('{self.model}') refused a request "
                f"longer than its context (HTTP {status}: {detail}). Serve it with a longer "
                "context (vLLM: --max-model-len), shorten the rows (fewer turns, "
                "method.args.max_new_tokens), or use a judge with a longer context.")
        if status in _RETRY_STATUS:  # the client retried it max_retries times
            return self._no_answer(path, f"HTTP {status}: {detail}")
        hint = (" If the server does not support continue_final_message, set "
                "method.args.prefill=false." if "continue_final_message" in payload else "")
        return AlignlabError(
            f"The server at {self.base_url} rejected the request to /{path} with HTTP {status}: "
            f"{detail}. Check method.args.base_url, api_model ('{self.model}') and the API key "
            f"(in the variable named by method.args.api_key_env).{hint}")

    def _no_answer(self, path: str, last: str) -> AlignlabError:
        return AlignlabError(f"The server at {self.base_url} did not answer /{path} after "
                             f"{self.max_retries + 1} tries (last error: {last}). Check that it "
                             "is running and reachable, or raise method.args.max_retries / "
                             "request_timeout.")

    def _map(self, fn: Callable[[int], Any], n: int) -> list[Any]:
        if n == 0:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, n)) as pool:
            return list(pool.map(fn, range(n)))

    # -- generation -----------------------------------------------------------------------------

    def chat(self, conversations: Sequence[Conversation], *, temperature: float,
             max_new_tokens: int, seed: int) -> list[str]:
        def one(i: int) -> str:
            params = {"model": self.model, "max_tokens": max_new_tokens,
                      "temperature": temperature, "seed": seed + i}
            if self.api == "completions":
                assert self.template is not None
                answer = self._post("completions",
                                    {**params, "prompt": self.template(conversations[i])})
                return _choice(answer, self.base_url)["text"].strip()
            answer = self._post("chat/completions",
                                {**params, "messages": list(conversations[i])})
            return (_choice(answer, self.base_url)["message"].get("content") or "").strip()

        return self._map(one, len(conversations))

    def option_logprobs(self, queries: Sequence[Query],
                        options: Sequence[str]) -> list[list[float]]:
        """Next-token log-probs of each option after the prefix, from ``top_logprobs``.

        Only the first token of the answer is read, so options must differ in their first
        character (A/B do). An option outside the top-k gets -inf. A query the server refuses
        as longer than the model's context gets NaN for every option (the row is skipped and
        counted by the caller; the others go on).
        """
        def one(i: int) -> list[float]:
            try:
                return ask(i)
            except TooLong as err:
                with self._lock:
                    self.too_long += 1
                    if self.too_long == 1:
                        log.warning("%s; such rows are skipped and counted", str(err)[:300])
                return [math.nan] * len(options)

        def ask(i: int) -> list[float]:
            conv, prefix = queries[i]
            params = {"model": self.model, "max_tokens": 1, "temperature": 0.0}
            if self.api == "completions":
                assert self.template is not None
                answer = self._post("completions", {**params, "logprobs": self.top_logprobs,
                                                    "prompt": self.template(conv) + prefix})
                top = _completion_top(_choice(answer, self.base_url), self.base_url)
            else:
                messages = list(conv)
                extra: dict[str, Any] = {}
                if self.prefill and prefix:
                    messages = [*messages, {"role": "assistant", "content": prefix}]
                    extra = {"continue_final_message": True, "add_generation_prompt": False}
                answer = self._post("chat/completions", {
                    **params, **extra, "messages": messages, "logprobs": True,
                    "top_logprobs": self.top_logprobs})
                top = _chat_top(_choice(answer, self.base_url), self.base_url)
            return match_options(top, options)

        return self._map(one, len(queries))

    def close(self) -> None:
        self._key = None
        if self._openai is not None:
            self._openai.close()
            self._openai = None


# How servers say a request is longer than the context (vLLM, OpenAI, llama.cpp, TGI).
_CONTEXT_ERROR = re.compile(
    r"context length|context window|maximum context|max_model_len|too many tokens|"
    r"exceeds? the (?:model's )?(?:maximum|context)|prompt is too long|input is too long",
    re.IGNORECASE)


def _error_text(err: Any) -> str:
    """The server's own message of an ``openai.APIStatusError`` (its JSON ``error.message``, or
    the body), cut to 200 characters."""
    try:
        body = err.response.json()
        message = body.get("error", body) if isinstance(body, dict) else body
        if isinstance(message, dict):
            message = message.get("message", message)
        return str(message)[:200]
    except Exception:  # the body is only decoration for the message
        text = getattr(err.response, "text", "") or ""
        return text[:200] or getattr(err.response, "reason_phrase", "") or "no details"


def _choice(answer: dict[str, Any], where: str) -> dict[str, Any]:
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not choices:
        raise AlignlabError(f"The server at {where} answered without 'choices'. Check that "
                            "method.args.base_url points at an OpenAI-compatible API (…/v1).")
    return choices[0]


def _no_logprobs(where: str) -> AlignlabError:
    return AlignlabError(f"The server at {where} returned no log-probs, which the judge reads "
                         "its labels from. Use a server that supports logprobs/top_logprobs "
                         "(vLLM, SGLang, llama.cpp with --logprobs, OpenAI chat models), or "
                         "method.args.backend=transformers.")


def _chat_top(choice: dict[str, Any], where: str) -> list[tuple[str, float]]:
    content = (choice.get("logprobs") or {}).get("content")
    if not content or not content[0].get("top_logprobs"):
        raise _no_logprobs(where)
    return [(t["token"], float(t["logprob"])) for t in content[0]["top_logprobs"]]


def _completion_top(choice: dict[str, Any], where: str) -> list[tuple[str, float]]:
    top = (choice.get("logprobs") or {}).get("top_logprobs")
    if not top or not top[0]:
        raise _no_logprobs(where)
    return [(token, float(lp)) for token, lp in top[0].items()]


def match_options(top: Sequence[tuple[str, float]], options: Sequence[str]) -> list[float]:
    """Pool the top-k next tokens into one log-prob per option.

    A token counts for an option when, stripped of spaces and brackets, it equals the option or
    is its first character ("A", " A", "(A" all count for "A"). Several matching tokens add up.
    """
    out = []
    for option in options:
        target = option.strip().strip("()").strip()
        hits = [lp for token, lp in top
                if (t := token.strip().strip("()").strip()) and t in (target, target[:1])]
        out.append(_logsumexp(hits))
    return out


def _logsumexp(values: Sequence[float]) -> float:
    if not values:
        return -math.inf
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


# ---------------------------------------------------------------------------------------------
# vLLM in process


class VLLMBackend:
    """vLLM's offline engine on this machine's GPU."""

    name = "vllm"

    def __init__(self, path: str, *, seed: int, dtype: str = "auto",
                 trust_remote_code: bool = False, top_logprobs: int = 20) -> None:
        try:
            import vllm
        except ImportError:
            raise AlignlabError("method.args.backend=vllm needs the vllm package, which is not "
                                "installed. Install it on a CUDA machine (`pip install vllm`), "
                                "or use backend=transformers (or openai with a vLLM "
                                "server).") from None
        if not cuda_present():
            raise AlignlabError("method.args.backend=vllm needs an NVIDIA GPU, and this machine "
                                "has none. Use backend=transformers.")
        self.llm = vllm.LLM(model=path, seed=seed, dtype=dtype,
                            trust_remote_code=trust_remote_code)
        self.tokenizer = self.llm.get_tokenizer()
        self.top_logprobs = top_logprobs

    def chat(self, conversations: Sequence[Conversation], *, temperature: float,
             max_new_tokens: int, seed: int) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=seed)
        outs = self.llm.chat([list(c) for c in conversations], params, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outs]

    def option_logprobs(self, queries: Sequence[Query],
                        options: Sequence[str]) -> list[list[float]]:
        from vllm import SamplingParams

        texts = [self.tokenizer.apply_chat_template(list(c), tokenize=False,
                                                    add_generation_prompt=True) + prefix
                 for c, prefix in queries]
        params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=self.top_logprobs)
        outs = self.llm.generate(texts, params, use_tqdm=False)
        result = []
        for o in outs:
            step = o.outputs[0].logprobs[0]
            top = [(lp.decoded_token or self.tokenizer.decode([tid]), lp.logprob)
                   for tid, lp in step.items()]
            result.append(match_options(top, options))
        return result

    def close(self) -> None:
        self.llm = None


# ---------------------------------------------------------------------------------------------
# Factory


def check(args: BackendArgs) -> None:
    """Catch backend settings that can't work, before any data or model is loaded."""
    config.check_instance(args, "method.args")  # the choices and bounds of BackendArgs
    if args.backend == "openai" and not args.base_url:
        raise AlignlabError("method.args.backend=openai needs method.args.base_url, e.g. "
                            "http://127.0.0.1:8000/v1 for a local vLLM server.")
    if args.backend == "openai" and not _has_openai():
        raise _NO_OPENAI


def _has_openai() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("openai") is not None
    except ValueError:  # a module set to None (a test hiding it)
        return False


def create(args: BackendArgs, cfg: Any, model_path: str | None = None) -> Backend:
    """The backend ``args.backend`` for the model at ``model_path`` (default ``model.path``).

    ``cfg`` is the run's config: model settings (dtype, template, trust_remote_code), the
    hardware (device) and the seed come from it.
    """

    check(args)
    model_cfg = cfg.model if model_path in (None, str(cfg.model.path)) else \
        models.other_model(cfg.model, str(model_path))
    if args.backend == "openai":
        assert args.base_url is not None
        template = _remote_template(model_cfg, cfg.seed) if args.api == "completions" else None
        name = args.api_model if model_path is None and args.api_model else str(model_cfg.path)
        return OpenAIBackend(args.base_url, name, api=args.api, api_key_env=args.api_key_env,
                             concurrency=args.concurrency, max_retries=args.max_retries,
                             retry_backoff=args.retry_backoff,
                             request_timeout=args.request_timeout,
                             top_logprobs=args.top_logprobs, prefill=args.prefill,
                             template=template)
    path = models.resolve_path(model_cfg, cfg.seed)
    if args.backend == "vllm":
        return VLLMBackend(path, seed=cfg.seed, dtype=str(model_cfg.dtype),
                           trust_remote_code=bool(model_cfg.trust_remote_code),
                           top_logprobs=args.top_logprobs)
    tokenizer = models.load_tokenizer(model_cfg, path)
    model = models.load_model(model_cfg, path, cfg.hardware)
    if cfg.hardware.device == "cuda" and not models.quantization_config(model_cfg, cfg.hardware):
        model = model.to("cuda")
    return TransformersBackend(model, tokenizer, batch_size=args.batch_size)


def _remote_template(model_cfg: Any, seed: int) -> Callable[[Conversation], str]:
    """The served model's chat template, applied here (for the /completions API)."""
    path = models.resolve_path(model_cfg, seed)
    tokenizer = models.load_tokenizer(model_cfg, path)

    def template(conv: Conversation) -> str:
        return tokenizer.apply_chat_template(list(conv), tokenize=False,
                                             add_generation_prompt=True)

    return template
