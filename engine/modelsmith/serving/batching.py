"""Concurrent requests to one version, coalesced into batched backend calls.

Each loaded version gets one :class:`Batcher`: one worker thread that owns the backend, and
a queue that the request threads put their :class:`GenerationRequest` on. The worker takes
everything queued (up to ``max_batch``) and makes one ``backend.generate`` call of it; the
requests that arrive while that call runs form the next batch. A lone request therefore
waits for nothing, and under load the batch grows by itself -- the transformers backend pads
a batch into one forward pass per token, vLLM schedules it, the OpenAI-compatible backend
sends it concurrently. ``max_wait_ms`` adds a short wait for company before a batch starts
(0 by default: no request is held back for a batch that may not come).

One caller's failure stays its own: a backend error on a batch is every member's error, but
a request the backend refuses alone (a bad ``max_new_tokens``) is retried singly first so
that it does not fail the requests batched with it (unless part of its answer was already
streamed: that request then fails with the batch's error).

A request may come with a listener (``submit(request, listener)``): the backend calls it
with each new piece of the answer as it is generated (``generate(..., listeners=...)``); a
backend whose ``generate`` takes no ``listeners`` hands it the whole answer at the end.
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from modelsmith.inference.base import Generation, GenerationRequest
from modelsmith.inference.streaming import emit_whole

Listener = Callable[[str], None]

#: Requests per backend call when the backend does not say (``batch_size``).
DEFAULT_MAX_BATCH = 16

_STOP = object()


def answer_within(future: Future[Generation], timeout: float | None) -> Generation:
    """A submitted request's answer; ``TimeoutError`` after ``timeout`` seconds (the request
    is then dropped if it has not started, or its answer discarded)."""
    try:
        return future.result(timeout=timeout)
    except FutureTimeout:
        future.cancel()
        raise TimeoutError(f"no answer within {timeout:g} s") from None


class BatcherClosed(RuntimeError):
    """The batcher was closed; its backend takes no more requests."""


class _Heard:
    """A request's listener, remembering whether it was told anything."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.told = False

    def __call__(self, piece: str) -> None:
        self.told = True
        self.listener(piece)


def _takes_listeners(backend: Any) -> bool:
    try:
        return "listeners" in inspect.signature(backend.generate).parameters
    except (TypeError, ValueError):
        return False


class Batcher:
    """One backend behind a queue; ``generate(request)`` blocks until its answer is ready."""

    def __init__(self, backend: Any, *, max_batch: int | None = None,
                 max_wait_ms: float = 0.0, name: str = "batcher") -> None:
        size = max_batch or getattr(backend, "batch_size", None) or DEFAULT_MAX_BATCH
        if size < 1:
            raise ValueError(f"max_batch must be at least 1 (got {size})")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative (got {max_wait_ms})")
        self.backend = backend
        self.max_batch = int(size)
        self.max_wait_s = max_wait_ms / 1000.0
        self._streams = _takes_listeners(backend)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        #: Sizes of the batches run so far (``sizes[n]`` = batches of n requests).
        self.sizes: dict[int, int] = {}
        self._worker = threading.Thread(target=self._run, daemon=True, name=name)
        self._worker.start()

    # ------------------------------------------------------------------ callers

    def submit(self, request: GenerationRequest,
               listener: Listener | None = None) -> Future[Generation]:
        """Queue ``request``; ``listener`` (optional) gets its answer's text as it is
        generated, all of it before the future is done."""
        future: Future[Generation] = Future()
        heard = None if listener is None else _Heard(listener)
        with self._lock:
            if self._closed:
                raise BatcherClosed("this version is no longer served")
            self._queue.put((request, future, heard))
        return future

    def generate(self, request: GenerationRequest, timeout: float | None = None) -> Generation:
        """The answer to ``request``; ``TimeoutError`` after ``timeout`` seconds (the request
        is then dropped if it has not started, or its answer discarded)."""
        return answer_within(self.submit(request), timeout)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` under the model; whitespace words once the version was retired
        and its model closed (a count for usage, never worth failing a request over)."""
        try:
            return int(self.backend.count_tokens(text))
        except Exception:
            if not self._closed:
                raise
            return len(text.split())

    def close(self, *, backend: bool = True, timeout: float | None = None) -> None:
        """Answer what is queued, stop the worker, and close the backend (unless
        ``backend=False``: another batcher shares it). ``timeout``: seconds to wait for the
        worker; a worker still generating then keeps its backend (the process is ending)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._worker.join(timeout)
        if backend and not self._worker.is_alive():
            self.backend.close()

    @property
    def batches(self) -> int:
        return sum(self.sizes.values())

    # ------------------------------------------------------------------ the worker

    def _take(self) -> tuple[list[Any], bool]:
        """The next batch (blocking for its first member), and whether to stop after it."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                wait = deadline - time.monotonic()
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._take()
            if batch:
                self._answer(batch)

    def _call(self, requests: list[GenerationRequest],
              listeners: list[_Heard | None]) -> list[Generation]:
        if not any(listeners):
            return self.backend.generate(requests)
        if self._streams:
            return self.backend.generate(requests, listeners=listeners)
        generations = self.backend.generate(requests)
        emit_whole(listeners, generations)
        return generations

    def _answer(self, batch: Sequence[tuple[GenerationRequest, Future[Generation],
                                            _Heard | None]]) -> None:
        live = [item for item in batch if item[1].set_running_or_notify_cancel()]
        if not live:
            return
        self.sizes[len(live)] = self.sizes.get(len(live), 0) + 1
        try:
            generations = self._call([r for r, _, _ in live], [h for _, _, h in live])
        except Exception as exc:
            if len(live) == 1:
                live[0][1].set_exception(exc)
                return
            # Find whose request it was; the rest are answered (but a request whose answer
            # was partly streamed already cannot start again).
            for request, future, heard in live:
                if heard is not None and heard.told:
                    future.set_exception(exc)
                    continue
                try:
                    (generation,) = self._call([request], [heard])
                except Exception as alone:
                    future.set_exception(alone)
                else:
                    future.set_result(generation)
            return
        for (_, future, _), generation in zip(live, generations, strict=True):
            future.set_result(generation)
