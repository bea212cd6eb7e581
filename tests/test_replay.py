"""``modelsmith replay``: request files checked line by line before anything is sent, then
sent through a real ``serve`` on 127.0.0.1 (the tiny model, or a stand-in with known
answers), paced, with feedback, and summarised -- also when the server goes away."""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import struct
import threading
import time

import pytest
from click.testing import CliRunner

from modelsmith.artifacts.models import resolve_model
from modelsmith.artifacts.registry import ModelRegistry
from modelsmith.cli import cli
from modelsmith.events.gitstore import GitEventStore
from modelsmith.events.projection import fold
from modelsmith.events.types import CandidateRegistered, Event, Lineage, Promoted
from modelsmith.inference.base import Generation
from modelsmith.serving import replay as rp
from modelsmith.serving.http import make_server
from modelsmith.serving.service import Service
from modelsmith.specs import load_repository

TOKEN = "s3cret"
BID = "domain=news.example ctr=0.7% floor=$1.20 format=banner"


def line(**body):
    return json.dumps({"model": "rtb-quality",
                       "messages": [{"role": "user", "content": BID}], **body})


def parse(text, **options):
    data = text.encode() if isinstance(text, str) else text
    return rp.read_requests(io.BytesIO(data), "traffic.jsonl", **options)


# -- reading and checking, no server ------------------------------------------------------


def test_every_bad_line_is_named_by_its_number_and_field():
    lines = [
        line(user="a"),                                                    # 1 ok
        "{not json",                                                       # 2
        "[1, 2]",                                                          # 3
        json.dumps({"model": "rtb-quality"}),                              # 4
        line(messages=[]),                                                 # 5
        line(messages=[{"content": "hi"}]),                                # 6
        line(messages=[{"role": "user", "content": 7}]),                   # 7
        line(messages=[{"role": "system", "content": "be brief"}]),        # 8
        line(feedback=1.5),                                                # 9
        line(feedback="great"),                                            # 10
        line(feedback=True),                                               # 11
        json.dumps({"messages": [{"role": "user", "content": "x"}]}),      # 12
        line(metadata={"k": 1}),                                           # 13
        line(stream=True),                                                 # 14
        "",                                                                # 15 blank: skipped
        line(feedback=0.5, reference="ACCEPT", temperature=0.2),           # 16 ok
        '{"model": "rtb-quality", "messages": NaN}',                       # 17
        line(messages=["hi"]),                                             # 18
        "[" * 100_000 + "]" * 100_000,                                     # 19
    ]
    data = "\n".join(lines).encode() + b"\n\xff\xfe{}\n"                  # 20 not UTF-8
    requests, issues = parse(data)
    found = {(i.line, i.field) for i in issues}
    assert found == {(2, None), (3, None), (4, "messages"), (5, "messages"),
                     (6, "messages[0].role"), (7, "messages[0].content"), (8, "messages"),
                     (9, "feedback"), (10, "feedback"), (11, "feedback"), (12, "model"),
                     (13, "metadata"), (14, "stream"), (17, None), (18, "messages[0]"),
                     (19, None), (20, None)}
    shown = [str(i) for i in issues]
    assert "traffic.jsonl:2: not JSON: Expecting property name enclosed in double quotes " \
           "(column 2)" in shown
    assert "traffic.jsonl:3: must be a JSON object (a chat completion request), not a " \
           "list" in shown
    assert "traffic.jsonl:9: feedback: must be a number from 0 to 1, not 1.5" in shown
    assert "traffic.jsonl:8: messages: has no user message (role: user)" in shown
    assert [r.line for r in requests] == [1, 16]
    # The recorded rating is kept apart, never sent as a chat field; the rest passes through.
    assert requests[1].feedback == 0.5 and "feedback" not in requests[1].body
    assert requests[1].body["temperature"] == 0.2 and requests[1].reference == "ACCEPT"


def test_an_empty_file_and_a_huge_line():
    for empty in ("", "\n\n  \n"):
        requests, issues = parse(empty)
        assert requests == [] and [str(i) for i in issues] == \
            ["traffic.jsonl: no requests: the file is empty"]
    # A line over the server's body limit is refused by number, never read in whole.
    huge = line(messages=[{"role": "user", "content": "x" * (3 * rp.MAX_LINE)}])
    requests, issues = parse("\n".join([line(), huge, line()]) + "\n")
    assert [r.line for r in requests] == [1, 3]
    (issue,) = issues
    assert issue.line == 2 and f"the line has {len(huge)} bytes" in issue.message
    assert "HTTP 413" in issue.message
    _, issues = parse(line() + "\n" + "y" * 500, max_line=100)  # no final newline either
    assert [(i.line, i.message) for i in issues] == [
        (1, f"the line has {len(line())} bytes; the server refuses bodies over 100 bytes "
            "(HTTP 413)"),
        (2, "the line has 500 bytes; the server refuses bodies over 100 bytes (HTTP 413)")]


