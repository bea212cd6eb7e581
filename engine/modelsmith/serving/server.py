"""``modelsmith serve``: an OpenAI-compatible endpoint in front of the fleet.

``POST /v1/chat/completions`` answers with a specialist (``model`` names it, or ``auto``
lets the router pick from the last user message). Which *version* answers comes from the
event log through the traffic split: production, or the canary for its share of request
keys (the request's ``user`` field, else a fresh id); a shadow version gets a mirrored
copy on a background thread and its answer is kept for comparison, never returned.
``GET /v1/models`` lists the specialists, ``POST /v1/route`` shows the routing decision,
``POST /v1/feedback`` scores an earlier response (``{"id", "score"}``), ``GET /metrics``
is Prometheus text, ``GET /healthz`` says it is up. Every ``window_s`` the live metrics
become ``MetricsObserved`` events (:mod:`.metrics`) -- what rollback and the stage gates
read. Every answer is checked against the task's output contract (``format_rate``); a
request that carries a ``reference`` (the expected answer, as a scenario's ``expected``) is
also scored by the suite's rubric with the eval's own scorer (``rubric_score``,
``pass_rate``) -- the live answer and the shadow's alike.

Loopback by default; with a token every request needs ``Authorization: Bearer <token>``.
Bodies over the size limit, malformed JSON, unknown models and bad fields get a 4xx with an
OpenAI-style JSON error, and the server keeps serving. One model load per version, shared
by all requests; concurrent requests to a version are coalesced into batched backend calls
(:mod:`.batching`).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from modelsmith.errors import ModelsmithError

from .batching import Batcher, BatcherClosed
from .live_scoring import LiveScorer
from .router import NoRoute, Request, Router
from .split import NoVersion, TrafficSplit

#: Bodies larger than this are refused (413).
MAX_BODY = 1 << 20
#: Completion tokens when the request does not say, per output kind (as the eval uses).
DEFAULT_MAX_TOKENS = {"label": 4, "json": 256, "text": 128}
MAX_TOKENS = 1024


class ServeError(ModelsmithError):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "code": self.code}}


class Service:
    """What the HTTP handler calls: routing, the split, the backends."""

    def __init__(self, ws: Any, *, backend_factory: Any = None,
                 window_s: float | None = None, max_batch: int | None = None,
                 max_wait_ms: float = 0.0, backend: str | None = None,
                 device: str = "cpu", dtype: str = "float32",
                 request_timeout_s: float | None = 120.0) -> None:
        from .metrics import LiveMetrics

        self.ws = ws
        self.metrics = LiveMetrics()
        self._stop = threading.Event()
        self._flusher = None
        if window_s:
            self._flusher = threading.Thread(target=self._flush_every, args=(window_s,),
                                             daemon=True, name="metrics-flush")
            self._flusher.start()
        self.repo = ws.specs()
        self.router = Router.from_table(self.repo.routing)
        self.split = TrafficSplit(ws.store)
        self._backends: dict[tuple[str, str], Batcher] = {}
        self._loading = threading.Lock()
        self._make = backend_factory or self._load_backend
        self._engine = {"backend": backend, "device": device, "dtype": dtype}
        self._batching = {"max_batch": max_batch, "max_wait_ms": max_wait_ms}
        self.request_timeout_s = request_timeout_s
        # Shadows and rubric scores are worked out beside the request, never in its way.
        self._side = ThreadPoolExecutor(max_workers=4, thread_name_prefix="shadow")
        self.shadow_log: deque[dict[str, Any]] = deque(maxlen=1000)
        self._scorers: dict[str, LiveScorer] = {}
        self._scoring = threading.Lock()
        self._aside_running: set[Future[Any]] = set()
        self._aside_lock = threading.Lock()
        self._slots: dict[tuple[str, str], threading.Lock] = {}
        self._seen_reloads = -1
        #: (specialist, version) unloaded because the split stopped needing them.
        self.retired: list[tuple[str, str]] = []

    def _load_backend(self, specialist: str, version: str) -> Any:
        from modelsmith.inference import make_backend

        model = self.ws.candidate(self.repo, specialist, version)
        return make_backend(str(model.path), self.repo.clusters, repo_root=self.ws.root,
                            chat_template=model.base.chat_template,
                            batch_size=self._batching["max_batch"] or 16, **self._engine)

    def batcher(self, specialist: str, version: str) -> Batcher:
        """The loaded ``version``, loading it on first use: one load per version, whoever
        asks first; the versions already loaded go on answering meanwhile."""
        key = (specialist, version)
        with self._loading:
            found = self._backends.get(key)
            if found is not None:
                return found
            slot = self._slots.setdefault(key, threading.Lock())
        with slot:
            with self._loading:
                found = self._backends.get(key)
                if found is not None:
                    return found
            from modelsmith.inference.base import InferenceError

            try:
                loaded = self._make(specialist, version)
            except InferenceError as exc:
                raise ServeError(503, f"cannot load {specialist} {version}: {exc}",
                                 kind="server_error", code="model_unavailable") from None
            made = Batcher(loaded, name=f"batch-{specialist}-{version}", **self._batching)
            with self._loading:
                self._backends[key] = made
            return made

    def _retire(self) -> None:
        """After the log moved (a promotion, a rollback): unload the versions the split no
        longer needs. Production's fallback stays loaded. A retired version answers what
        it was already asked, then closes."""
        with self._loading:
            if self.split.reloads == self._seen_reloads:
                return
            self._seen_reloads = self.split.reloads
            stale = [k for k in self._backends
                     if k[1] not in self.split.stages(k[0]).versions]
            retired = [self._backends.pop(k) for k in stale]
            self.retired += stale
        for batcher in retired:
            threading.Thread(target=batcher.close, daemon=True, name="retire").start()

    def backend(self, specialist: str, version: str) -> Any:
        """The loaded model behind ``version`` (unbatched: for comparisons)."""
        return self.batcher(specialist, version).backend

    def scorer(self, specialist: str) -> LiveScorer:
        with self._scoring:
            if specialist not in self._scorers:
                self._scorers[specialist] = LiveScorer(self.repo, specialist, self._judge)
            return self._scorers[specialist]

    def _judge(self) -> Any:
        from modelsmith.evaluation.judge import BackendJudge
        from modelsmith.inference import make_backend

        return BackendJudge(lambda ref: make_backend(ref, self.repo.clusters,
                                                     repo_root=self.ws.root))

    def settle(self, timeout: float = 60.0) -> None:
        """Wait for the shadows and scores of the requests answered so far."""
        with self._aside_lock:
            running = list(self._aside_running)
        wait(running, timeout=timeout)

    def _flush_every(self, window_s: float) -> None:
        while not self._stop.wait(window_s):
            self.flush()

    def flush(self) -> list[Any]:
        """Record the current window as ``MetricsObserved`` events."""
        return self.metrics.flush(self.ws.store)

    def feedback(self, body: dict[str, Any]) -> dict[str, Any]:
        response_id, score = body.get("id"), body.get("score")
        if not isinstance(response_id, str):
            raise ServeError(400, "'id' must be the id of an earlier response")
        if isinstance(score, bool) or not isinstance(score, int | float) \
                or not 0.0 <= score <= 1.0:
            raise ServeError(400, "'score' must be a number from 0 to 1")
        key = self.metrics.feedback(response_id, float(score))
        if key is None:
            raise ServeError(404, f"no response {response_id} (or it is too old)",
                             code="unknown_response")
        return {"ok": True, "specialist": key[0], "version": key[1], "stage": key[2]}

    def close(self) -> None:
        self._stop.set()
        self._side.shutdown(wait=True)  # the shadows and scores belong to the last window
        if self._flusher is not None:
            self._flusher.join(timeout=30)
            self.flush()
        for batcher in self._backends.values():
            batcher.close()
        for scorer in self._scorers.values():
            scorer.close()

    # -- endpoints ---------------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "modelsmith"}
            for name in sorted(self.repo.specialists)] + [
            {"id": "auto", "object": "model", "created": 0, "owned_by": "modelsmith"}]}

    def route(self, body: dict[str, Any]) -> dict[str, Any]:
        text = body.get("input")
        if not isinstance(text, str):
            raise ServeError(400, "'input' must be a string", code="invalid_input")
        decision = self._route(text, body.get("metadata"), body.get("task"))
        return {"specialist": decision[0], "rule": decision[1]}

    def _route(self, text: str, meta: Any, task: Any) -> tuple[str, str | None]:
        if meta is not None and not (isinstance(meta, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
            raise ServeError(400, "'metadata' must map strings to strings")
        try:
            decision = self.router.route(Request(text, meta or {}, task))
        except NoRoute as exc:
            raise ServeError(422, str(exc), code="no_route") from None
        return decision.specialist, decision.rule

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            raise ServeError(400, "'model' must be a specialist name or 'auto'",
                             code="invalid_model")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            raise ServeError(400, "'messages' must be a non-empty list of {role, content}",
                             code="invalid_messages")
        users = [m["content"] for m in messages if m.get("role") == "user"]
        if not users:
            raise ServeError(400, "'messages' has no user message", code="invalid_messages")
        text = users[-1]
        rule = None
        if model == "auto":
            specialist, rule = self._route(text, body.get("metadata"), None)
        elif model in self.repo.specialists:
            specialist = model
        else:
            raise ServeError(404, f"the model '{model}' does not exist (specialists: "
                             f"{', '.join(sorted(self.repo.specialists))}, or auto)",
                             code="model_not_found")
        user = body.get("user")
        key = user if isinstance(user, str) and user else uuid.uuid4().hex
        task = self.repo.specialists[specialist].spec.task
        from modelsmith.inference.base import GenerationRequest

        request = GenerationRequest(prompt=task.render(text), system=task.system_prompt,
                                    **sampling(body, task.output.kind))
        reference = body.get("reference")
        response_id = f"chatcmpl-{uuid.uuid4().hex}"
        started = time.perf_counter()
        assignment, batcher, generation = self._generate(specialist, key, request)
        latency_ms = (time.perf_counter() - started) * 1000
        scorer = self.scorer(specialist)
        self.metrics.request(response_id, specialist, assignment.version, assignment.stage,
                             latency_ms, bool(generation.error),
                             format_ok=None if generation.error
                             else scorer.score(generation.text).format_ok)
        if generation.error:
            raise ServeError(502, f"{specialist} {assignment.version} failed: "
                             f"{generation.error}", kind="server_error")
        if reference is not None:
            self._aside(self._score, (specialist, assignment.version, assignment.stage),
                        batcher, generation.text, reference)
        if assignment.shadow:
            self._aside(self._shadow, specialist, assignment, request, generation.text,
                        reference)
        prompt_tokens = batcher.count_tokens(request.prompt)
        return {
            "id": response_id, "object": "chat.completion",
            "created": int(time.time()), "model": specialist,
            "choices": [{"index": 0, "finish_reason": generation.finish_reason,
                         "message": {"role": "assistant", "content": generation.text}}],
            "usage": {"prompt_tokens": prompt_tokens,
                      "completion_tokens": generation.completion_tokens,
                      "total_tokens": prompt_tokens + generation.completion_tokens},
            "modelsmith": {"version": assignment.version, "stage": assignment.stage,
                           "rule": rule, "shadow": assignment.shadow},
        }

    def _generate(self, specialist: str, key: str, request: Any) -> tuple[Any, Batcher, Any]:
        """The split's version for ``key`` answers ``request``. A version retired between
        the lookup and the call (the log moved) sends the request to the split again."""
        for _ in range(3):
            try:
                assignment = self.split.assign(specialist, key)
            except NoVersion as exc:
                raise ServeError(503, str(exc), kind="server_error",
                                 code="no_version") from None
            self._retire()
            batcher = self.batcher(specialist, assignment.version)
            try:
                return assignment, batcher, batcher.generate(request, self.request_timeout_s)
            except BatcherClosed:
                continue
            except TimeoutError as exc:
                self.metrics.request(f"timeout-{uuid.uuid4().hex}", specialist,
                                     assignment.version, assignment.stage,
                                     (self.request_timeout_s or 0) * 1000, error=True)
                raise ServeError(504, f"{specialist} {assignment.version}: {exc}",
                                 kind="server_error", code="timeout") from None
        raise ServeError(503, f"{specialist}: the versions kept changing while this request "
                              "waited; try again", kind="server_error", code="no_version")

    # -- work beside the request: rubric scores and shadows -----------------------------------

    def _aside(self, fn: Any, *args: Any) -> None:
        future = self._side.submit(fn, *args)
        with self._aside_lock:
            self._aside_running.add(future)
        future.add_done_callback(self._aside_done)

    def _aside_done(self, future: Future[Any]) -> None:
        with self._aside_lock:
            self._aside_running.discard(future)

    def _score(self, key: tuple[str, str, str], batcher: Batcher, text: str,
               reference: Any) -> None:
        """The rubric score of a live answer against the request's reference."""
        try:
            scored = self.scorer(key[0]).score(text, reference,
                                               count_tokens=batcher.count_tokens)
        except Exception:  # scoring never hurts serving; a failed score is not a score
            return
        self.metrics.rubric(key, scored.score, scored.passed)

    def _shadow(self, specialist: str, assignment: Any, request: Any, answered: str,
                reference: Any) -> None:
        """The shadow's answer to the same request, kept beside the one returned and
        scored as the live one is (format, and the rubric when there is a reference)."""
        started = time.perf_counter()
        scored = None
        scorer = self.scorer(specialist)
        try:
            batcher = self.batcher(specialist, assignment.shadow)
            shadow = batcher.generate(request, self.request_timeout_s)
            text, error = shadow.text, shadow.error
            if error is None:
                scored = scorer.score(text, reference, count_tokens=batcher.count_tokens)
        except BatcherClosed:  # no longer the shadow: nothing to compare
            return
        except Exception as exc:  # a shadow must never hurt the request it mirrors
            text, error = None, str(exc)
        agree = error is None and scorer.same(text, answered)
        self.metrics.shadow(specialist, assignment.shadow,
                            (time.perf_counter() - started) * 1000, agree,
                            error is not None, scored)
        self.shadow_log.append({"specialist": specialist, "version": assignment.version,
                                "shadow": assignment.shadow, "answered": answered,
                                "shadow_answer": text, "agree": agree,
                                "error": error,
                                "rubric_score": scored.score if scored else None})


