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

The request is OpenAI's (:mod:`.openai_api` checks it: content-part arrays, the fields a
specialist refuses, the request key from ``safety_identifier``, ``prompt_cache_key`` or
``user``). :meth:`Service.complete` answers it whole; :meth:`Service.stream` answers it as
``chat.completion.chunk`` dicts while it is generated: the role (with what served it,
``modelsmith``), the content as it comes, the finish reason, and with
``stream_options.include_usage`` a last chunk with ``"choices": []`` and the usage (the
other chunks then carry ``"usage": null``). Both go one way: the metrics, feedback ids,
shadow, rubric score, bootstrap and timeout are the same; the stream also records the time
to its first token.

A specialist's first version has no production to mirror: while nothing holds production
or canary and its policy's ``bootstrap`` is ``replay``, a request that carries a
``reference`` is answered by the shadow (returned, ``stage: "shadow"``, ``bootstrap:
true``) and counted and scored as the shadow's observed traffic; any other request is a
503 that says why.

One model load per version, shared by all requests; concurrent requests to a version are
coalesced into batched backend calls (:mod:`.batching`). A LoRA version is no model of its
own: its base is loaded once and each version attached to it as an adapter, behind one
batcher shared by production, canary and shadow (:mod:`.adapters`); retiring a version
detaches its adapter. A label task's request carries its labels: the transformers backend
answers a greedy one by label scoring (one prompt pass, always a label;
``inference.labels``). A bad request is a
:class:`ServeError` carrying the HTTP status and an OpenAI-style error body (:mod:`.http`
sends it).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelsmith.errors import InferenceError
from modelsmith.inference.base import GenerationRequest

from .adapters import AdapterView, SharedBases
from .batching import Batcher, BatcherClosed
from .live_scoring import LiveScorer
from .metrics import LiveMetrics
from .openai_api import DEFAULT_MAX_TOKENS, MAX_TOKENS, ChatRequest, ServeError, parse_chat
from .router import NoRoute, Request, Router
from .split import Assignment, NoVersion, TrafficSplit

if TYPE_CHECKING:
    from modelsmith.artifacts.registry import ModelRegistry
    from modelsmith.events.store import EventStore
    from modelsmith.inference.base import Backend, Generation
    from modelsmith.specs import Repository

__all__ = ["DEFAULT_MAX_TOKENS", "MAX_TOKENS", "ServeError", "Service", "chat_input",
           "completion", "request_key", "sampling"]

#: Loads a version: (specialist, version) -> its backend.
BackendFactory = Callable[[str, str], "Backend"]


_DONE = object()