def test_models_are_checked_against_what_the_server_serves():
    requests, issues = parse("\n".join([line(), line(model="auto"), line(model="nope")]))
    assert issues == []
    found = rp.check_models(requests, ["rtb-quality", "auto"], "http://h")
    assert [str(i) for i in found] == [
        "traffic.jsonl:3: model: 'nope' is not served at http://h (it serves rtb-quality, "
        "auto)"]
    # --model replaces every line's model (a line may then leave it out).
    requests, issues = parse(json.dumps({"messages": [{"role": "user", "content": "x"}]}),
                             model="auto")
    assert issues == [] and requests[0].body["model"] == "auto"
    assert [str(i) for i in rp.check_models(requests, ["auto"], "u", override="x")] == \
        ["--model: 'x' is not served at u (it serves auto)"]


def test_options_are_checked():
    assert rp.feedback_mode("Reference") == "reference"
    assert rp.feedback_mode("0.25") == 0.25 and rp.feedback_mode(1) == 1.0
    for bad in ("2", "nan", "yes", True, -0.1):
        with pytest.raises(rp.ReplayInputError, match="--feedback"):
            rp.feedback_mode(bad)
    with pytest.raises(rp.ReplayInputError) as caught:
        rp.check_options(0, -1.0, "often")
    assert [i.source for i in caught.value.issues] == ["--concurrency", "--rate", "--feedback"]
    assert caught.value.exit_code == 2
    for url in ("127.0.0.1:8000", "ftp://host/", "http://", "http://h:notaport"):
        with pytest.raises(rp.ReplayInputError, match="--url"):
            rp.Client(url)
    client = rp.Client("http://127.0.0.1:8000/v1/")
    assert client.url == "http://127.0.0.1:8000" and client.prefix == ""
    assert rp.Client("https://gw.example/team/v1").prefix == "/team"


def test_a_suite_becomes_requests_with_references(demo_files):
    repo = load_repository(demo_files)
    core = rp.suite_requests(repo, "rtb-quality")
    suite = repo.suites["rtb-quality"]
    assert len(core) == len(suite.core)
    first = suite.core[0]
    assert core[0].body == {"model": "rtb-quality",
                            "messages": [{"role": "user", "content": first.input}],
                            "user": f"replay-{first.id}", "reference": first.expected}
    assert rp.check_body(core[0].body) == []
    every = rp.suite_requests(repo, "rtb-quality", "all", model="auto")
    assert len(every) == len(suite.core) + len(suite.dev) + len(suite.heldout)
    assert {r.body["model"] for r in every} == {"auto"}
    assert len(rp.suite_requests(repo, "rtb-quality", "heldout")) == len(suite.heldout)
    with pytest.raises(rp.ReplayInputError, match="no specialist 'nope'"):
        rp.suite_requests(repo, "nope")


def test_agreement_with_a_reference(demo_files):
    check = rp.ReferenceCheck(load_repository(demo_files))
    # A label task compares labels as its contract reads them.
    assert check("rtb-quality", " accept.", "ACCEPT") == 1.0
    assert check("rtb-quality", " REJECT", "ACCEPT") == 0.0
    assert check("rtb-quality", "", "ACCEPT") == 0.0
    # Without the specs: text up to case and whitespace; JSON by value.
    text = rp.ReferenceCheck()
    assert text("other", "  Hello   World ", "hello world") == 1.0
    assert text("other", "hello", "hello world") == 0.0
    assert text("other", '{"b": 2, "a": 1}', {"a": 1, "b": 2}) == 1.0
    assert text("other", "3", 3) == 1.0 and text("other", "three", 3) == 0.0


# -- against a real server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """One cache for the module: the tiny model is built once."""
    return tmp_path_factory.mktemp("cache")