def sampling(body: dict[str, Any], output_kind: str) -> dict[str, Any]:
    """The generation settings a chat completion body asks for, checked. Greedy unless
    ``temperature`` says otherwise (a specialist answers as it was evaluated)."""
    if body.get("n", 1) != 1:
        raise ServeError(400, "'n' must be 1: a specialist gives one answer per request",
                         code="invalid_n")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is None:
        limit = DEFAULT_MAX_TOKENS.get(output_kind, 64)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_TOKENS:
        raise ServeError(400, f"'max_tokens' must be an integer from 1 to {MAX_TOKENS}")
    settings: dict[str, Any] = {"max_new_tokens": limit}
    for name, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not low <= value <= high or (name == "top_p" and value == 0):
            raise ServeError(400, f"'{name}' must be a number in {'(' if name == 'top_p' else '['}"
                                  f"{low:g}, {high:g}]", code=f"invalid_{name}")
        settings[name] = float(value)
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ServeError(400, "'seed' must be an integer", code="invalid_seed")
        settings["seed"] = seed
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not 1 <= len(stops) <= 4 or not all(
                isinstance(x, str) and x for x in stops):
            raise ServeError(400, "'stop' must be a string or a list of 1 to 4 strings",
                             code="invalid_stop")
        settings["stop"] = tuple(stops)
    return settings


