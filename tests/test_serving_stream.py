"""Streaming and OpenAI's request shape, through ``modelsmith serve`` on 127.0.0.1 with real
clients (httpx2, openai): the first content chunk arrives while the backend is still
generating, the ``openai`` client's streaming helpers read the stream (with and without
``stream_options.include_usage``), content-part arrays are read as text, every field a
specialist cannot honour is a 400 naming it, and the canary key comes from
``safety_identifier``, then ``prompt_cache_key``, then ``user``."""

from __future__ import annotations

import json
import threading
import time

import httpx2 as httpx
import pytest

from modelsmith.artifacts.registry import ModelRegistry
from modelsmith.events.gitstore import GitEventStore
from modelsmith.events.projection import fold
from modelsmith.events.types import CandidateRegistered, Event, Lineage, Promoted
from modelsmith.inference.base import Generation
from modelsmith.inference.streaming import TextStream
from modelsmith.serving.http import make_server
from modelsmith.serving.service import ServeError, Service
from modelsmith.serving.split import BUCKETS, bucket
from modelsmith.specs import load_repository

openai = pytest.importorskip("openai")
TOKEN = "s3cret"
BID = "domain=news.example ctr=0.7% floor=$1.20 format=banner"
PIECES = (" AC", "C", "EPT")


class Typist:
    """A stand-in model that types its answer a piece at a time: `` ACCEPT`` (and its
    version, after a stop-free tail, when asked for more than 4 tokens). With ``hold``, it
    waits after its first piece until ``hold`` is set (at most 30 s); ``finished`` is the
    ``time.monotonic()`` at which its last answer was complete."""

    name, model_ref, batch_size = "typist", "typist", 8

    def __init__(self, version: str, hold: threading.Event | None = None) -> None:
        self.version = version
        self.hold = hold
        self.finished: float | None = None
        self.prompts: list[str] = []

    def generate(self, requests, progress=None, listeners=None):
        listening = list(listeners or [None] * len(requests))
        out = []
        for request, listener in zip(requests, listening, strict=True):
            pieces = [*PIECES, f" {self.version}"] if request.max_new_tokens > 4 else PIECES
            if "fail" in request.prompt:
                raise RuntimeError("the typist's keyboard broke")
            self.prompts.append(request.prompt)
            stream = TextStream(listener, request.stop)
            text = ""
            for index, piece in enumerate(pieces):
                text += piece
                stream.update(text)
                if index == 0 and self.hold is not None:
                    self.hold.wait(30)
                if "stuck" in request.prompt:
                    time.sleep(2)
            cut = min((i for i in (text.find(s) for s in request.stop) if i >= 0),
                      default=len(text))
            out.append(Generation(text=stream.close(text[:cut]),
                                  completion_tokens=len(pieces), latency_ms=1.0))
        self.finished = time.monotonic()
        return out

    def count_tokens(self, text):
        return len(text.split())

    def close(self):
        pass


def fleet(root, *promotions) -> None:
    store = GitEventStore(root)
    events = [CandidateRegistered(version=v, lineage=Lineage(base_model="tiny-test"))
              for v in ("v1", "v2")]
    store.append("rtb-quality", [Event.new(p, actor="test")
                                 for p in (*events, *promotions)], 0)


@pytest.fixture
def serve(demo_repo):
    """``serve(*promotions, hold=None, **options)``: the service over those promotions
    (every version a :class:`Typist`), served on a free port of 127.0.0.1; stopped
    afterwards. Returns the service, the port and the typists by version."""
    started = []

    def start(*promotions, hold=None, **options):
        fleet(demo_repo, *(promotions or (Promoted(version="v1", stage="production"),)))
        repo = load_repository(demo_repo)
        store = GitEventStore(demo_repo)
        registry = ModelRegistry(demo_repo, repo.clusters,
                                 lambda s: fold(store).specialists[s].candidates,
                                 pull=lambda _path: None)
        typists: dict[str, Typist] = {}

        def make(_specialist, version):
            return typists.setdefault(version, Typist(version, hold))

        service = Service(repo, store, registry, backend_factory=make, **options)
        httpd = make_server(service, port=0, token=TOKEN).start()
        started.append((httpd, service))
        return service, httpd.server_address[1], typists

    yield start
    for httpd, service in started:
        httpd.stop(grace=0)
        service.close(timeout=5)


def client(port):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=TOKEN, max_retries=0)


def chat(content=BID, **extra):
    return {"model": "rtb-quality", "messages": [{"role": "user", "content": content}],
            **extra}


def post(port, body):
    answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    return answer.status_code, answer.json()


def events(port, body):
    """The stream's server-sent events, each with the ``time.monotonic()`` it arrived at."""
    got = []
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("data: "):
                got.append((time.monotonic(), line[len("data: "):]))
    return got


