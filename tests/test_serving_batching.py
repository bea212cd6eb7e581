"""Concurrent requests to one version coalesce into batched backend calls: each caller gets
its own answer, a lone request waits for nothing, one bad request fails alone, a listener
hears its answer as the backend makes it, and on the real tiny model a batched answer
equals the answer given alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from modelsmith.inference.base import Generation, GenerationRequest, InferenceError
from modelsmith.serving.batching import Batcher, BatcherClosed


class SlowEcho:
    """A backend that answers each prompt with itself, taking ``delay`` per call, and
    refuses a whole call that holds a request for zero tokens (as a real one does)."""

    name = "echo"
    model_ref = "echo"

    def __init__(self, delay: float = 0.05, batch_size: int = 8) -> None:
        self.delay, self.batch_size = delay, batch_size
        self.calls: list[list[str]] = []
        self.closed = False
        self.gate = threading.Event()
        self.gate.set()

    def generate(self, requests, progress=None):
        self.gate.wait()
        self.calls.append([r.prompt for r in requests])
        if any(r.max_new_tokens < 1 for r in requests):
            raise InferenceError("max_new_tokens must be at least 1")
        time.sleep(self.delay)
        return [Generation(text=r.prompt.upper(), completion_tokens=1, latency_ms=1.0)
                for r in requests]

    def count_tokens(self, text):
        return len(text.split())

    def close(self):
        self.closed = True


def ask(text: str, tokens: int = 4) -> GenerationRequest:
    return GenerationRequest(prompt=text, max_new_tokens=tokens)


def test_requests_that_arrive_while_the_backend_is_busy_share_the_next_call():
    backend = SlowEcho()
    batcher = Batcher(backend)
    backend.gate.clear()  # hold the first call until everyone has queued
    first = batcher.submit(ask("first"))
    time.sleep(0.05)
    rest = [batcher.submit(ask(f"req {i}")) for i in range(12)]
    backend.gate.set()
    assert first.result(timeout=10).text == "FIRST"
    assert [f.result(timeout=10).text for f in rest] == [f"REQ {i}" for i in range(12)]
    # one call for the first, then the 12 that queued behind it in batches of at most 8
    assert [len(c) for c in backend.calls] == [1, 8, 4]
    assert batcher.sizes == {1: 1, 8: 1, 4: 1} and batcher.batches == 3
    batcher.close()
    assert backend.closed


def test_a_lone_request_is_not_held_back():
    backend = SlowEcho(delay=0.0)
    batcher = Batcher(backend, max_wait_ms=0)
    started = time.perf_counter()
    for i in range(20):
        assert batcher.generate(ask(f"q{i}")).text == f"Q{i}"
    assert (time.perf_counter() - started) / 20 < 0.05
    assert batcher.sizes == {1: 20}
    batcher.close()


def test_a_short_wait_gathers_callers_that_arrive_together():
    backend = SlowEcho(delay=0.0)
    batcher = Batcher(backend, max_wait_ms=200, max_batch=4)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: batcher.generate(ask(f"x{i}")).text, range(4)))
    assert answers == ["X0", "X1", "X2", "X3"]
    assert batcher.sizes == {4: 1}
    batcher.close()


def test_one_bad_request_fails_alone():
    backend = SlowEcho()
    batcher = Batcher(backend)
    backend.gate.clear()
    blocker = batcher.submit(ask("block"))
    time.sleep(0.05)
    good = [batcher.submit(ask(f"ok {i}")) for i in range(3)]
    bad = batcher.submit(ask("bad", tokens=0))
    backend.gate.set()
    assert blocker.result(timeout=10).text == "BLOCK"
    assert [f.result(timeout=10).text for f in good] == ["OK 0", "OK 1", "OK 2"]
    with pytest.raises(InferenceError, match="at least 1"):
        bad.result(timeout=10)
    batcher.close()


def test_close_answers_what_is_queued_then_refuses_more():
    backend = SlowEcho(delay=0.02)
    batcher = Batcher(backend, max_batch=2)
    queued = [batcher.submit(ask(f"q{i}")) for i in range(5)]
    batcher.close()
    assert [f.result(timeout=0).text for f in queued] == [f"Q{i}" for i in range(5)]
    with pytest.raises(BatcherClosed):
        batcher.submit(ask("late"))
    batcher.close()  # twice is fine


class Streamer(SlowEcho):
    """A backend that streams: each listener hears its answer a letter at a time. A call
    holding a prompt that says ``break`` fails after the others' first letters."""

    def generate(self, requests, progress=None, listeners=None):
        self.gate.wait()
        self.calls.append([r.prompt for r in requests])
        listening = listeners or [None] * len(requests)
        for listener, request in zip(listening, requests, strict=True):
            if listener is not None:
                listener(request.prompt.upper()[:1])
        if any("break" in r.prompt for r in requests):
            raise InferenceError("the stream broke")
        for listener, request in zip(listening, requests, strict=True):
            for letter in request.prompt.upper()[1:]:
                if listener is not None:
                    listener(letter)
        return [Generation(text=r.prompt.upper(), completion_tokens=1, latency_ms=1.0)
                for r in requests]