class Screener:
    """A stand-in with known answers: ACCEPT unless the bid's ctr is 0.3%."""

    name, model_ref, batch_size = "screener", "screener", 8

    def __init__(self, version):
        self.version = version

    def generate(self, requests, progress=None):
        return [Generation(text=" REJECT" if "ctr=0.3%" in r.prompt else " ACCEPT",
                           completion_tokens=1, latency_ms=0.1) for r in requests]

    def count_tokens(self, text):
        return len(text.split())

    def close(self):
        pass


class Served:
    def __init__(self, service, httpd):
        self.service, self.httpd = service, httpd
        self.url = f"http://127.0.0.1:{httpd.server_address[1]}"

    def stop(self):
        self.httpd.stop(grace=0)

    def completions(self):
        """Chat answers given so far (read under the metrics' lock: the server is busy)."""
        text = self.service.metrics.prometheus()
        return sum(int(float(row.rsplit(" ", 1)[1])) for row in text.splitlines()
                   if row.startswith("modelsmith_requests_total{"))


@pytest.fixture
def serve(demo_repo, model_cache, monkeypatch):
    """``serve(promotions, ...)``: the candidates v1 and v2 and ``promotions`` in the log,
    and ``modelsmith serve``'s HTTP server on a free port of 127.0.0.1 (the tiny model's
    weights, or the :class:`Screener` with ``screener=True``)."""
    monkeypatch.setenv("MODELSMITH_CACHE", str(model_cache))
    started = []

    def start(promotions, *, token=None, screener=False):
        repo = load_repository(demo_repo)
        if not screener:
            tiny = resolve_model("tiny-test", repo.clusters, progress=lambda _m: None).path
        events = []
        for version in ("v1", "v2"):
            if not screener:
                shutil.copytree(tiny, demo_repo / "models" / "rtb-quality" / version)
            events.append(CandidateRegistered(version=version,
                                              lineage=Lineage(base_model="tiny-test")))
        store = GitEventStore(demo_repo)
        store.append("rtb-quality", [Event.new(p, actor="test")
                                     for p in [*events, *promotions]], 0)

        def candidates(specialist):
            state = fold(store).specialists.get(specialist)
            return state.candidates if state else {}

        registry = ModelRegistry(demo_repo, repo.clusters, candidates, pull=lambda _p: None)
        service = Service(repo, store, registry, backend_factory=(
            (lambda _s, version: Screener(version)) if screener else None))
        if not screener:
            # Loaded one after the other: two transformers loads at once in one process
            # leave it unable to load any model (meta tensors), whatever serves them.
            for version in sorted({p.version for p in promotions}):
                service.batcher("rtb-quality", version)
        httpd = make_server(service, port=0, token=token).start()
        started.append(Served(service, httpd))
        return started[-1]

    yield start
    for served in started:
        served.stop()
        served.service.close()


def replay_cli(repo, *args, stdin=None, env=None):
    return CliRunner(env={"COLUMNS": "200", **(env or {})}).invoke(
        cli, ["-C", str(repo), "replay", *args], input=stdin)


def test_bad_lines_are_all_reported_and_nothing_is_sent(serve, demo_repo, tmp_path):
    served = serve([Promoted(version="v1", stage="production")], screener=True)
    traffic = tmp_path / "traffic.jsonl"
    huge = line(messages=[{"role": "user", "content": "x" * rp.MAX_LINE}])
    traffic.write_text("\n".join([line(), line(model="rtb-qualty"), "{oops", line(),
                                  line(feedback=7), line(model="auto", messages=[]),
                                  "[]", huge]) + "\n")
    result = replay_cli(demo_repo, str(traffic), "--url", served.url)
    assert result.exit_code == 2, result.output
    err = result.stderr
    assert f"{traffic}:2: model: 'rtb-qualty' is not served at {served.url} (it serves " \
           "rtb-quality, auto)" in err
    assert f"{traffic}:3: not JSON" in err
    assert f"{traffic}:5: feedback: must be a number from 0 to 1, not 7" in err
    assert f"{traffic}:6: messages: must be a non-empty list" in err
    assert f"{traffic}:7: must be a JSON object" in err
    assert f"{traffic}:8: the line has {len(huge)} bytes" in err
    assert "6 problems; nothing was sent" in err
    assert "Traceback" not in result.output
    assert served.completions() == 0  # the server saw no chat request
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = replay_cli(demo_repo, str(empty), "--url", served.url)
    assert result.exit_code == 2 and f"{empty}: no requests: the file is empty" in \
        result.stderr
    # A missing file, a file and a suite, nothing at all: clear, exit 2.
    result = replay_cli(demo_repo, str(tmp_path / "none.jsonl"), "--url", served.url)
    assert result.exit_code == 2 and "none.jsonl: cannot read it: No such file" in \
        result.stderr
    assert replay_cli(demo_repo, str(traffic), "--suite", "rtb-quality").exit_code == 2
    assert replay_cli(demo_repo, "--url", served.url).exit_code == 2
    # A server that is not there, and one that wants a token.
    nobody = f"http://127.0.0.1:{free_port()}"
    result = replay_cli(demo_repo, "--suite", "rtb-quality", "--url", nobody)
    assert result.exit_code == 1 and f"cannot reach {nobody}" in result.stderr
    assert served.completions() == 0


