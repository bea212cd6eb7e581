"""One contract for every inference Backend: the transformers backend (on the tiny test
model) and the OpenAI-compatible one (against a real HTTP server on 127.0.0.1) both pass it.

``generate(..., listeners=...)`` hands each request's text to its listener as it is made
(or whole at the end), adding up to the Generation's text.

Each subclass provides a ``backend`` fixture (a loaded model may serve the whole module), a
``fresh_backend`` one (closed by the test), a ``missing_backend`` fixture that builds a
backend for a model that is not there, and ``model_ref``, what the backend says it loaded."""

from __future__ import annotations

import contextlib

import pytest

from modelsmith.inference import Backend, Generation, GenerationRequest, InferenceError

PROMPTS = [
    "Bid: domain=news.example ctr=1.2% floor=$0.80 format=banner\nVerdict:",
    "Bid: ctr=0.3%\nVerdict:",
    "Verdict:",
    "Bid: domain=sports.example ctr=0.3% floor=$0.40 format=native and a much longer tail "
    "of words so that this prompt needs many more tokens than the others\nVerdict:",
    "domain=clickfarm.example",
]


def greedy(prompt: str, n: int = 8, **kw: object) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, max_new_tokens=n, **kw)  # type: ignore[arg-type]


def texts(generations: list[Generation]) -> list[str]:
    return [g.text for g in generations]


class BackendContract:
    """Subclasses provide the fixtures above and ``name``; every test here holds for every
    backend."""

    name: str
    prompts: list[str] = PROMPTS

    def test_is_a_backend(self, backend, model_ref):
        assert isinstance(backend, Backend)
        assert backend.name == self.name and backend.model_ref == model_ref

    def test_one_generation_per_request_in_order(self, backend):
        requests = [greedy(p) for p in self.prompts]
        calls: list[tuple[int, int]] = []
        results = backend.generate(requests, progress=lambda d, t: calls.append((d, t)))
        assert len(results) == len(requests)
        for result in results:
            assert isinstance(result, Generation) and isinstance(result.text, str)
            assert result.completion_tokens >= 0
            assert result.finish_reason in ("stop", "length") and result.error is None
            assert result.latency_ms > 0 and isinstance(result.meta, dict)
        # Progress only grows, and ends at all done.
        assert calls[-1] == (len(requests), len(requests))
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)
        assert backend.generate([]) == []

    def test_batched_equals_one_at_a_time(self, backend):
        requests = [greedy(p) for p in self.prompts]
        batched = backend.generate(requests)
        single = [backend.generate([r])[0] for r in requests]
        assert texts(batched) == texts(single)
        assert [g.completion_tokens for g in batched] == [g.completion_tokens for g in single]
        assert len(set(texts(batched))) > 1  # the prompts matter: padding did not swamp them

    def test_greedy_is_deterministic(self, backend):
        requests = [greedy(p) for p in self.prompts]
        assert texts(backend.generate(requests)) == texts(backend.generate(requests))

    def test_stop_strings_are_trimmed(self, backend):
        full = backend.generate([greedy(self.prompts[0], 12)])[0]
        # a piece of the greedy text is the stop string: the output ends where it first occurs
        stop = full.text.strip()[-1]
        position = full.text.index(stop)
        stopped = backend.generate([greedy(self.prompts[0], 12, stop=(stop, "never-seen"))])[0]
        assert stopped.text == full.text[:position]
        assert stop not in stopped.text
        assert stopped.finish_reason == "stop"
        assert stopped.completion_tokens <= full.completion_tokens
        # in a batch, a row that stops early does not cut its neighbours short
        pair = backend.generate([greedy(self.prompts[0], 12, stop=(stop,)),
                                 greedy(self.prompts[0], 12)])
        assert pair[0].text == stopped.text and pair[1].text == full.text

    def test_listeners_get_exactly_the_text(self, backend):
        """Each listener's pieces add up to its request's text, stop strings trimmed (never
        streamed and then taken back); requests without a listener are answered the same."""
        requests = [greedy(p, 10) for p in self.prompts]
        plain = backend.generate(requests)
        heard: list[list[str]] = [[] for _ in requests]
        listeners = [None if i % 3 == 2 else heard[i].append for i in range(len(requests))]
        streamed = backend.generate(requests, listeners=listeners)
        assert texts(streamed) == texts(plain)
        for index, generation in enumerate(streamed):
            if listeners[index] is not None:
                assert "".join(heard[index]) == generation.text, heard[index]
            else:
                assert heard[index] == []
        full = plain[0].text
        stop = full.strip()[-1]
        pieces: list[str] = []
        (stopped,) = backend.generate([greedy(self.prompts[0], 10, stop=(stop,))],
                                      listeners=[pieces.append])
        assert "".join(pieces) == stopped.text == full[:full.index(stop)]

    def test_count_tokens(self, backend):
        assert backend.count_tokens("Bid: domain=news.example ctr=1.2%") > 0
        assert backend.count_tokens("") == 0

    def test_close_releases_and_can_be_repeated(self, fresh_backend):
        assert fresh_backend.generate([greedy(self.prompts[0], 2)])[0].text is not None
        fresh_backend.close()
        fresh_backend.close()
        # A closed backend answers or says, as an InferenceError, that it is closed.
        with contextlib.suppress(InferenceError):
            fresh_backend.generate([greedy(self.prompts[0], 2)])

    def test_a_model_that_is_not_there_is_an_inference_error(self, missing_backend):
        with pytest.raises(InferenceError):
            missing_backend().generate([greedy(self.prompts[0], 2)])
