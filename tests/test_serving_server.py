"""``modelsmith serve`` against the real ``openai`` client on 127.0.0.1: chat completions
by specialist name and by the router, the version from the event log's split with the
shadow mirrored and never returned, and clear 4xx errors (malformed JSON, oversized body,
wrong token, unknown model) after which the server keeps serving."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time

import pytest

from modelsmith.artifacts.models import resolve_model
from modelsmith.artifacts.registry import ModelRegistry
from modelsmith.events.gitstore import GitEventStore
from modelsmith.events.projection import fold
from modelsmith.events.types import CandidateRegistered, Event, Lineage, Promoted
from modelsmith.serving.http import make_server
from modelsmith.serving.service import Service
from modelsmith.specs import load_repository
from processes import assert_gone

openai = pytest.importorskip("openai")
TOKEN = "s3cret"


def fleet(root, promotions):
    """Candidates v1 and v2 (the tiny model's weights) and ``promotions`` in the log."""
    repo = load_repository(root)
    tiny = resolve_model("tiny-test", repo.clusters, progress=lambda _m: None).path
    events = []
    for version in ("v1", "v2"):
        shutil.copytree(tiny, root / "models" / "rtb-quality" / version)
        events.append(CandidateRegistered(version=version,
                                          lineage=Lineage(base_model="tiny-test")))
    GitEventStore(root).append("rtb-quality", [Event.new(p, actor="test")
                                               for p in [*events, *promotions]], 0)


def service_of(root, **options):
    """A service wired from the repository's own parts: its specs, its git event log, and
    a registry of the log's candidates (their weights are in the work tree)."""
    repo = load_repository(root)
    store = GitEventStore(root)

    def candidates(specialist):
        state = fold(store).specialists.get(specialist)
        return state.candidates if state else {}

    registry = ModelRegistry(root, repo.clusters, candidates, pull=lambda _path: None)
    return Service(repo, store, registry, **options)


@pytest.fixture
def server(demo_repo, tmp_path, monkeypatch):
    """v1 in production and v2 in shadow."""
    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    fleet(demo_repo, [Promoted(version="v1", stage="production"),
                      Promoted(version="v2", stage="shadow")])
    service = service_of(demo_repo)
    httpd = make_server(service, port=0, token=TOKEN, max_body=4096).start()
    yield service, httpd.server_address[1]
    httpd.stop(grace=0)
    service.close()


def sample(text, name, version, stage, specialist="rtb-quality"):
    """The value of the sample ``name`` for (specialist, version, stage) in the Prometheus
    text ``text`` (parsed by prometheus_client's own parser); ``None`` when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels.get("specialist") == specialist and \
                    s.labels.get("version") == version and s.labels.get("stage") == stage:
                return s.value
    return None


def client(port, token=TOKEN):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=token, max_retries=0)


def raw(port, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body, headers={"Authorization": f"Bearer {TOKEN}",
                                                   **(headers or {})})
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"null")


def test_chat_completions_through_the_openai_client(server):
    service, port = server
    bid = "domain=news.example ctr=0.7% floor=$1.20 format=banner"
    answer = client(port).chat.completions.create(
        model="rtb-quality", messages=[{"role": "user", "content": bid}], user="alice")
    assert answer.model == "rtb-quality" and answer.object == "chat.completion"
    assert isinstance(answer.choices[0].message.content, str)
    assert answer.model_extra["modelsmith"]["version"] == "v1"  # production answers
    assert answer.model_extra["modelsmith"]["bootstrap"] is False
    assert answer.usage.prompt_tokens > 0
    routed = client(port).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": bid}])
    assert routed.model_extra["modelsmith"]["rule"] == "rtb-bids"
    assert [m.id for m in client(port).models.list()] == ["rtb-quality", "auto"]
    # The shadow (v2) answered the same requests on the side; its answers were kept.
    deadline = time.monotonic() + 30
    while len(service.shadow_log) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [s["shadow"] for s in service.shadow_log] == ["v2", "v2"]
    assert all(s["version"] == "v1" for s in service.shadow_log)
    assert len(service._backends) == 2  # one load per version
    # The comparison is recorded with the window: same weights, so the shadow agreed.
    observed = {(e.data["version"], e.data["stage"]): e.data for e in service.flush()}
    assert observed[("v2", "shadow")]["requests"] == 2
    assert observed[("v2", "shadow")]["metrics"]["agreement_rate"] == 1.0
    assert observed[("v1", "production")]["requests"] == 2


def test_bad_requests_get_clear_errors_and_the_server_goes_on(server):
    _, port = server
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client(port).chat.completions.create(model="nope",
                                             messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        client(port, token="wrong").models.list()
    status, body = raw(port, "POST", "/v1/chat/completions", b"{not json",
                       {"Content-Type": "application/json"})
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body = raw(port, "POST", "/v1/chat/completions", b"x" * 5000)
    assert status == 413 and body["error"]["code"] == "body_too_large"
    status, body = raw(port, "POST", "/v1/chat/completions",
                       json.dumps({"model": "rtb-quality", "messages": "hi"}).encode())
    assert status == 400 and "'messages'" in body["error"]["message"]
    status, body = raw(port, "POST", "/v1/route", json.dumps({"input": "an auction bid"})
                       .encode())
    assert status == 200 and body == {"specialist": "rtb-quality", "rule": "rtb-keywords"}
    status, body = raw(port, "GET", "/healthz")
    assert status == 200 and body == {"ok": True}
    answer = client(port).chat.completions.create(
        model="rtb-quality", messages=[{"role": "user", "content": "domain=a ctr=1%"}])
    assert answer.choices[0].message.role == "assistant"


def test_bad_feedback_rolls_production_back_and_the_split_follows(demo_repo, tmp_path,
                                                                  monkeypatch):
    """v2 replaced v1 in production. Its answers get poor feedback over the rollback
    window; the window is recorded as MetricsObserved, reconcile rolls production back to
    v1, and the running server answers with v1 -- no restart."""
    from click.testing import CliRunner

    from modelsmith.cli import cli

    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    fleet(demo_repo, [Promoted(version="v1", stage="production"),
                      Promoted(version="v2", stage="production", previous="v1")])
    spec = demo_repo / "specialists" / "rtb-quality.yaml"
    spec.write_text(spec.read_text().replace("  production: null", "  production: v2"))
    service = service_of(demo_repo)
    httpd = make_server(service, port=0).start()
    port = httpd.server_address[1]
    try:
        ask = json.dumps({"model": "rtb-quality", "messages": [
            {"role": "user", "content": "domain=news.example ctr=0.7%"}]}).encode()
        for _ in range(200):  # the policy's rollback window
            status, answer = raw(port, "POST", "/v1/chat/completions", ask)
            assert status == 200 and answer["modelsmith"]["version"] == "v2"
            status, _ = raw(port, "POST", "/v1/feedback",
                            json.dumps({"id": answer["id"], "score": 0.2}).encode())
            assert status == 200
        status, unknown = raw(port, "POST", "/v1/feedback",
                              json.dumps({"id": "chatcmpl-nope", "score": 1}).encode())
        assert status == 404 and unknown["error"]["code"] == "unknown_response"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        assert sample(text, "modelsmith_requests_total", "v2", "production") == 200
        assert sample(text, "modelsmith_feedback_total", "v2", "production") == 200
        assert sample(text, "modelsmith_feedback_score_mean", "v2", "production") == \
            pytest.approx(0.2)
        assert sample(text, "modelsmith_request_duration_seconds_count", "v2",
                      "production") == 200
        (observed,) = service.flush()
        assert observed.data["requests"] == 200
        assert observed.data["metrics"]["score_mean"] == pytest.approx(0.2)
        result = CliRunner().invoke(cli, ["-C", str(demo_repo), "reconcile"])
        assert result.exit_code == 0, result.output
        assert "RolledBack rtb-quality production: v2 -> v1 (score_mean 0.200 < 0.8" in \
            result.output
        status, answer = raw(port, "POST", "/v1/chat/completions", ask)
        assert status == 200 and answer["modelsmith"]["version"] == "v1"
    finally:
        httpd.stop(grace=0)
        service.close()


BIDS = [("domain=casino-ads.example ctr=2.1% floor=$1.50 format=video", "REJECT"),
        ("domain=news.example ctr=0.7% floor=$1.20 format=banner", "ACCEPT"),
        ("domain=sports.example ctr=0.3% floor=$0.40 format=native", "REJECT"),
        ("domain=weather.example ctr=3.5% floor=$2.00 format=banner", "ACCEPT")]


class Screener:
    """A stand-in model with known answers, so that the live numbers are known: v1 follows
    the screening policy except that it accepts casino-ads; v2 (the shadow) accepts
    everything, in lower case (still a label: the contract is case-blind)."""

    name, model_ref, batch_size = "screener", "screener", 8

    def __init__(self, version):
        self.version = version

    def generate(self, requests, progress=None):
        from modelsmith.inference.base import Generation

        out = []
        for r in requests:
            if self.version == "v2":
                text = " accept"
            elif "ctr=0.3%" in r.prompt:
                text = " REJECT"
            elif "garbled" in r.prompt:
                text = " ???"
            else:
                text = " ACCEPT"
            out.append(Generation(text=text, completion_tokens=1, latency_ms=0.1))
        return out

    def count_tokens(self, text):
        return len(text.split())

    def close(self):
        pass


def test_requests_with_a_reference_are_scored_by_the_eval_rubric(demo_repo, tmp_path,
                                                                  monkeypatch):
    """The live answer and the shadow's are scored with the eval's own scorer against the
    request's reference; every answer is checked against the output contract; and the
    plan's shadow-stage gates read those numbers from the window."""
    from modelsmith.gitops.plan import desired_state, gates_asking

    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    fleet(demo_repo, [Promoted(version="v1", stage="production"),
                      Promoted(version="v2", stage="shadow")])
    service = service_of(demo_repo,
                         backend_factory=lambda _specialist, version: Screener(version))
    httpd = make_server(service, port=0, token=TOKEN).start()
    port = httpd.server_address[1]
    try:
        for i in range(60):
            bid, label = BIDS[i % len(BIDS)]
            if i >= 48:  # the last 12 carry no reference, and 4 of them get no label
                bid = "garbled" if i % 3 == 0 else bid
                extra = {}
            else:
                extra = {"reference": label}
            client(port).chat.completions.create(
                model="rtb-quality", messages=[{"role": "user", "content": bid}],
                user=f"u{i}", extra_body=extra)
        service.settle()
        observed = {(e.data["version"], e.data["stage"]): e.data for e in service.flush()}
        live = observed[("v1", "production")]["metrics"]
        # 48 referenced: v1 is right on news, sports, weather and wrong on casino (12).
        assert live["rubric_score"] == pytest.approx(36 / 48)
        assert live["pass_rate"] == pytest.approx(36 / 48)
        assert live["format_rate"] == pytest.approx(56 / 60)
        shadow = observed[("v2", "shadow")]
        assert shadow["requests"] == 60
        # v2 accepts all: right on the 24 ACCEPT references; agrees with v1 where v1 accepts.
        assert shadow["metrics"]["rubric_score"] == pytest.approx(24 / 48)
        assert shadow["metrics"]["format_rate"] == 1.0
        # The same label is the same answer (" accept" and " ACCEPT"): 36 + 6 of 60 agree.
        assert shadow["metrics"]["agreement_rate"] == pytest.approx(42 / 60)
        # The shadow stage's traffic minimum and format floor now read live evidence.
        state = fold(service.store).specialists["rtb-quality"]
        want = desired_state(service.repo)["rtb-quality"]
        gates = {g.name: g for g in gates_asking("rtb-quality", want, state, "canary", "v2",
                                                 heldout=lambda *_: None,
                                                 approval=lambda *_: None)}
        assert gates["traffic"].passed, gates["traffic"].detail
        assert gates["floors"].passed and gates["floors"].numbers["value"] == 1.0
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        text = response.read().decode()
        assert response.status == 200
        assert response.getheader("Content-Type").startswith("text/plain; version=")
        assert sample(text, "modelsmith_rubric_pass_rate", "v1", "production") == 0.75
        # The window just recorded: its ratios, as gauges.
        assert sample(text, "modelsmith_window_pass_rate", "v1", "production") == 0.75
        assert sample(text, "modelsmith_window_agreement_rate", "v2", "shadow") == \
            pytest.approx(42 / 60)
        assert text.count("# TYPE modelsmith_requests_total counter") == 1
    finally:
        httpd.stop(grace=0)
        service.close()


def test_concurrent_requests_are_batched_and_answer_as_alone(server):
    """16 clients at once: fewer backend calls than requests, each client its own answer,
    the same answer it gets alone."""
    service, port = server
    bids = [f"domain=site{i}.example ctr={i / 5:.1f}% floor=${i % 4}.00" for i in range(16)]

    def one(bid):
        return client(port).chat.completions.create(
            model="rtb-quality", messages=[{"role": "user", "content": bid}],
            user="same").choices[0].message.content

    alone = [one(b) for b in bids]
    batcher = service.batcher("rtb-quality", "v1")
    before = batcher.batches
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(one, bids))
    assert together == alone
    assert batcher.batches - before < 16, batcher.sizes


