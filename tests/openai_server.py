"""A small OpenAI-compatible HTTP server over a local transformers model, for tests.

Real HTTP on 127.0.0.1 (``http.server.ThreadingHTTPServer``, one thread per request) serving
``/v1/chat/completions`` (with ``logprobs``/``top_logprobs`` and vLLM's
``continue_final_message``), ``/v1/completions`` (with legacy ``logprobs``) and ``/v1/models``.
Its own generation and log-prob code is written independently of alignlab's, so agreeing answers
check both. A ``plan`` makes it misbehave on a schedule (HTTP 500, 429, slow answers that hit
the client's timeout, dropped connections) to exercise retries.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    """``with FakeOpenAI(model, tok) as server: server.url`` -> "http://127.0.0.1:PORT/v1"."""

    def __init__(self, model: Any, tokenizer: Any, *, plan: list[str] | None = None,
                 delay: float = 0.0, logprobs: bool = True, slow_seconds: float = 2.0) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.plan = plan or ["ok"]
        self.delay, self.logprobs, self.slow_seconds = delay, logprobs, slow_seconds
        self.requests = 0
        self.served: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth: set[str] = set()
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()  # one model call at a time (torch on 2 cores)
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> FakeOpenAI:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "llama-small"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                action = server._next(self.headers.get("Authorization"), body)
                try:
                    if action == "500":
                        self._send(500, {"error": {"message": "scheduled failure"}})
                    elif action == "429":
                        self._send(429, {"error": {"message": "slow down"}})
                    elif action == "drop":
                        self.close_connection = True  # no answer at all
                    elif action == "slow":
                        time.sleep(server.slow_seconds)  # past the client's timeout
                        self._answer(body)
                    elif action == "400":
                        self._send(400, {"error": {"message": "bad request"}})
                    elif action == "context":  # vLLM's answer to an over-long request
                        self._send(400, {"object": "error", "type": "BadRequestError",
                                         "code": 400, "message": (
                                             "This model's maximum context length is 2048 "
                                             "tokens. However, you requested 2100 tokens (2052 "
                                             "in the messages, 48 in the completion).")})
                    else:
                        self._answer(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on this one (timeout) and retried
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, body: dict[str, Any]) -> None:
                if server.delay:
                    time.sleep(server.delay)  # lets concurrent requests overlap visibly
                path = self.path.rstrip("/")
                if path == "/v1/chat/completions":
                    self._send(200, server.chat(body))
                elif path == "/v1/completions":
                    self._send(200, server.completion(body))
                else:
                    self._send(404, {"error": {"message": f"no route {path}"}})

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def _next(self, auth: str | None, body: dict[str, Any]) -> str:
        with self._lock:
            action = self.plan[self.requests % len(self.plan)]
            self.requests += 1
            self.served[action] = self.served.get(action, 0) + 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if auth:
                self.auth.add(auth)
            self.bodies.append(body)
        return action

    # -- the model ------------------------------------------------------------------------------

    def _template(self, messages: list[dict[str, str]], cont: bool) -> str:
        if cont and messages and messages[-1]["role"] == "assistant":
            head = self.tokenizer.apply_chat_template(messages[:-1], tokenize=False,
                                                      add_generation_prompt=True)
            return head + messages[-1]["content"]
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)

    def _top(self, text: str, k: int) -> list[tuple[str, float]]:
        import torch

        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with self._model_lock, torch.no_grad():
            logits = self.model(**ids).logits[0, -1].float()
        logp = torch.log_softmax(logits, -1)
        values, idx = logp.topk(min(k, logp.numel()))
        return [(self.tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, idx,
                                                                             strict=True)]

    def _generate(self, text: str, body: dict[str, Any]) -> str:
        import torch

        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        temperature = float(body.get("temperature", 1.0))
        with self._model_lock, torch.no_grad():
            torch.manual_seed(int(body.get("seed") or 0))
            out = self.model.generate(
                **ids, max_new_tokens=int(body.get("max_tokens") or 16),
                do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                top_k=0, top_p=1.0, pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        text = self._template(body["messages"], bool(body.get("continue_final_message")))
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
        if body.get("logprobs") and self.logprobs:
            top = self._top(text, int(body.get("top_logprobs") or 1))
            choice["message"] = {"role": "assistant", "content": top[0][0]}
            choice["logprobs"] = {"content": [{
                "token": top[0][0], "logprob": top[0][1],
                "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}]}
        else:
            choice["message"] = {"role": "assistant", "content": self._generate(text, body)}
        return {"id": "chatcmpl-test", "object": "chat.completion", "model": body.get("model"),
                "choices": [choice]}

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        text = body["prompt"]
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
        if body.get("logprobs") and self.logprobs:
            top = self._top(text, int(body["logprobs"]))
            choice["text"] = top[0][0]
            choice["logprobs"] = {"tokens": [top[0][0]], "token_logprobs": [top[0][1]],
                                  "top_logprobs": [dict(top)]}
        else:
            choice["text"] = self._generate(text, body)
        return {"id": "cmpl-test", "object": "text_completion", "model": body.get("model"),
                "choices": [choice]}