def test_a_listener_hears_its_answer_whichever_the_backend():
    """Through a streaming backend, a letter at a time; through one whose ``generate``
    takes no listeners, whole at the end; a request without a listener is answered as
    before, beside them in one batch."""
    for backend, pieces in ((Streamer(), ["H", "E", "Y"]), (SlowEcho(), ["HEY"])):
        batcher = Batcher(backend)
        backend.gate.clear()
        blocker = batcher.submit(ask("block"))
        time.sleep(0.05)
        heard: list[str] = []
        listened = batcher.submit(ask("hey"), listener=heard.append)
        quiet = batcher.submit(ask("quiet"))
        backend.gate.set()
        assert blocker.result(timeout=10).text == "BLOCK"
        assert listened.result(timeout=10).text == "HEY" and heard == pieces
        assert quiet.result(timeout=10).text == "QUIET"
        assert batcher.sizes[2] == 1  # the listened and the quiet request shared a call
        batcher.close()


def test_a_request_partly_streamed_is_not_retried_alone():
    """A failed batch is retried request by request, except a request whose listener
    already heard part of its answer: that one fails with the batch's error (a retry
    would tell its listener the beginning twice)."""
    backend = Streamer()
    batcher = Batcher(backend)
    backend.gate.clear()
    blocker = batcher.submit(ask("block"))
    time.sleep(0.05)
    heard: list[str] = []
    listened = batcher.submit(ask("hey"), listener=heard.append)
    quiet = batcher.submit(ask("quiet"))
    broken = batcher.submit(ask("break"))
    backend.gate.set()
    assert blocker.result(timeout=10).text == "BLOCK"
    with pytest.raises(InferenceError, match="broke"):
        listened.result(timeout=10)
    assert heard == ["H"]
    assert quiet.result(timeout=10).text == "QUIET"  # retried alone
    with pytest.raises(InferenceError, match="broke"):
        broken.result(timeout=10)
    assert ["quiet"] in backend.calls and ["hey"] not in backend.calls
    batcher.close()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(SlowEcho(), max_batch=-1)
    with pytest.raises(ValueError, match="max_wait_ms"):
        Batcher(SlowEcho(), max_wait_ms=-1)


def test_batched_answers_equal_answers_given_alone_on_the_tiny_model(demo_repo, tmp_path,
                                                                    monkeypatch):
    """The transformers backend pads a batch to the left: 16 concurrent requests answered in
    shared calls say exactly what each says alone."""
    from modelsmith.artifacts.models import resolve_model
    from modelsmith.inference import make_backend
    from modelsmith.specs import load_repository

    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    clusters = load_repository(demo_repo).clusters
    tiny = resolve_model("tiny-test", clusters, progress=lambda _m: None).path
    prompts = [f"Bid: domain=site{i}.example ctr={i / 7:.2f}% floor=${i % 5}.00"
               f"{' format=banner' * (i % 3)}\nVerdict:" for i in range(16)]
    alone_backend = make_backend(str(tiny), clusters)
    alone = [alone_backend.generate([ask(p, 6)])[0].text for p in prompts]
    alone_backend.close()

    backend = make_backend(str(tiny), clusters)
    batcher = Batcher(backend, max_wait_ms=50)
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda p: batcher.generate(ask(p, 6)).text, prompts))
    assert together == alone
    assert max(batcher.sizes) > 1, batcher.sizes
    batcher.close()