def test_a_version_that_cannot_load_is_a_503_and_a_missing_device_a_clear_exit(demo_repo,
                                                                               tmp_path,
                                                                               monkeypatch):
    from click.testing import CliRunner

    from modelsmith.cli import cli
    from modelsmith.inference.base import InferenceError

    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    fleet(demo_repo, [Promoted(version="v1", stage="production")])

    def broken(_specialist, version):
        raise InferenceError(f"weights of {version} are gone")

    service = service_of(demo_repo, backend_factory=broken)
    httpd = make_server(service, port=0, token=TOKEN).start()
    try:
        with pytest.raises(openai.InternalServerError, match="weights of v1 are gone"):
            client(httpd.server_address[1]).chat.completions.create(
                model="rtb-quality", messages=[{"role": "user", "content": "a bid"}])
        status, body = raw(httpd.server_address[1], "GET", "/v1/models")
        assert status == 200 and body["data"][0]["id"] == "rtb-quality"
    finally:
        httpd.stop(grace=0)
        service.close()
    import torch

    if not torch.cuda.is_available():
        result = CliRunner().invoke(cli, ["-C", str(demo_repo), "serve", "--device", "cuda",
                                          "--port", "0"])
        assert result.exit_code == 1
        assert "--device cuda: no such device here" in result.output
        assert "Traceback" not in result.output


