"""The serving service behind ``modelsmith serve`` and ``modelsmith mcp``.

A chat completion is answered by a specialist (``model`` names it, or ``auto`` lets the
router pick from the last user message). Which *version* answers comes from the event log
through the traffic split: production, or the canary for its share of request keys (the
request's ``user`` field, else a fresh id); a shadow version gets a mirrored copy on a
background thread and its answer is kept for comparison, never returned. Every
``window_s`` the live metrics become ``MetricsObserved`` events (:mod:`.metrics`) -- what
rollback and the stage gates read. Every answer is checked against the task's output
contract (``format_rate``); a request that carries a ``reference`` (the expected answer, as
a scenario's ``expected``) is also scored by the suite's rubric with the eval's own scorer
(``rubric_score``, ``pass_rate``) -- the live answer and the shadow's alike.

A specialist's first version has no production to mirror: while nothing holds production
or canary and its policy's ``bootstrap`` is ``replay``, a request that carries a
``reference`` is answered by the shadow (returned, ``stage: "shadow"``, ``bootstrap:
true``) and counted and scored as the shadow's observed traffic; any other request is a
503 that says why.

One model load per version, shared by all requests; concurrent requests to a version are
coalesced into batched backend calls (:mod:`.batching`). A LoRA version is no model of its
own: its base is loaded once and each version attached to it as an adapter, behind one
batcher shared by production, canary and shadow (:mod:`.adapters`); retiring a version
detaches its adapter. A bad request is a
:class:`ServeError` carrying the HTTP status and an OpenAI-style error body (:mod:`.http`
sends it).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from modelsmith.errors import InferenceError, ModelsmithError
from modelsmith.inference.base import GenerationRequest

from .adapters import AdapterView, SharedBases
from .batching import Batcher, BatcherClosed
from .live_scoring import LiveScorer
from .metrics import LiveMetrics
from .router import NoRoute, Request, Router
from .split import Assignment, NoVersion, TrafficSplit

if TYPE_CHECKING:
    from modelsmith.artifacts.registry import ModelRegistry
    from modelsmith.events.store import EventStore
    from modelsmith.inference.base import Backend, Generation
    from modelsmith.specs import Repository

#: Completion tokens when the request does not say, per output kind (as the eval uses).
DEFAULT_MAX_TOKENS = {"label": 4, "json": 256, "text": 128}
MAX_TOKENS = 1024

#: Loads a version: (specialist, version) -> its backend.
BackendFactory = Callable[[str, str], "Backend"]


class ServeError(ModelsmithError):
    """A request the service cannot answer: the HTTP status, an OpenAI-style error body,
    and any headers the answer needs (``Allow`` for a 405, ``Retry-After``)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "code": self.code}}


