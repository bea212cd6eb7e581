"""The OpenAI-compatible backend against a real HTTP server on 127.0.0.1: the backend
contract, then the request it sends, retries, errors and concurrency."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from backend_contract import BackendContract
from modelsmith.inference import GenerationRequest, InferenceError, make_backend
from modelsmith.inference.openai_backend import OpenAIBackend, estimate_tokens
from openai_fake import FakeOpenAI, Reply, completion

SECRET = "sk-test-SECRET-0123456789"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    server = FakeOpenAI()
    yield server
    server.close()


def backend_for(fake: FakeOpenAI, **kw: Any) -> OpenAIBackend:
    kw.setdefault("backoff_s", 0.01)
    return OpenAIBackend("fake-model", base_url=fake.base_url, **kw)


def req(prompt: str, **kw: Any) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, **kw)


class TestOpenAIBackend(BackendContract):
    """The fake answers ``echo:<prompt>``."""

    name = "openai"

    @pytest.fixture
    def backend(self, fake):
        return backend_for(fake)

    @pytest.fixture
    def fresh_backend(self, fake):
        return backend_for(fake)

    @pytest.fixture
    def missing_backend(self, fake):
        return lambda: OpenAIBackend("fake-model", base_url=fake.base_url.replace("/v1", "/v2"))

    @pytest.fixture
    def model_ref(self):
        return "fake-model"


def test_request_body_and_result(fake: FakeOpenAI) -> None:
    backend = backend_for(fake)
    result = backend.generate([
        req("Bid: domain=a.example", system="Answer ACCEPT or REJECT.", max_new_tokens=5,
            temperature=0.7, top_p=0.9, seed=42, stop=("\n",))
    ])[0]
    headers, body = fake.calls[0]
    assert body == {
        "model": "fake-model",
        "messages": [{"role": "system", "content": "Answer ACCEPT or REJECT."},
                     {"role": "user", "content": "Bid: domain=a.example"}],
        "max_tokens": 5,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 42,
        "stop": ["\n"],
    }
    assert "Authorization" not in headers  # no key in the environment: no header
    assert headers["Content-Type"] == "application/json"
    assert result.text == "echo:Bid: domain=a.example"
    assert result.completion_tokens == 3 and result.finish_reason == "stop"
    assert result.error is None and result.latency_ms > 0
    assert result.meta["id"] == "chatcmpl-1" and result.meta["attempts"] == 1
    # no system, no seed, no stop: those keys are left out
    backend.generate([req("plain")])
    assert set(fake.calls[1][1]) == {"model", "messages", "max_tokens", "temperature", "top_p"}
    assert fake.calls[1][1]["messages"] == [{"role": "user", "content": "plain"}]


def test_bearer_header_only_when_the_key_is_set(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    backend_for(fake).generate([req("x")])
    assert fake.calls[-1][0]["Authorization"] == f"Bearer {SECRET}"
    monkeypatch.setenv("MY_KEY", "other-key")
    backend_for(fake, api_key_env="MY_KEY").generate([req("x")])
    assert fake.calls[-1][0]["Authorization"] == "Bearer other-key"
    assert SECRET not in repr(backend_for(fake))


def test_401_raises_naming_the_endpoint_without_the_key(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    fake.script = [(401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}}, {})]
    with pytest.raises(InferenceError) as info:
        backend_for(fake).generate([req("a"), req("b")])
    message = str(info.value)
    assert f"{fake.base_url}/chat/completions" in message
    assert "401" in message and "OPENAI_API_KEY" in message
    assert SECRET not in message and "***" in message
    assert len(fake.calls) == 1  # stopped after the first call


def test_404_wrong_endpoint_or_model_raises(fake: FakeOpenAI) -> None:
    wrong = OpenAIBackend("fake-model", base_url=fake.base_url.replace("/v1", "/v2"))
    with pytest.raises(InferenceError, match=r"404.*'fake-model'"):
        wrong.generate([req("a")])
    fake.script = [(403, {"error": {"message": "no access"}}, {})]
    with pytest.raises(InferenceError, match=r"403.*no access"):
        backend_for(fake).generate([req("a")])


def test_client_errors_after_the_first_call_are_error_generations(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)

    def respond(body: dict) -> Reply:
        prompt = body["messages"][-1]["content"]
        if prompt == "bad":
            return 400, {"error": {"message": f"bad request (key {SECRET})"}}, {}
        return 200, completion(f"echo:{prompt}"), {}

    fake.responder = respond
    results = backend_for(fake).generate([req("ok"), req("bad"), req("fine")])
    assert [r.finish_reason for r in results] == ["stop", "error", "stop"]
    assert results[1].text == "" and results[1].completion_tokens == 0
    assert results[1].error is not None and "HTTP 400" in results[1].error
    assert "bad request" in results[1].error and SECRET not in results[1].error
    assert results[2].text == "echo:fine"


def test_500_then_200_is_retried(fake: FakeOpenAI) -> None:
    fake.script = [(500, {"error": {"message": "boom"}}, {}), (502, b"bad gateway", {})]
    result = backend_for(fake).generate([req("x")])[0]
    assert result.text == "echo:x" and result.meta["attempts"] == 3
    assert len(fake.calls) == 3


def test_429_is_retried_honouring_retry_after(fake: FakeOpenAI) -> None:
    fake.script = [(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.2"})]
    started = time.monotonic()
    result = backend_for(fake).generate([req("x")])[0]
    assert time.monotonic() - started >= 0.2
    assert result.text == "echo:x" and result.meta["attempts"] == 2


def test_retries_run_out_into_an_error_generation(fake: FakeOpenAI) -> None:
    backend = backend_for(fake, max_retries=1)
    assert backend.generate([req("warm")])[0].finish_reason == "stop"
    fake.script = [(429, {"error": {"message": "rate limited"}}, {})] * 2
    result = backend.generate([req("x")])[0]
    assert result.finish_reason == "error" and result.meta["attempts"] == 2
    assert result.error is not None
    assert "HTTP 429" in result.error and "rate limited" in result.error


def test_malformed_response_is_an_error_generation(fake: FakeOpenAI) -> None:
    backend = backend_for(fake)
    fake.script = [(200, b"<html>not json</html>", {}), (200, {"choices": []}, {})]
    results = backend.generate([req("a")]) + backend.generate([req("b")])
    for result in results:
        assert result.finish_reason == "error" and result.text == ""
        assert result.error is not None and "malformed chat completion" in result.error
    assert "<html>" in (results[0].error or "")
    assert len(fake.calls) == 2  # not retried


def test_unreachable_endpoint_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = OpenAIBackend("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1,
                            backoff_s=0.01)
    with pytest.raises(InferenceError, match=r"cannot reach .*after 2 attempts.*OPENAI_BASE_URL"):
        backend.generate([req("a")])
    with pytest.raises(InferenceError, match="not an http"):
        OpenAIBackend("m", base_url="ftp://example.com/v1")
    monkeypatch.setenv("OPENAI_BASE_URL", "not a url")
    with pytest.raises(InferenceError, match="OPENAI_BASE_URL"):
        OpenAIBackend("m")


def test_parallel_requests_keep_their_order(fake: FakeOpenAI) -> None:
    # later prompts answer sooner, so completion order is the reverse of request order
    fake.delay_s = lambda body: 0.05 * (10 - int(body["messages"][-1]["content"][1:])) / 2
    prompts = [f"p{i}" for i in range(10)]
    calls: list[tuple[int, int]] = []
    backend = backend_for(fake, concurrency=4)
    results = backend.generate([req(p) for p in prompts],
                               progress=lambda d, t: calls.append((d, t)))
    assert [r.text for r in results] == [f"echo:{p}" for p in prompts]
    assert fake.max_active >= 3  # the server saw requests in parallel
    assert fake.max_active <= 4  # and never more than the concurrency
    assert len(calls) == 10  # one call per request


def test_client_side_stop_trim_and_missing_usage(fake: FakeOpenAI) -> None:
    fake.script = [(200, completion("ACCEPT\nbecause", tokens=None), {}),
                   (200, completion("truncated", finish="length"), {})]
    backend = backend_for(fake)
    first = backend.generate([req("x", stop=("\n",))])[0]
    assert first.text == "ACCEPT" and first.finish_reason == "stop"
    assert first.completion_tokens == estimate_tokens("ACCEPT")
    assert backend.generate([req("y")])[0].finish_reason == "length"


def test_count_tokens_estimate() -> None:
    backend = OpenAIBackend("m", base_url="http://127.0.0.1:1/v1")
    assert backend.count_tokens("abcdefgh") == 2
    assert backend.count_tokens("a b c d e") == 5  # at least the word count
    backend.close()


def test_factory_openai_prefix(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    backend = make_backend("openai:fake-model", None)
    assert isinstance(backend, OpenAIBackend) and backend.model_ref == "fake-model"
    assert backend.generate([req("hi")])[0].text == "echo:hi"
    with pytest.raises(InferenceError, match="needs a model name"):
        make_backend("openai:", None)
    with pytest.raises(InferenceError, match="served by the openai backend"):
        make_backend("openai:fake-model", None, backend="vllm")


def test_a_listened_request_is_streamed_from_the_endpoint(fake: FakeOpenAI) -> None:
    """With a listener the request says ``stream: true``: the listener hears each chunk as
    the server sends it (the first one before the server has sent the rest), and the
    chunks add up to the answer; a stop string spread over chunks is never heard."""
    fake.chunk_delay_s = 0.05
    text = "ACCEPT because the domain is clean and the rate is high"
    fake.responder = lambda body: (200, completion(text, tokens=11), {})
    heard: list[tuple[float, str]] = []
    backend = backend_for(fake)
    (result,) = backend.generate([req("a bid", max_new_tokens=16)],
                                 listeners=[lambda piece: heard.append((time.monotonic(),
                                                                        piece))])
    done = time.monotonic()
    body = fake.calls[-1][1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert result.text == text == "".join(p for _, p in heard)
    assert len(heard) > 5 and heard[0][0] < done
    assert result.completion_tokens == 11 and result.finish_reason == "stop"
    pieces: list[str] = []
    (stopped,) = backend.generate([req("a bid", stop=("clean and",))],
                                  listeners=[pieces.append])
    assert stopped.text == "".join(pieces) == "ACCEPT because the domain is "
    # A server that answers a stream request whole: its answer is heard whole.
    fake.streams = False
    whole: list[str] = []
    (plain,) = backend.generate([req("a bid")], listeners=[whole.append])
    assert whole == [text] and plain.text == text


def test_a_broken_stream_is_an_error_generation(fake: FakeOpenAI) -> None:
    backend = backend_for(fake)
    backend.generate([req("first")])  # verified
    event = b'data: {"choices": [{"delta": {"content": "ACCEPT because"}}]}\n\n'
    fake.responder = lambda body: (200, event + b"data: {oops\n\n",
                                   {"Content-Type": "text/event-stream"})
    heard: list[str] = []
    (broken,) = backend.generate([req("x")], listeners=[heard.append])
    assert broken.finish_reason == "error" and "malformed" in (broken.error or "")
    assert "{oops" in (broken.error or "") and heard == ["ACCEPT because"]  # what came before