def test_modelsmith_serve_as_a_process(demo_repo, tmp_path, monkeypatch):
    """The command itself: it binds, asks for the token from the environment, batches,
    records a window on its timer and the last one when interrupted, and exits 0."""
    import os
    import re
    import signal
    import subprocess
    import sys

    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    fleet(demo_repo, [Promoted(version="v1", stage="production")])
    process = subprocess.Popen(
        [sys.executable, "-m", "modelsmith", "-C", str(demo_repo), "serve", "--port", "0",
         "--window", "1", "--max-batch", "4"],
        env={**os.environ, "MODELSMITH_SERVE_TOKEN": TOKEN}, stderr=subprocess.PIPE,
        text=True)
    try:
        line = process.stderr.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/v1", line).group(1))
        with pytest.raises(openai.AuthenticationError):
            client(port, token="wrong").models.list()
        for bid, label in BIDS:
            client(port).chat.completions.create(
                model="auto", messages=[{"role": "user", "content": bid}],
                extra_body={"reference": label})
        time.sleep(1.5)  # a window passes
        client(port).chat.completions.create(
            model="rtb-quality", messages=[{"role": "user", "content": BIDS[0][0]}])
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    assert_gone(process.pid, 10, "modelsmith serve")
    assert process.returncode == 0, err
    assert "Traceback" not in err
    # Its access log (stderr by default): one JSON line per request, no token.
    logged = [json.loads(line) for line in err.splitlines() if line.startswith('{"time"')]
    completions = [line for line in logged if line["path"] == "/v1/chat/completions"]
    assert len(completions) == 5 and all(line["status"] == 200 for line in completions)
    assert {line["specialist"] for line in completions} == {"rtb-quality"}
    assert TOKEN not in err
    windows = [e.data for e in GitEventStore(demo_repo).read("rtb-quality")
               if e.type == "MetricsObserved"]
    assert sum(w["requests"] for w in windows) == 5 and len(windows) >= 2
    assert all(w["version"] == "v1" and w["stage"] == "production" for w in windows)
    assert any("rubric_score" in w["metrics"] for w in windows)