class Service:
    """Routing, the traffic split, the loaded versions and the live metrics: what the HTTP
    handler and the MCP tools call.

    ``repo`` is the loaded specs (specialists, routing, suites); ``store`` the event log the
    split follows and the metrics windows are recorded to; ``registry`` turns a version
    into weights (and builds a judge model for rubrics that have one). ``backend_factory``
    replaces loading a version through the registry (tests pass fakes).
    """

    def __init__(self, repo: Repository, store: EventStore, registry: ModelRegistry, *,
                 backend_factory: BackendFactory | None = None,
                 window_s: float | None = None, max_batch: int | None = None,
                 max_wait_ms: float = 0.0, backend: str | None = None,
                 device: str = "cpu", dtype: str = "float32",
                 request_timeout_s: float | None = 120.0) -> None:
        self.repo = repo
        self.store = store
        self.registry = registry
        self.metrics = LiveMetrics()
        self.router = Router.from_table(repo.routing)
        self.split = TrafficSplit(store)
        self._backends: dict[tuple[str, str], Batcher | AdapterView] = {}
        self._loading = threading.Lock()
        self._make = backend_factory or self._load_backend
        self._engine = {"backend": backend, "device": device, "dtype": dtype}
        self._batching = {"max_batch": max_batch, "max_wait_ms": max_wait_ms}
        self._bases = SharedBases(registry, self._engine, self._batching)  # LoRA versions
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
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if window_s:
            self._flusher = threading.Thread(target=self._flush_every, args=(window_s,),
                                             daemon=True, name="metrics-flush")
            self._flusher.start()

    def _load_backend(self, specialist: str, version: str) -> Backend:
        from modelsmith.inference import make_backend

        model = self.registry.candidate(specialist, version)
        return make_backend(str(model.path), self.registry.clusters,
                            repo_root=self.registry.root,
                            chat_template=model.base.chat_template,
                            batch_size=self._batching["max_batch"] or 16, **self._engine)

    def batcher(self, specialist: str, version: str) -> Batcher | AdapterView:
        """The loaded ``version``, loading it on first use: one load per version, whoever
        asks first; the versions already loaded go on answering meanwhile. A LoRA version
        (without a ``backend_factory``) is attached to its base's shared batcher."""
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
            try:
                made: Batcher | AdapterView | None = None
                if self._make == self._load_backend:
                    made = self._bases.open(specialist, version)
                if made is None:
                    made = Batcher(self._make(specialist, version),
                                   name=f"batch-{specialist}-{version}", **self._batching)
            except InferenceError as exc:
                raise ServeError(503, f"cannot load {specialist} {version}: {exc}",
                                 kind="server_error", code="model_unavailable") from None
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

    def backend(self, specialist: str, version: str) -> Backend:
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

        return BackendJudge(lambda ref: make_backend(ref, self.registry.clusters,
                                                     repo_root=self.registry.root))

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
        return self.metrics.flush(self.store)

    def feedback(self, body: dict[str, Any]) -> dict[str, Any]:
        """A feedback score for a response this server gave, counted once per response id:
        a 404 for an id it did not issue (or has forgotten), a 409 for one that already has
        feedback (the metrics do not change)."""
        response_id, score = body.get("id"), body.get("score")
        if not isinstance(response_id, str):
            raise ServeError(400, "'id' must be the id of an earlier response",
                             code="invalid_id")
        if isinstance(score, bool) or not isinstance(score, int | float) \
                or not 0.0 <= score <= 1.0:
            raise ServeError(400, "'score' must be a number from 0 to 1", code="invalid_score")
        found = self.metrics.feedback(response_id, float(score))
        if found is None:
            raise ServeError(404, f"no response {response_id[:80]} (or it is too old)",
                             code="unknown_response")
        key, counted = found
        if counted is not None:
            raise ServeError(409, f"the response {response_id} already has feedback (score "
                                  f"{counted:g}); feedback counts once per response",
                             code="feedback_already_counted")
        return {"ok": True, "specialist": key[0], "version": key[1], "stage": key[2]}

    def close(self, timeout: float | None = None) -> None:
        """Stop: the shadows and scores under way (they belong to the last window), the
        last window recorded, the versions unloaded. ``timeout``: seconds to wait for the
        work under way (shadows, batches), after which what is still running is left to
        the process's exit; ``None`` waits for all of it."""
        self._stop.set()
        if timeout is None:
            self._side.shutdown(wait=True)
        else:
            self.settle(timeout)
            self._side.shutdown(wait=False, cancel_futures=True)
        if self._flusher is not None:
            self._flusher.join(timeout=30 if timeout is None else max(timeout, 5.0))
            self.flush()
        for batcher in self._backends.values():
            batcher.close(timeout=timeout)
        for scorer in self._scorers.values():
            scorer.close()

    # -- endpoints ---------------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "modelsmith"}
            for name in sorted(self.repo.specialists)] + [
            {"id": "auto", "object": "model", "created": 0, "owned_by": "modelsmith"}]}

    def route(self, body: dict[str, Any]) -> dict[str, Any]:
        text, task = body.get("input"), body.get("task")
        if not isinstance(text, str):
            raise ServeError(400, "'input' must be a string", code="invalid_input")
        if task is not None and not isinstance(task, str):
            raise ServeError(400, "'task' must be a string (the caller's task label)",
                             code="invalid_task")
        decision = self._route(text, body.get("metadata"), task)
        return {"specialist": decision[0], "rule": decision[1]}

    def _route(self, text: str, meta: Any, task: Any) -> tuple[str, str | None]:
        if meta is not None and not (isinstance(meta, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
            raise ServeError(400, "'metadata' must map strings to strings",
                             code="invalid_metadata")
        try:
            decision = self.router.route(Request(text, meta or {}, task))
        except NoRoute as exc:
            raise ServeError(422, str(exc), code="no_route") from None
        return decision.specialist, decision.rule

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """Answer a chat completion ``body`` (OpenAI's request shape) with the specialist it
        names or the router picks, at the version the split gives its request key."""
        model, text = chat_input(body)
        specialist, rule = self._specialist(model, text, body.get("metadata"))
        task = self.repo.specialists[specialist].spec.task
        key = request_key(body)
        request = GenerationRequest(prompt=task.render(text), system=task.system_prompt,
                                    **sampling(body, task.output.kind))
        reference = body.get("reference")
        response_id = f"chatcmpl-{uuid.uuid4().hex}"
        started = time.perf_counter()
        assignment, batcher, generation = self._generate(specialist, key, request,
                                                         referenced=reference is not None)
        self._observe(response_id, assignment, generation,
                      (time.perf_counter() - started) * 1000)
        self._beside(assignment, batcher, request, generation.text, reference)
        return completion(response_id, assignment, rule, generation,
                          batcher.count_tokens(request.prompt))

    def _specialist(self, model: str, text: str, meta: Any) -> tuple[str, str | None]:
        """The specialist ``model`` names, or the router's pick for ``auto`` (and its
        rule)."""
        if model == "auto":
            return self._route(text, meta, None)
        if model in self.repo.specialists:
            return model, None
        raise ServeError(404, f"the model '{model}' does not exist (specialists: "
                         f"{', '.join(sorted(self.repo.specialists))}, or auto)",
                         code="model_not_found")

    def _observe(self, response_id: str, assignment: Assignment, generation: Generation,
                 latency_ms: float) -> None:
        """Count the answer in the live metrics (with its format check); a failed
        generation is then a 502."""
        specialist, version = assignment.specialist, assignment.version
        scorer = self.scorer(specialist)
        format_ok = None if generation.error else scorer.score(generation.text).format_ok
        self.metrics.request(response_id, specialist, version, assignment.stage,
                             latency_ms, bool(generation.error), format_ok=format_ok,
                             bootstrap=assignment.bootstrap)
        if generation.error:
            raise ServeError(502, f"{specialist} {version} failed: {generation.error}",
                             kind="server_error")

    def _beside(self, assignment: Assignment, batcher: Batcher, request: GenerationRequest,
                answered: str, reference: Any) -> None:
        """Start what is worked out beside the answer: its rubric score when the request
        carried a reference, the shadow's answer when there is a shadow."""
        specialist = assignment.specialist
        if reference is not None:
            self._aside(self._score, (specialist, assignment.version, assignment.stage),
                        batcher, answered, reference)
        if assignment.shadow:
            self._aside(self._shadow, specialist, assignment, request, answered, reference)

    def bootstrap_mode(self, specialist: str) -> str:
        """The specialist's policy's ``bootstrap`` (how its first version gets traffic)."""
        spec = self.repo.specialists[specialist]
        return self.repo.policy_for(spec).spec.bootstrap

    def _generate(self, specialist: str, key: str, request: GenerationRequest, *,
                  referenced: bool = False) -> tuple[Assignment, Batcher, Generation]:
        """The split's version for ``key`` answers ``request`` (``referenced``: it carries
        a reference, which a bootstrapping shadow answers). A version retired between the
        lookup and the call (the log moved) sends the request to the split again."""
        bootstrap = self.bootstrap_mode(specialist)
        for _ in range(3):
            try:
                assignment = self.split.assign(specialist, key, referenced=referenced,
                                               bootstrap=bootstrap)
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
                                     (self.request_timeout_s or 0) * 1000, error=True,
                                     bootstrap=assignment.bootstrap)
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

    def _shadow(self, specialist: str, assignment: Assignment, request: GenerationRequest,
                answered: str, reference: Any) -> None:
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


def chat_input(body: dict[str, Any]) -> tuple[str, str]:
    """The model a chat completion body names and its last user message, checked."""
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
    return model, users[-1]


def request_key(body: dict[str, Any]) -> str:
    """What the canary split hashes: the request's ``user``, else a fresh id."""
    user = body.get("user")
    return user if isinstance(user, str) and user else uuid.uuid4().hex


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
        if isinstance(seed, bool) or not isinstance(seed, int) \
                or not -(2 ** 63) <= seed < 2 ** 63:
            raise ServeError(400, "'seed' must be an integer from -2**63 to 2**63-1",
                             code="invalid_seed")
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


def completion(response_id: str, assignment: Assignment, rule: str | None,
               generation: Generation, prompt_tokens: int) -> dict[str, Any]:
    """The ``chat.completion`` body of an answer, with what served it (``modelsmith``)."""
    return {
        "id": response_id, "object": "chat.completion",
        "created": int(time.time()), "model": assignment.specialist,
        "choices": [{"index": 0, "finish_reason": generation.finish_reason,
                     "message": {"role": "assistant", "content": generation.text}}],
        "usage": {"prompt_tokens": prompt_tokens,
                  "completion_tokens": generation.completion_tokens,
                  "total_tokens": prompt_tokens + generation.completion_tokens},
        "modelsmith": {"version": assignment.version, "stage": assignment.stage,
                       "rule": rule, "shadow": assignment.shadow,
                       "bootstrap": assignment.bootstrap},
    }