def chunks(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A finished completion as the ``chat.completion.chunk`` events of a stream: the
    role, the content, then the finish reason (and usage, as OpenAI sends it last)."""
    choice = response["choices"][0]
    head = {"id": response["id"], "object": "chat.completion.chunk",
            "created": response["created"], "model": response["model"]}
    return [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                              "finish_reason": None}],
         "modelsmith": response["modelsmith"]},
        {**head, "choices": [{"index": 0, "delta": {"content": choice["message"]["content"]},
                              "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {},
                              "finish_reason": choice["finish_reason"]}],
         "usage": response["usage"]},
    ]


def make_server(service: Service, host: str = "127.0.0.1", port: int = 8000, *,
                token: str | None = None, max_body: int = MAX_BODY) -> ThreadingHTTPServer:
    """A threading HTTP server for ``service`` (``serve_forever`` runs it)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "modelsmith"

        def log_message(self, *args: Any) -> None:  # quiet; metrics say what happened
            pass

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, events: list[dict[str, Any]]) -> None:
            """Server-sent events, as OpenAI streams; the answer is whole before the first
            event (a specialist's answers are a few tokens), then the connection closes."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            for event in events:
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.close_connection = True

        def _authorised(self) -> bool:
            return token is None or self.headers.get("Authorization") == f"Bearer {token}"

        def _body(self) -> dict[str, Any]:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise ServeError(400, "bad Content-Length") from None
            if length > max_body:
                self.close_connection = True
                raise ServeError(413, f"the body has {length} bytes; the limit is {max_body}",
                                 code="body_too_large")
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise ServeError(400, f"the body is not JSON: {exc}", code="invalid_json") \
                    from None
            if not isinstance(body, dict):
                raise ServeError(400, "the body must be a JSON object", code="invalid_json")
            return body

        def _handle(self, method: str) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            try:
                if path == "/healthz" and method == "GET":
                    self._send(200, {"ok": True})
                    return
                if not self._authorised():
                    raise ServeError(401, "missing or wrong bearer token",
                                     kind="authentication_error", code="invalid_api_key")
                if path == "/metrics" and method == "GET":
                    data = service.metrics.prometheus().encode("utf-8")
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif path == "/v1/models" and method == "GET":
                    self._send(200, service.models())
                elif path == "/v1/feedback" and method == "POST":
                    self._send(200, service.feedback(self._body()))
                elif path == "/v1/chat/completions" and method == "POST":
                    body = self._body()
                    stream = body.get("stream", False)
                    if not isinstance(stream, bool):
                        raise ServeError(400, "'stream' must be true or false",
                                         code="invalid_stream")
                    answer = service.complete(body)
                    if stream:
                        self._stream(chunks(answer))
                    else:
                        self._send(200, answer)
                elif path == "/v1/route" and method == "POST":
                    self._send(200, service.route(self._body()))
                else:
                    raise ServeError(404, f"no endpoint {method} {path}", code="not_found")
            except ServeError as exc:
                self._send(exc.status, exc.body())
            except Exception as exc:  # the server keeps serving
                self._send(500, ServeError(500, f"{type(exc).__name__}: {exc}",
                                           kind="server_error").body())

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

    return ThreadingHTTPServer((host, port), Handler)