def test_versions_the_split_no_longer_needs_are_unloaded(demo_repo, tmp_path, monkeypatch):
    """Production moves v1 -> v2 -> v3: the fallback (the version before) stays loaded, the
    one before that is closed, and a version that comes back is loaded again."""
    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    fleet(demo_repo, [Promoted(version="v1", stage="production")])
    store = GitEventStore(demo_repo)

    def log(payload):
        store.append("rtb-quality", [Event.new(payload, actor="test")],
                     store.last_seq("rtb-quality"))

    log(CandidateRegistered(version="v3", lineage=Lineage(base_model="tiny-test")))
    made = []

    def screener(_specialist, version):
        made.append(Screener(version))
        made[-1].closed = False
        made[-1].close = lambda m=made[-1]: setattr(m, "closed", True)
        return made[-1]

    service = service_of(demo_repo, backend_factory=screener)

    def ask():
        return service.complete({"model": "rtb-quality",
                                 "messages": [{"role": "user", "content": "a bid"}]})

    def loaded():
        return sorted(v for _, v in service._backends)

    try:
        assert ask()["modelsmith"]["version"] == "v1" and loaded() == ["v1"]
        log(Promoted(version="v2", stage="production", previous="v1"))
        assert ask()["modelsmith"]["version"] == "v2" and loaded() == ["v1", "v2"]
        log(Promoted(version="v3", stage="production", previous="v2"))
        assert ask()["modelsmith"]["version"] == "v3" and loaded() == ["v2", "v3"]
        assert service.retired == [("rtb-quality", "v1")]
        deadline = time.monotonic() + 10
        while not made[0].closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert made[0].closed and not made[1].closed
        log(Promoted(version="v1", stage="shadow"))
        ask()
        service.settle()
        assert loaded() == ["v1", "v2", "v3"] and len(made) == 4  # v1 loaded anew
    finally:
        service.close()