def test_the_first_content_chunk_arrives_while_the_backend_is_still_generating(serve):
    """The typist holds after its first piece until the client has it: the client gets
    content before generation ends. (Were the answer sent whole, the typist would wait its
    30 s out, finish, and only then would the first chunk arrive.)"""
    hold = threading.Event()
    service, port, typists = serve(hold=hold)
    seen: list[tuple[float, str]] = []
    first_tokens = []
    service.metrics.first_token = lambda key, seconds: first_tokens.append((key, seconds))

    def read():
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions",
                          json=chat(stream=True), timeout=60,
                          headers={"Authorization": f"Bearer {TOKEN}"}) as answer:
            for line in answer.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[len("data: "):])
                delta = event["choices"][0]["delta"] if event.get("choices") else {}
                if delta.get("content"):
                    seen.append((time.monotonic(), delta["content"]))
                    hold.set()

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(60)
    assert not reader.is_alive()
    finished = typists["v1"].finished
    assert seen and finished is not None
    assert seen[0][0] < finished, (seen, finished)
    assert "".join(piece for _, piece in seen) == "".join(PIECES)
    assert len(seen) == len(PIECES)  # one chunk per piece, none held back to the end
    (key, seconds), = first_tokens
    assert key == ("rtb-quality", "v1", "production") and seconds >= 0


