"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM's server, llama.cpp, Ollama, ...).

Standard library only: one POST to ``{base_url}/chat/completions`` per request, several in
parallel. Rate limits (429), server errors (5xx) and connection failures are retried with
exponential backoff (``Retry-After`` honoured, capped). A request the endpoint rejects
(another 4xx) or answers with something that is not a chat completion becomes a Generation
with ``finish_reason="error"``; the batch goes on. But a wrong key, model or endpoint (401,
403, 404, or no connection) on the first call raises :class:`InferenceError`, since every
other request would fail the same way. The API key is sent only as a bearer header and never
appears in a message. A request with a listener is sent with ``stream: true``: the
server-sent chunks are passed on as they arrive (through a
:class:`~.streaming.TextStream`, which holds back what could still become a stop string)
and put back together into the one chat completion the rest of the backend reads; a
server that answers such a request whole gets its answer passed on whole. A stream that
breaks after part of it was passed on is not retried (the request is an error).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .base import Generation, GenerationRequest, InferenceError, Listeners, ProgressFn
from .streaming import TextStream

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
FATAL_STATUSES = {
    401: "the API key was refused (401 Unauthorized): check ${env}",
    403: "access denied (403 Forbidden): the key in ${env} may lack access to model '{model}'",
    404: "not found (404): check the model name '{model}' and the base URL",
}
MAX_BACKOFF_S = 30.0
USER_AGENT = "modelsmith/0.1"


def estimate_tokens(text: str) -> int:
    """A rough token count: a quarter of the characters, at least the word count."""
    return max(math.ceil(len(text) / 4), len(text.split()))


@dataclass
class _Outcome:
    generation: Generation | None = None
    fatal: str | None = None  # a configuration error: raise on the first call