def test_streaming_and_sampling_settings(server):
    """``stream: true`` answers as server-sent chunks the openai client reads; sampling
    settings reach the backend (a seed repeats its answer); settings a specialist cannot
    honour are 400s that name the field."""
    _, port = server
    bid = "domain=news.example ctr=0.7% floor=$1.20 format=banner"
    whole = client(port).chat.completions.create(
        model="rtb-quality", messages=[{"role": "user", "content": bid}])
    parts = list(client(port).chat.completions.create(
        model="rtb-quality", messages=[{"role": "user", "content": bid}], stream=True))
    assert all(p.object == "chat.completion.chunk" for p in parts)
    assert "".join(p.choices[0].delta.content or "" for p in parts) == \
        whole.choices[0].message.content
    assert parts[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert parts[0].model_extra["modelsmith"]["version"] == "v1"
    sampled = [client(port).chat.completions.create(
        model="rtb-quality", messages=[{"role": "user", "content": bid}], temperature=1.5,
        seed=7, max_tokens=12).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]
    assert len(sampled[0]) >= 6, sampled
    cut = sampled[0][4:6]  # stop at text from the middle of that answer
    stopped = client(port).chat.completions.create(
        model="rtb-quality", messages=[{"role": "user", "content": bid}], max_tokens=12,
        temperature=1.5, seed=7, stop=[cut])
    assert stopped.choices[0].message.content == sampled[0][:sampled[0].index(cut)]
    for bad, field in (({"n": 2}, "'n'"), ({"temperature": 5}, "'temperature'"),
                       ({"top_p": 0}, "'top_p'"), ({"seed": "x"}, "'seed'"),
                       ({"stop": ["a", "b", "c", "d", "e"]}, "'stop'"),
                       ({"stream": "yes"}, "'stream'"), ({"max_tokens": True}, "'max_tokens'")):
        status, body = raw(port, "POST", "/v1/chat/completions", json.dumps(
            {"model": "rtb-quality", "messages": [{"role": "user", "content": bid}], **bad})
            .encode())
        assert status == 400 and field in body["error"]["message"], (bad, body)


def test_a_hung_backend_is_a_504_and_the_server_goes_on(demo_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    fleet(demo_repo, [Promoted(version="v1", stage="production")])
    release = threading.Event()

    class Stuck(Screener):
        def generate(self, requests, progress=None):
            release.wait(30)
            return super().generate(requests, progress)

    service = service_of(demo_repo, backend_factory=lambda _s, v: Stuck(v),
                      request_timeout_s=0.5)
    httpd = make_server(service, port=0, token=TOKEN).start()
    port = httpd.server_address[1]
    try:
        ask = json.dumps({"model": "rtb-quality", "messages": [
            {"role": "user", "content": "domain=a.example ctr=1%"}]}).encode()
        status, body = raw(port, "POST", "/v1/chat/completions", ask)
        assert status == 504 and body["error"]["code"] == "timeout"
        assert "no answer within 0.5 s" in body["error"]["message"]
        release.set()
        status, body = raw(port, "POST", "/v1/chat/completions", ask)
        assert status == 200 and body["choices"][0]["message"]["content"] == " ACCEPT"
        (window,) = service.flush()
        assert window.data["requests"] == 2 and window.data["metrics"]["error_rate"] == 0.5
    finally:
        httpd.stop(grace=0)
        service.close()


def test_a_fleet_with_only_a_shadow_bootstraps_on_replayed_requests(demo_repo, tmp_path,
                                                                    monkeypatch):
    """Nothing in production or canary, v1 in shadow, policy ``bootstrap: replay``: a
    request with a reference is answered by the shadow (returned, ``bootstrap: true``),
    counted and scored under v1@shadow -- what the stage gates read -- and takes feedback;
    a request without one is a 503 that says why."""
    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    fleet(demo_repo, [Promoted(version="v1", stage="shadow")])
    service = service_of(demo_repo)
    httpd = make_server(service, port=0, token=TOKEN).start()
    port = httpd.server_address[1]
    try:
        answers = [client(port).chat.completions.create(
            model="rtb-quality", messages=[{"role": "user", "content": bid}],
            extra_body={"reference": label}) for bid, label in BIDS]
        for answer in answers:
            served = answer.model_extra["modelsmith"]
            assert served["version"] == "v1" and served["stage"] == "shadow"
            assert served["bootstrap"] is True and served["shadow"] is None
            assert isinstance(answer.choices[0].message.content, str)
        status, body = raw(port, "POST", "/v1/feedback",
                           json.dumps({"id": answers[0].id, "score": 0.5}).encode())
        assert status == 200 and (body["version"], body["stage"]) == ("v1", "shadow")
        with pytest.raises(openai.InternalServerError) as refused:
            client(port).chat.completions.create(
                model="rtb-quality", messages=[{"role": "user", "content": BIDS[0][0]}])
        assert refused.value.status_code == 503
        assert refused.value.body["code"] == "no_version"
        assert refused.value.body["message"] == (
            "rtb-quality has no version in production or canary; its shadow v1 answers "
            "only replayed requests with a reference while bootstrapping (policy "
            "bootstrap: replay)")
        service.settle()
        (window,) = service.flush()
        assert (window.data["version"], window.data["stage"]) == ("v1", "shadow")
        assert window.data["requests"] == 4 and window.data["bootstrap"] == 4
        metrics = window.data["metrics"]
        assert {"latency_p50_ms", "format_rate", "rubric_score", "pass_rate",
                "score_mean"} <= set(metrics)
        assert metrics["score_mean"] == 0.5 and "agreement_rate" not in metrics
        observed = fold(service.store).specialists["rtb-quality"].metrics["v1@shadow"]
        assert observed["requests"] == 4 and observed["bootstrap"] == 4
        assert observed["last"] == metrics
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        text = conn.getresponse().read().decode()
        assert sample(text, "modelsmith_bootstrap_requests_total", "v1", "shadow") == 4
    finally:
        httpd.stop(grace=0)
        service.close()


@pytest.mark.parametrize("mode", ["off", "approval"])
def test_without_bootstrap_replay_a_lone_shadow_answers_nothing(demo_repo, tmp_path,
                                                                 monkeypatch, mode):
    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    policy = demo_repo / "policies" / "promotion.yaml"
    policy.write_text(policy.read_text().replace("bootstrap: replay", f"bootstrap: {mode}"))
    fleet(demo_repo, [Promoted(version="v1", stage="shadow")])
    service = service_of(demo_repo,
                         backend_factory=lambda _specialist, version: Screener(version))
    httpd = make_server(service, port=0, token=TOKEN).start()
    try:
        status, body = raw(httpd.server_address[1], "POST", "/v1/chat/completions",
                           json.dumps({"model": "rtb-quality", "reference": "ACCEPT",
                                       "messages": [{"role": "user", "content": BIDS[1][0]}]})
                           .encode())
        assert status == 503 and body["error"]["code"] == "no_version"
        assert "its shadow v1 " in body["error"]["message"]
        assert f"(policy bootstrap: {mode})" in body["error"]["message"]
        assert service.flush() == [] and not service._backends  # nothing ran, nothing counted
    finally:
        httpd.stop(grace=0)
        service.close()


def test_replayed_requests_give_a_lone_shadow_the_traffic_its_stage_gates_need(
        demo_repo, tmp_path, monkeypatch):
    """The policy's shadow stage wants 50 observed requests and a format floor before
    canary: 50 replayed requests with references give v1 exactly that evidence."""
    from modelsmith.gitops.plan import desired_state, gates_asking

    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    fleet(demo_repo, [Promoted(version="v1", stage="shadow")])
    service = service_of(demo_repo,
                         backend_factory=lambda _specialist, version: Screener(version))
    try:
        for i in range(50):
            bid, label = BIDS[i % len(BIDS)]
            answer = service.complete({"model": "rtb-quality", "reference": label,
                                       "messages": [{"role": "user", "content": bid}]})
            assert answer["modelsmith"]["bootstrap"] is True
        service.settle()
        service.flush()
        state = fold(service.store).specialists["rtb-quality"]
        assert state.metrics["v1@shadow"]["requests"] == 50
        assert state.metrics["v1@shadow"]["bootstrap"] == 50
        # v1 (the screener) misses casino-ads: every fourth reference, 13 of the 50.
        assert state.metrics["v1@shadow"]["last"]["rubric_score"] == pytest.approx(37 / 50)
        want = desired_state(service.repo)["rtb-quality"]
        gates = {g.name: g for g in gates_asking("rtb-quality", want, state, "canary", "v1",
                                                 heldout=lambda *_: None,
                                                 approval=lambda *_: None)}
        assert gates["traffic"].passed, gates["traffic"].detail
        assert gates["floors"].passed, gates["floors"].detail
    finally:
        service.close()


class Streaming:
    """A stand-in service with ``stream`` (the interface of ``Service.stream``): a bad
    request raises from the call itself; the chunks come one at a time, 0.1 s apart, for
    ``max_tokens`` pieces; ``"fail"`` in the message fails after the first chunk."""

    def __init__(self):
        from modelsmith.serving.metrics import LiveMetrics

        self.metrics = LiveMetrics()
        self.closed = threading.Event()
        self.pieces = 0

    def stream(self, body):
        from modelsmith.serving.service import ServeError

        if body.get("model") != "rtb-quality":
            raise ServeError(404, f"the model '{body.get('model')}' does not exist",
                             code="model_not_found")
        text = body["messages"][-1]["content"]
        count = body.get("max_tokens", 3)

        def chunks():
            head = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 0,
                    "model": "rtb-quality"}
            try:
                yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                  "content": ""},
                                            "finish_reason": None}],
                       "modelsmith": {"version": "v1", "stage": "production"}}
                for i in range(count):
                    if "fail" in text:
                        yield {"error": {"message": "the backend failed", "type":
                                         "server_error", "code": None}}
                        return
                    time.sleep(0.1)
                    self.pieces += 1
                    yield {**head, "choices": [{"index": 0, "delta": {"content": f"t{i} "},
                                                "finish_reason": None}]}
                yield {**head, "choices": [{"index": 0, "delta": {},
                                            "finish_reason": "stop"}]}
            finally:
                self.closed.set()
        return chunks()