def test_the_openai_client_reads_the_stream_with_and_without_usage(serve):
    service, port, _ = serve()
    whole = client(port).chat.completions.create(
        model="rtb-quality", messages=[{"role": "user", "content": BID}])
    assert whole.choices[0].message.content == "".join(PIECES)
    parts = list(client(port).chat.completions.create(
        model="rtb-quality", messages=[{"role": "user", "content": BID}], stream=True))
    assert parts[0].choices[0].delta.role == "assistant"
    assert parts[0].model_extra["modelsmith"]["version"] == "v1"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == \
        whole.choices[0].message.content
    assert parts[-1].choices[0].finish_reason == "stop"
    assert all(p.usage is None for p in parts) and len({p.id for p in parts}) == 1
    raw = [json.loads(data) for _, data in events(port, chat(stream=True))[:-1]]
    assert all("usage" not in event for event in raw)  # not asked for: not there
    counted = list(client(port).chat.completions.create(
        model="rtb-quality", messages=[{"role": "user", "content": BID}], stream=True,
        stream_options={"include_usage": True}))
    *content, last = counted
    assert last.choices == [] and last.usage.completion_tokens == len(PIECES)
    assert last.usage.total_tokens == last.usage.prompt_tokens + len(PIECES)
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(p.usage is None for p in content)
    assert "".join(p.choices[0].delta.content or "" for p in content) == "".join(PIECES)
    raw = [json.loads(data) for _, data in events(port, chat(
        stream=True, stream_options={"include_usage": True}))[:-1]]
    assert all(event["usage"] is None for event in raw[:-1]) and raw[-1]["choices"] == []
    # The openai client's streaming helper builds the final completion from the chunks.
    with client(port).chat.completions.stream(
            model="rtb-quality", messages=[{"role": "user", "content": BID}],
            stream_options={"include_usage": True}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "content.delta" in kinds and "content.done" in kinds
    assert final.choices[0].message.content == "".join(PIECES)
    assert final.usage.completion_tokens == len(PIECES)
    # A streamed answer is a response like any other: counted once, open to feedback.
    streamed_id = counted[0].id
    feedback = httpx.post(f"http://127.0.0.1:{port}/v1/feedback", timeout=60,
                          json={"id": streamed_id, "score": 1.0},
                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert feedback.status_code == 200 and feedback.json()["version"] == "v1"
    window = {(e.data["version"], e.data["stage"]): e.data for e in service.flush()}
    assert window[("v1", "production")]["requests"] == 6
    # stream_options without stream: a 400 naming it.
    status, body = post(port, chat(stream_options={"include_usage": True}))
    assert status == 400 and body["error"]["param"] == "stream_options"
    assert "'stream_options'" in body["error"]["message"]


def test_stop_strings_are_never_streamed_then_taken_back(serve):
    _, port, _ = serve()
    streamed = [json.loads(data) for _, data in events(port, chat(
        stream=True, max_tokens=8, stop=["EPT v"]))[:-1]]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in streamed)
    assert text == " ACC"  # " ACC" + "EPT" could still grow into the stop string
    whole = post(port, chat(max_tokens=8, stop=["EPT v"]))[1]
    assert whole["choices"][0]["message"]["content"] == text


def test_content_part_arrays_are_read_as_text(serve):
    _, port, typists = serve()
    parts = [{"type": "text", "text": "domain=news.example"}, {"type": "text", "text": BID}]
    answer = client(port).chat.completions.create(
        model="auto", messages=[{"role": "developer", "content": "screen bids"},
                                {"role": "user", "content": parts}])
    assert answer.choices[0].message.content == "".join(PIECES)
    assert answer.model_extra["modelsmith"]["rule"] is not None  # the router read the text
    assert typists["v1"].prompts[-1] == f"Bid: domain=news.example\n{BID}\nVerdict:"
    streamed = list(client(port).chat.completions.create(
        model="rtb-quality", stream=True, messages=[
            {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
            {"role": "user", "content": parts},
            {"role": "assistant", "content": "ACCEPT"},
            {"role": "tool", "content": "ok", "tool_call_id": "t1"},
            {"role": "user", "content": [{"type": "text", "text": BID}]}]))
    assert "".join(p.choices[0].delta.content or "" for p in streamed) == "".join(PIECES)
    assert typists["v1"].prompts[-1] == f"Bid: {BID}\nVerdict:"  # the last user message
    status, body = post(port, chat([{"type": "text", "text": BID},
                                    {"type": "image_url", "image_url": {"url": "x"}}]))
    assert status == 400 and body["error"]["param"] == "messages[0].content[1].type"
    assert "image_url" in body["error"]["message"]
    status, body = post(port, {"model": "rtb-quality", "messages": [
        {"role": "system", "content": "x"},
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]})
    assert status == 400 and body["error"]["param"] == "messages[1].content[0].type"
    status, body = post(port, {"model": "rtb-quality",
                               "messages": [{"role": "robot", "content": BID}]})
    assert status == 400 and body["error"]["param"] == "messages[0].role"


REFUSED = [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"n": 2}, "n"),
    ({"response_format": {"type": "json_object"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format.type"),
    ({"logprobs": True}, "logprobs"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"presence_penalty": -1}, "presence_penalty"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
    ({"temperature": 5}, "temperature"),
    ({"messages": "hi"}, "messages"),
]
HARMLESS = {"store": True, "metadata": {"team": "ads"}, "parallel_tool_calls": False,
            "user": "u1", "frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {},
            "service_tier": "auto", "reasoning_effort": "low", "tool_choice": "none",
            "tools": [], "modalities": ["text"], "logprobs": False,
            "response_format": {"type": "text"}, "n": 1, "prediction": None}


def test_fields_a_specialist_cannot_honour_are_400s_naming_them(serve):
    service, port, _ = serve()
    for extra, param in REFUSED:
        for stream in (False, True):
            body = {**chat(), **({"stream": True} if stream else {}), **extra}
            status, answer = post(port, body)
            assert status == 400, (extra, answer)
            error = answer["error"]
            assert error["param"] == param and f"'{param}'" in error["message"], error
            assert error["type"] == "invalid_request_error"
    status, answer = post(port, chat(**HARMLESS))
    assert status == 200 and answer["choices"][0]["message"]["content"] == "".join(PIECES)
    assert len(list(service.stream(chat(stream=True, **HARMLESS)))) == 2 + len(PIECES)
    # A bad request is refused by the call itself, before any chunk.
    with pytest.raises(ServeError) as refused:
        service.stream(chat(stream=True, tools=[{"type": "function"}]))
    assert refused.value.status == 400 and refused.value.param == "tools"


def test_the_canary_key_is_the_safety_identifier_then_the_prompt_cache_key_then_user(serve):
    _, port, _ = serve(Promoted(version="v1", stage="production"),
                       Promoted(version="v2", stage="canary", traffic=0.5))
    keys = [f"key-{i}" for i in range(64)]
    canary = next(k for k in keys if bucket(k) < BUCKETS // 2)
    production = next(k for k in keys if bucket(k) >= BUCKETS // 2)

    def served(**fields):
        status, body = post(port, chat(**fields))
        assert status == 200, body
        return body["modelsmith"]["version"]

    for first, second, version in ((canary, production, "v2"), (production, canary, "v1")):
        assert served(safety_identifier=first, prompt_cache_key=second, user=second) == version
        assert served(prompt_cache_key=first, user=second) == version
        assert served(user=first) == version
        assert served(safety_identifier=first, user=second) == version
    # Without any key each request is a fresh draw: both versions answer, in time.
    assert {served() for _ in range(40)} == {"v1", "v2"}


def test_errors_after_the_first_chunk_end_the_stream_and_are_counted(serve):
    """A backend that fails, or one that takes longer than the request timeout, after the
    role chunk was sent: the stream's last item is the error; the timeout is counted as
    ``complete()`` counts it."""
    service, port, _ = serve(request_timeout_s=1.0)
    failed = list(service.stream(chat("fail " + BID, stream=True)))
    assert failed[-1]["error"]["type"] == "server_error" and "keyboard" in \
        failed[-1]["error"]["message"]
    sse = events(port, chat("fail " + BID, stream=True))
    assert json.loads(sse[-2][1])["error"]["type"] == "server_error", sse
    assert sse[-1][1] == "[DONE]"
    chunks = list(service.stream(chat("stuck " + BID, stream=True)))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["error"]["code"] == "timeout"
    assert "no answer within 1 s" in chunks[-1]["error"]["message"]
    service.settle()
    window = {(e.data["version"], e.data["stage"]): e.data for e in service.flush()}
    assert window[("v1", "production")]["metrics"]["error_rate"] == 1.0


def test_a_stream_dropped_midway_still_counts_its_answer(serve):
    hold = threading.Event()
    service, _, _ = serve(hold=hold)
    stream = service.stream(chat(stream=True))
    assert next(stream)["choices"][0]["delta"]["role"] == "assistant"
    assert next(stream)["choices"][0]["delta"]["content"] == PIECES[0]
    stream.close()  # the caller went away
    hold.set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        service.settle()
        windows = service.flush()
        if windows:
            break
        time.sleep(0.05)
    (window,) = windows
    assert window.data["requests"] == 1 and window.data["metrics"]["error_rate"] == 0.0
    assert window.data["metrics"]["format_rate"] == 1.0


@pytest.mark.parametrize(("steps", "expected"), [
    # half of a multi-byte character is held back until it is whole
    (["a", "a\ufffd", "a\u00e9", "a\u00e9b"], ["a", "\u00e9", "b"]),
    # trailing whitespace waits for what follows it (a clean-up may drop it)
    (["x", "x ", "x .", "x .y"], ["x", " .", "y"]),
    # text that could grow into the stop string waits; once it is the stop, it is cut
    (["ab", "ab#", "ab#E", "ab#END", "ab#ENDzz"], ["ab"]),
    # it did not grow into the stop string after all: passed on
    (["ab", "ab#", "ab#x"], ["ab", "#x"]),
])
def test_a_text_stream_passes_on_only_text_that_stays(steps, expected):
    got: list[str] = []
    stream = TextStream(got.append, ("#END",))
    for text in steps:
        stream.update(text)
    final = steps[-1].split("#END")[0]
    assert stream.close(final) == final == "".join(got)
    assert got[:len(expected)] == expected


def test_a_listener_that_fails_is_dropped_and_generation_goes_on():
    def gone(_piece):
        raise BrokenPipeError("client gone")

    stream = TextStream(gone)
    stream.update("abc")
    stream.update("abcd")
    assert stream.close("abcde") == "abcde"


def test_a_streamed_answer_is_mirrored_and_scored_as_a_whole_one_is(serve):
    """The shadow answers a streamed request on the side; a streamed request with a
    reference is scored by the rubric; both are in the window."""
    service, port, _ = serve(Promoted(version="v1", stage="production"),
                             Promoted(version="v2", stage="shadow"))
    for reference in ("ACCEPT", "REJECT"):
        chunks = [json.loads(data) for _, data in
                  events(port, chat(stream=True, reference=reference))[:-1]]
        assert chunks[0]["modelsmith"]["shadow"] == "v2"
    service.settle()
    assert [s["shadow"] for s in service.shadow_log] == ["v2", "v2"]
    assert all(s["answered"] == "".join(PIECES) for s in service.shadow_log)
    window = {(e.data["version"], e.data["stage"]): e.data for e in service.flush()}
    assert window[("v1", "production")]["metrics"]["rubric_score"] == pytest.approx(0.5)
    assert window[("v2", "shadow")]["requests"] == 2


def test_a_json_response_format_needs_a_json_task():
    from modelsmith.serving.openai_api import parse_chat

    for kind in ("json_object", "json_schema"):
        request = parse_chat(chat(response_format={"type": kind, "json_schema": {}}))
        request.check_output("json")  # honoured
        for other in ("label", "text"):
            with pytest.raises(ServeError) as refused:
                request.check_output(other)
            assert refused.value.param == "response_format.type"
            assert kind in refused.value.message and other in refused.value.message
    parse_chat(chat(response_format={"type": "text"})).check_output("label")


def test_a_stream_never_read_still_counts_its_answer(serve):
    service, _, _ = serve()
    stream = service.stream(chat(stream=True))
    del stream  # the caller never read a chunk
    deadline = time.monotonic() + 30
    windows = []
    while not windows and time.monotonic() < deadline:
        service.settle()
        windows = service.flush()
        time.sleep(0.05)
    (window,) = windows
    assert window.data["requests"] == 1 and window.data["metrics"]["error_rate"] == 0.0