class OpenAIBackend:
    """Generations from a model behind an OpenAI-compatible ``/chat/completions`` API."""

    name = "openai"

    def __init__(
        self,
        model_name: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 4,
        timeout_s: float = 60,
        max_retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        if not model_name.strip():
            raise InferenceError("an OpenAI-compatible backend needs a model name")
        if concurrency < 1:
            raise InferenceError(f"concurrency must be at least 1 (got {concurrency})")
        if max_retries < 0:
            raise InferenceError(f"max_retries must be 0 or more (got {max_retries})")
        base = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).strip()
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InferenceError(
                f"base URL '{base}' is not an http(s) URL (set OPENAI_BASE_URL, e.g. "
                "http://127.0.0.1:8000/v1)"
            )
        self.model_ref = model_name
        self.base_url = base.rstrip("/")
        self.endpoint = f"{self.base_url}/chat/completions"
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) or None
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._verified = False
        host = (parts.hostname or "").lower()
        handlers: list[Any] = []
        if host in ("127.0.0.1", "localhost", "::1"):
            handlers.append(urllib.request.ProxyHandler({}))  # loopback never goes via a proxy
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model_ref!r}, base_url={self.base_url!r})"

    # ------------------------------------------------------------------ helpers

    def _redact(self, text: str) -> str:
        if self._api_key and self._api_key in text:
            text = text.replace(self._api_key, "***")
        return text

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        messages = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": request.prompt})
        body: dict[str, Any] = {
            "model": self.model_ref,
            "messages": messages,
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    def _post(self, payload: bytes, stream: TextStream | None = None
              ) -> tuple[int, dict[str, str], bytes]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json" if stream is None else "text/event-stream",
            "User-Agent": USER_AGENT,
        }
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        http_request = urllib.request.Request(
            self.endpoint, data=payload, headers=headers, method="POST"
        )
        try:
            with self._opener.open(http_request, timeout=self.timeout_s) as response:
                kind = response.headers.get("Content-Type", "")
                if stream is not None and kind.startswith("text/event-stream"):
                    return response.status, dict(response.headers), _gather(response, stream)
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read()
            except OSError:
                body = b""
            return exc.code, dict(exc.headers or {}), body

    def _wait(self, attempt: int, headers: dict[str, str] | None) -> None:
        delay = self.backoff_s * (2**attempt)
        retry_after = next(
            (v for k, v in (headers or {}).items() if k.lower() == "retry-after"), None
        )
        if retry_after is not None:
            with contextlib.suppress(ValueError):
                delay = max(0.0, float(retry_after))
        time.sleep(min(delay, MAX_BACKOFF_S))

    def _error(self, message: str, started: float, attempts: int) -> _Outcome:
        return _Outcome(
            Generation(
                text="",
                completion_tokens=0,
                latency_ms=(time.perf_counter() - started) * 1000.0,
                finish_reason="error",
                error=self._redact(message),
                meta={"attempts": attempts},
            )
        )

    def _one(self, request: GenerationRequest, listener: Any = None) -> _Outcome:
        """One request, retried as the module says; with a ``listener``, streamed to it."""
        body = self._body(request)
        stream = None
        if listener is not None:
            body.update(stream=True, stream_options={"include_usage": True})
            stream = TextStream(listener, request.stop)
        outcome = self._send(json.dumps(body).encode(), request, stream)
        if stream is not None and outcome.generation is not None \
                and outcome.generation.error is None:
            outcome.generation = dataclasses.replace(
                outcome.generation, text=stream.close(outcome.generation.text))
        return outcome

    def _send(self, payload: bytes, request: GenerationRequest,
              stream: TextStream | None) -> _Outcome:
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            try:
                status, headers, raw = self._post(payload, stream)
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                if stream is not None and stream.sent:
                    return self._error(f"the stream from {self.endpoint} broke after "
                                       f"{len(stream.sent)} characters: {reason}",
                                       started, attempt)
                if attempt <= self.max_retries:
                    self._wait(attempt - 1, None)
                    continue
                message = (
                    f"cannot reach {self.endpoint} after {attempt} attempts: {reason} "
                    "(no network? check OPENAI_BASE_URL)"
                )
                outcome = self._error(message, started, attempt)
                outcome.fatal = self._redact(message)
                return outcome
            if status in RETRY_STATUSES and attempt <= self.max_retries:
                self._wait(attempt - 1, headers)
                continue
            if status >= 400:
                detail = _error_detail(raw)
                message = f"HTTP {status} from {self.endpoint} after {attempt} attempt(s)"
                if detail:
                    message += f": {detail}"
                outcome = self._error(message, started, attempt)
                if status in FATAL_STATUSES:
                    hint = FATAL_STATUSES[status].format(env=self.api_key_env,
                                                         model=self.model_ref)
                    outcome.fatal = self._redact(f"{self.endpoint}: {hint}" +
                                                 (f" (server said: {detail})" if detail else ""))
                return outcome
            return self._parse(raw, started, attempt, request.stop)

    def _parse(
        self, raw: bytes, started: float, attempts: int, stop: Sequence[str] = ()
    ) -> _Outcome:
        latency_ms = (time.perf_counter() - started) * 1000.0
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            content = choice["message"].get("content") or ""
            if not isinstance(content, str):
                raise TypeError("message.content is not a string")
            reason = choice.get("finish_reason") or "stop"
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            snippet = raw[:200].decode("utf-8", "replace")
            return self._error(
                f"malformed chat completion from {self.endpoint} ({type(exc).__name__}: {exc}); "
                f"response began: {snippet!r}",
                started,
                attempts,
            )
        cuts = [i for i in (content.find(s) for s in stop if s) if i >= 0]
        if cuts:  # servers honour "stop"; trim anyway for those that ignore it
            content, reason = content[:min(cuts)], "stop"
        usage = data.get("usage") if isinstance(data, dict) else None
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if not isinstance(tokens, int):
            tokens = estimate_tokens(content)
        return _Outcome(
            Generation(
                text=content,
                completion_tokens=tokens,
                latency_ms=latency_ms,
                finish_reason="length" if reason == "length" else "stop",
                meta={
                    "attempts": attempts,
                    "id": data.get("id"),
                    "model": data.get("model"),
                    "finish_reason": reason,
                },
            )
        )

    # ------------------------------------------------------------------ Backend API

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def generate(
        self, requests: Sequence[GenerationRequest], progress: ProgressFn | None = None,
        listeners: Listeners | None = None,
    ) -> list[Generation]:
        total = len(requests)
        listening = list(listeners or [])
        listening += [None] * (total - len(listening))
        results: list[Generation | None] = [None] * total
        done = 0
        pending = list(range(total))
        if not self._verified and pending:
            # The first call alone: a wrong key, model or endpoint fails here, once, loudly.
            first = self._one(requests[0], listening[0])
            if first.fatal is not None:
                raise InferenceError(first.fatal)
            self._verified = True
            results[0] = first.generation
            pending = pending[1:]
            done = 1
            if progress is not None:
                progress(done, total)
        if pending:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(pending))) as pool:
                futures = {pool.submit(self._one, requests[i], listening[i]): i
                           for i in pending}
                for future in as_completed(futures):
                    results[futures[future]] = future.result().generation
                    done += 1
                    if progress is not None:
                        progress(done, total)
        return [r for r in results if r is not None]

    def close(self) -> None:
        """Nothing is held between calls (a connection per request)."""


def _gather(response: Any, stream: TextStream) -> bytes:
    """Read a streamed chat completion (server-sent ``chat.completion.chunk`` events),
    passing its content on as it arrives; the chat completion it adds up to, as JSON
    bytes (an ``{"error": ...}`` event, or a stream without ``[DONE]``, ends it as what
    it is, for the caller to judge)."""
    content, finish, usage, head = "", None, None, {}
    for raw_line in response:
        line = raw_line.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):  # the caller reports it as a malformed answer
            return f"a stream event that is not a JSON object: {data[:160]}".encode()
        if "error" in chunk:
            return json.dumps({"error": chunk["error"]}).encode()
        head = head or {k: chunk.get(k) for k in ("id", "model")}
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if isinstance(piece, str) and piece:
                content += piece
                stream.update(content)
            finish = choice.get("finish_reason") or finish
    return json.dumps({**head, "object": "chat.completion", "usage": usage, "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content},
         "finish_reason": finish}]}).encode()


def _error_detail(raw: bytes) -> str:
    """The server's error message (OpenAI's ``{"error": {"message": ...}}``), else a snippet."""
    try:
        data = json.loads(raw)
    except ValueError:
        return raw[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:300]
        if isinstance(error, str):
            return error[:300]
    return json.dumps(data)[:200]