def test_streams_from_service_stream_and_a_client_gone_mid_stream_stops_it(capfd):
    service = Streaming()
    httpd = make_server(service, port=0).start()
    port = httpd.port
    ask = {"model": "rtb-quality", "messages": [{"role": "user", "content": "a bid"}]}
    try:
        parts = list(client(port).chat.completions.create(**ask, stream=True))
        assert "".join(p.choices[0].delta.content or "" for p in parts) == "t0 t1 t2 "
        assert parts[-1].choices[0].finish_reason == "stop"
        assert parts[0].model_extra["modelsmith"]["version"] == "v1"
        service.closed.clear()
        # A bad request is a 4xx before the first event.
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client(port).chat.completions.create(model="nope", messages=ask["messages"],
                                                 stream=True)
        # An error after the first event ends the stream with an error event.
        with pytest.raises(openai.APIError, match="the backend failed"):
            list(client(port).chat.completions.create(
                model="rtb-quality", messages=[{"role": "user", "content": "fail"}],
                stream=True))
        # The raw events: data lines, then [DONE].
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/chat/completions", body=json.dumps({**ask, "stream": True}))
        response = conn.getresponse()
        assert response.getheader("Content-Type").startswith("text/event-stream")
        events = response.read().decode().split("\n\n")
        assert events[-2:] == ["data: [DONE]", ""] and all(
            e.startswith("data: {") for e in events[:-2])
        conn.close()
        # A client that goes away after the first pieces: the stream stops, quietly.
        capfd.readouterr()
        service.closed.clear()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/chat/completions",
                     body=json.dumps({**ask, "stream": True, "max_tokens": 200}))
        response = conn.getresponse()
        response.fp.readline()
        conn.sock.close()
        response.close()
        assert service.closed.wait(30), "the stream went on after its client left"
        assert service.pieces < 100
        err = capfd.readouterr().err
        assert "Traceback" not in err and "Error" not in err, err
    finally:
        httpd.stop(grace=1)