@dataclass
class _Call:
    """A chat completion under way: what answers it and how far it got."""

    chat: ChatRequest
    rule: str | None
    assignment: Assignment
    batcher: Batcher
    request: GenerationRequest
    future: Future[Generation]
    started: float
    response_id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    pieces: queue.SimpleQueue[Any] | None = None
    #: the answer was counted (or its error said): nothing is left to do when it is dropped
    settled: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.assignment.specialist, self.assignment.version, self.assignment.stage)


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

    def _load_backend(self, specialist: str, version: str) -> Backend | AdapterView:
        """Load ``version``: a LoRA version is attached to its base, loaded once and shared
        (an :class:`AdapterView`, batched with the base's other versions); full weights are
        a model of their own."""
        from modelsmith.inference import make_backend

        model = self.registry.candidate(specialist, version)
        view = self._bases.open(specialist, version, model)
        if view is not None:
            return view
        return make_backend(str(model.path), self.registry.clusters,
                            repo_root=self.registry.root,
                            chat_template=model.base.chat_template,
                            batch_size=self._batching["max_batch"] or 16, **self._engine)

    def batcher(self, specialist: str, version: str) -> Batcher | AdapterView:
        """The loaded ``version``, loading it on first use: one load per version, whoever
        asks first; the versions already loaded go on answering meanwhile. A LoRA version
        is attached to its base's shared batcher (:meth:`_load_backend`)."""
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
                loaded = self._make(specialist, version)
                made = loaded if isinstance(loaded, AdapterView) else Batcher(
                    loaded, name=f"batch-{specialist}-{version}", **self._batching)
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
        call = self._begin(body)
        return self._conclude(call, self._wait(call))

    def stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Answer ``body`` as ``chat.completion.chunk`` dicts while it is generated. The
        request is checked and its generation started before this returns (a bad request
        raises :class:`ServeError` here); an error after that is the last item, an
        ``{"error": ...}`` body. The iterator blocks (run it on a thread of its own); one
        dropped before its end still has its answer counted when it is ready."""
        pieces: queue.SimpleQueue[Any] = queue.SimpleQueue()
        call = self._begin(body, pieces.put)
        call.pieces = pieces
        call.future.add_done_callback(lambda _f: pieces.put(_DONE))
        chunks = self._chunks(call)
        weakref.finalize(chunks, self._abandoned, call)  # dropped before it was started
        return chunks

    def _begin(self, body: dict[str, Any],
               listener: Callable[[str], None] | None = None) -> _Call:
        """Check ``body``, pick the specialist and its version, and queue the request."""
        chat = parse_chat(body)
        text = chat.user_text()
        specialist, rule = self._specialist(chat.model, text, chat.metadata)
        task = self.repo.specialists[specialist].spec.task
        chat.check_output(task.output.kind)
        request = GenerationRequest(prompt=task.render(text), system=task.system_prompt,
                                    labels=tuple(getattr(task.output, "labels", ())),
                                    **chat.sampling(task.output.kind))
        started = time.perf_counter()
        assignment, batcher, future = self._submit(
            specialist, chat.key(), request, referenced=chat.reference is not None,
            listener=listener)
        return _Call(chat, rule, assignment, batcher, request, future, started)

    def _wait(self, call: _Call, timeout: float | None = None) -> Generation:
        """The call's generation, within the request timeout (else a 504, counted)."""
        try:
            return call.future.result(timeout=self.request_timeout_s
                                      if timeout is None else timeout)
        except FutureTimeout:
            self._timed_out(call)
            raise  # not reached: _timed_out raises

    def _timed_out(self, call: _Call) -> None:
        call.future.cancel()
        assignment = call.assignment
        self.metrics.request(f"timeout-{uuid.uuid4().hex}", assignment.specialist,
                             assignment.version, assignment.stage,
                             (self.request_timeout_s or 0) * 1000, error=True,
                             bootstrap=assignment.bootstrap)
        raise ServeError(504, f"{assignment.specialist} {assignment.version}: no answer "
                              f"within {self.request_timeout_s:g} s", kind="server_error",
                         code="timeout")

    def _conclude(self, call: _Call, generation: Generation) -> dict[str, Any]:
        """Count the answer, start the work beside it, and build its completion body."""
        self._observe(call.response_id, call.assignment, generation,
                      (time.perf_counter() - call.started) * 1000)
        self._beside(call.assignment, call.batcher, call.request, generation.text,
                     call.chat.reference)
        answer = completion(call.response_id, call.assignment, call.rule, generation,
                            call.batcher.count_tokens(call.request.prompt))
        answer["created"] = call.created
        return answer

    def _chunks(self, call: _Call) -> Iterator[dict[str, Any]]:
        head = {"id": call.response_id, "object": "chat.completion.chunk",
                "created": call.created, "model": call.assignment.specialist}
        usage = {"usage": None} if call.chat.include_usage else {}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish}], **usage}

        assert call.pieces is not None
        deadline = None if self.request_timeout_s is None \
            else time.monotonic() + self.request_timeout_s
        sent = ""
        try:
            yield {**chunk({"role": "assistant", "content": ""}),
                   "modelsmith": _served(call.assignment, call.rule)}
            while True:
                try:
                    piece = call.pieces.get(timeout=None if deadline is None
                                            else max(deadline - time.monotonic(), 0.0))
                except queue.Empty:
                    call.settled = True
                    self._timed_out(call)
                if piece is _DONE:
                    break
                if not sent:
                    self.metrics.first_token(call.key, time.perf_counter() - call.started)
                sent += piece
                yield chunk({"content": piece})
            call.settled = True
            generation = call.future.result()
            answer = self._conclude(call, generation)
            if generation.text.startswith(sent) and generation.text != sent:
                yield chunk({"content": generation.text[len(sent):]})
            yield chunk({}, generation.finish_reason)
            if usage:
                yield {**head, "choices": [], "usage": answer["usage"]}
        except ServeError as exc:
            yield exc.body()
        except Exception as exc:  # the backend failed: said in the stream, as a 500 would
            call.settled = True
            yield ServeError(500, f"{type(exc).__name__}: {exc}", kind="server_error").body()
        finally:
            self._abandoned(call)

    def _abandoned(self, call: _Call) -> None:
        """A stream whose caller went away before its end: its answer still counts when
        it is ready."""
        if call.settled:
            return
        call.settled = True
        with contextlib.suppress(RuntimeError):  # the service is closing: nothing counts
            self._aside(self._conclude_quietly, call)

    def _conclude_quietly(self, call: _Call) -> None:
        try:
            self._conclude(call, self._wait(call))
        except Exception:  # nobody is listening: an error is in the metrics, or nowhere
            return

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
        # A label the model would not have written (label scoring forced it) does not
        # honour the contract: the format rate stays what generation would have shown.
        format_ok = None if generation.error else (
            scorer.score(generation.text).format_ok and not generation.meta.get("forced"))
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

    def _submit(self, specialist: str, key: str, request: GenerationRequest, *,
                referenced: bool = False, listener: Callable[[str], None] | None = None
                ) -> tuple[Assignment, Batcher, Future[Generation]]:
        """Queue ``request`` for the split's version for ``key`` (``referenced``: it
        carries a reference, which a bootstrapping shadow answers; ``listener`` gets the
        text as it is generated). A version retired between the lookup and the call (the
        log moved) sends the request to the split again."""
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
                return assignment, batcher, batcher.submit(request, listener)
            except BatcherClosed:
                continue
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
    chat = parse_chat(body)
    return chat.model, chat.user_text()


def request_key(body: dict[str, Any]) -> str:
    """What the canary split hashes (:meth:`.openai_api.ChatRequest.key`)."""
    return parse_chat(body).key()


def sampling(body: dict[str, Any], output_kind: str) -> dict[str, Any]:
    """The generation settings a chat completion body asks for, checked."""
    return parse_chat(body).sampling(output_kind)


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
        "modelsmith": _served(assignment, rule),
    }


def _served(assignment: Assignment, rule: str | None) -> dict[str, Any]:
    """What served an answer: its version, stage, routing rule, shadow, bootstrap."""
    return {"version": assignment.version, "stage": assignment.stage, "rule": rule,
            "shadow": assignment.shadow, "bootstrap": assignment.bootstrap}