def test_a_suite_through_production_and_canary_with_feedback_for_the_canary(serve,
                                                                            demo_repo):
    """v1 in production, v2 in a 50% canary: each scenario's stable user key lands on one
    side; the feedback goes to the canary's answers only and reaches the server's metrics."""
    served = serve([Promoted(version="v1", stage="production"),
                    Promoted(version="v2", stage="canary", traffic=0.5)], token=TOKEN)
    result = replay_cli(demo_repo, "--suite", "rtb-quality", "--limit", "24", "--url",
                        served.url + "/v1", "--feedback", "0.25", "--feedback-stage",
                        "canary", "--concurrency", "3", "--json",
                        env={"MODELSMITH_SERVE_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["requests"] == summary["sent"] == summary["ok"] == 24
    assert summary["not_sent"] == 0 and summary["errors"] == [] and summary["stopped"] is None
    served_by = {(r["version"], r["stage"]): r["requests"] for r in summary["served"]}
    assert set(served_by) == {("v1", "production"), ("v2", "canary")}
    assert sum(served_by.values()) == 24
    canary = served_by[("v2", "canary")]
    assert summary["feedback"] == {"mode": 0.25, "stage": "canary", "sent": canary,
                                   "failed": 0, "mean": 0.25, "error": None}
    lat = summary["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert summary["requests_per_s"] > 0
    totals = served.service.metrics.totals
    assert totals[("rtb-quality", "v2", "canary")]["feedback"] == canary
    assert totals[("rtb-quality", "v1", "production")]["feedback"] == 0
    assert totals[("rtb-quality", "v1", "production")]["requests"] == \
        served_by[("v1", "production")]
    text = rp.Client(served.url, token=TOKEN).call("GET", "/metrics")
    assert text[0] == 200  # Prometheus text is not JSON; the totals above are its numbers
    # The same scenarios again land on the same sides (stable keys), as a table.
    result = replay_cli(demo_repo, "--suite", "rtb-quality", "--limit", "24", "--url",
                        served.url, env={"MODELSMITH_SERVE_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    assert re.search(rf"rtb-quality\W+v2\W+canary\W+{canary}\b", result.stdout), result.stdout
    assert "replayed 24 of 24 requests" in result.stdout
    # No token: refused before anything is sent.
    result = replay_cli(demo_repo, "--suite", "rtb-quality", "--url", served.url,
                        env={"MODELSMITH_SERVE_TOKEN": ""})
    assert result.exit_code == 1 and "wants a bearer token (401" in result.stderr


def test_reference_feedback_and_recorded_ratings_from_stdin(serve, demo_repo):
    """The Screener's answers are known: 3 of the 4 referenced lines agree with their
    reference; the line without a reference sends its recorded rating."""
    served = serve([Promoted(version="v1", stage="production")], screener=True)
    bids = [("ctr=0.7%", "ACCEPT"), ("ctr=0.3%", "REJECT"), ("ctr=2.0%", "REJECT"),
            ("ctr=0.9%", "accept")]
    lines = [json.dumps({"model": "auto", "user": f"u{i}", "reference": ref,
                         "messages": [{"role": "user", "content": f"domain=a.example {b}"}]})
             for i, (b, ref) in enumerate(bids)]
    lines.append(line(feedback=0.5))
    result = replay_cli(demo_repo, "-", "--url", served.url, "--feedback", "reference",
                        "--json", stdin="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] == 5
    assert summary["feedback"]["sent"] == 5
    assert summary["feedback"]["mean"] == pytest.approx((1 + 1 + 0 + 1 + 0.5) / 5)
    totals = served.service.metrics.totals[("rtb-quality", "v1", "production")]
    assert totals["feedback"] == 5 and totals["score_sum"] == pytest.approx(3.5)
    served.service.settle()  # the server's own rubric agrees with the agreement sent
    assert totals["passed"] == 3 and totals["scored"] == 4
    # --feedback none sends none, whatever the lines recorded.
    result = replay_cli(demo_repo, "-", "--url", served.url, "--feedback", "none",
                        "--json", stdin=lines[-1] + "\n")
    assert json.loads(result.stdout)["feedback"]["sent"] == 0


def test_the_rate_is_a_ceiling(serve, demo_repo):
    served = serve([Promoted(version="v1", stage="production")], screener=True)
    result = replay_cli(demo_repo, "--suite", "rtb-quality", "--limit", "10", "--rate", "20",
                        "--concurrency", "4", "--url", served.url, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] == 10 and summary["rate"] == 20
    # 10 sends 1/20 s apart span at least 0.45 s, however loaded the machine is.
    assert summary["duration_s"] >= 0.44
    assert summary["requests_per_s"] <= 22.5


def test_no_version_is_an_error_shown_once(serve, demo_repo):
    served = serve([], screener=True)  # candidates, but nothing promoted
    result = replay_cli(demo_repo, "--suite", "rtb-quality", "--limit", "6", "--url",
                        served.url)
    assert result.exit_code == 1, result.output
    assert "ok 0, failed 6, not sent 0" in result.stdout
    (row,) = [r for r in result.stdout.splitlines() if "no_version" in r]
    assert "503 no_version" in row and " 6 " in row
    message = row.split(" 6 ", 1)[1].strip()
    assert message and result.stdout.count(message) == 1
    result = replay_cli(demo_repo, "--suite", "rtb-quality", "--limit", "6", "--url",
                        served.url, "--json")
    (error,) = json.loads(result.stdout)["errors"]
    assert error["kind"] == "http" and error["status"] == 503
    assert error["code"] == "no_version" and error["count"] == 6


def test_the_server_going_away_ends_the_run_with_a_summary(serve, demo_repo):
    """The real tiny model answers; after a few answers the server stops listening. The
    replay stops sending, prints its summary with what was not sent, and exits 1."""
    served = serve([Promoted(version="v1", stage="production")])

    def kill_after_three():
        deadline = time.monotonic() + 60
        while served.completions() < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        served.stop()

    killer = threading.Thread(target=kill_after_three, daemon=True)
    killer.start()
    result = replay_cli(demo_repo, "--suite", "rtb-quality", "--split", "all", "--rate",
                        "20", "--concurrency", "2", "--url", served.url, "--json")
    killer.join(10)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] >= 3 and summary["not_sent"] > 0
    assert summary["sent"] + summary["not_sent"] == summary["requests"] == 520
    assert summary["stopped"].startswith("the server went away (")
    assert any(e["kind"] == "connection" for e in summary["errors"])
    assert summary["served"][0]["version"] == "v1"


def read_request(conn):
    """A whole HTTP request from ``conn`` (headers and body): closing a socket with unread
    bytes would reset the connection before the answer is read."""
    data = b""
    while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"content-length: *(\d+)", head, flags=re.I)
    while length and len(body) < int(length.group(1)) and (chunk := conn.recv(65536)):
        body += chunk
    return head


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_connection_reset_mid_answer_stops_the_run():
    """A server that lists its models, then resets the connection of the second chat
    request: the replay counts it as a connection error and stops."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    models = json.dumps({"data": [{"id": "rtb-quality"}, {"id": "auto"}]}).encode()
    answer = json.dumps({"id": "c1", "model": "rtb-quality",
                         "choices": [{"message": {"content": " ACCEPT"}}],
                         "modelsmith": {"version": "v1", "stage": "production"}}).encode()

    def respond():
        chats = 0
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            head = read_request(conn)
            if head.startswith(b"POST"):
                chats += 1
                if chats == 2:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
                    conn.close()  # RST
                    continue
            body = models if head.startswith(b"GET") else answer
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            conn.close()

    threading.Thread(target=respond, daemon=True).start()
    try:
        requests, _ = parse("\n".join([line()] * 10))
        summary = rp.replay(requests, rp.Client(f"http://127.0.0.1:{port}", timeout_s=10),
                            concurrency=1, feedback="none")
    finally:
        listener.close()
    assert summary.ok == 1 and summary.sent == 2 and summary.not_sent == 8
    assert summary.stopped.startswith("the server went away (")
    assert [e["kind"] for e in summary.to_dict()["errors"]] == ["connection"]
    assert not summary.clean
