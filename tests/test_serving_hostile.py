"""``modelsmith serve`` against hostile clients, over real sockets on 127.0.0.1: lying and
missing ``Content-Length`` (1 GB with no body), slow and stalled clients (a byte at a time,
in the headers or the body), hundreds of idle connections, bursts of concurrent clients
(``/healthz`` answering meanwhile), replayed feedback, pathological JSON, invalid UTF-8,
odd methods and auth headers, clients that hang up mid-answer; keep-alive and the access
log; and SIGINT/SIGTERM on the command (idle, loading, mid-batch, under load: every answer
under way delivered, the last window recorded, no process left). Every refusal is an
OpenAI-style JSON error, and the server keeps serving."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from modelsmith.events.gitstore import GitEventStore
from modelsmith.events.projection import fold
from modelsmith.events.types import CandidateRegistered, Event, Lineage, Promoted
from modelsmith.inference.base import Generation
from modelsmith.serving.http import make_server
from modelsmith.serving.service import Service
from modelsmith.specs import load_repository
from processes import assert_gone

TOKEN = "s3cret-token"
BID = "domain=news.example ctr=0.7% floor=$1.20 format=banner"


class Screener:
    """A stand-in model: ACCEPT, after half a second for a bid that says ``slow``."""

    name, model_ref, batch_size = "screener", "screener", 8

    def generate(self, requests, progress=None):
        if any("slow" in r.prompt for r in requests):
            time.sleep(0.5)
        return [Generation(text=" ACCEPT", completion_tokens=1, latency_ms=0.1)
                for _ in requests]

    def count_tokens(self, text):
        return len(text.split())

    def close(self):
        pass


def production_v1(root: Path) -> None:
    GitEventStore(root).append("rtb-quality", [
        Event.new(p, actor="test") for p in (
            CandidateRegistered(version="v1", lineage=Lineage(base_model="tiny-test")),
            Promoted(version="v1", stage="production"))], 0)



def screening_service(root):
    """A Service on the fork at ``root`` whose every version is a :class:`Screener`."""
    from modelsmith.artifacts.registry import ModelRegistry

    repo = load_repository(root)
    store = GitEventStore(root)
    registry = ModelRegistry(root, repo.clusters,
                             lambda s: fold(store).specialists[s].candidates,
                             pull=lambda _path: None)
    return Service(repo, store, registry,
                   backend_factory=lambda _specialist, _version: Screener())


@pytest.fixture
def serve(demo_repo):
    """``serve(**limits)``: v1 in production (the :class:`Screener`), served on a free port
    of 127.0.0.1 with ``make_server``'s ``limits``; stopped afterwards."""
    production_v1(demo_repo)
    started = []

    def start(**limits):
        service = screening_service(demo_repo)
        httpd = make_server(service, port=0, **limits).start()
        started.append(httpd)
        return httpd, httpd.server_address[1]

    yield start
    for httpd in started:
        httpd.stop(grace=0)
        httpd.service.close(timeout=5)


def read_answer(sock: socket.socket):
    """Status, headers (lower-case names) and JSON body of the answer on ``sock``."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/"), data[:200]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


def exchange(port: int, data: bytes, *, timeout: float = 20.0):
    """Send raw bytes as a request; the answer (see :func:`read_answer`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # refused before it was all read
            sock.sendall(data)
        return read_answer(sock)


def post(path: str, body: bytes, *, headers: str = "", length: str | None = None) -> bytes:
    """A raw POST with ``body`` (``length``: the Content-Length to claim; default its
    real one)."""
    length = str(len(body)) if length is None else length
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{headers}\r\n").encode() + body


def ask(port: int, method: str, path: str, body=None, *, token: str | None = None,
        headers=None):
    """A request through ``http.client``: status, headers and JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    try:
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        raw = response.read()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                json.loads(raw) if raw else None)
    finally:
        conn.close()


def chat(content: str = BID, **extra) -> dict:
    return {"model": "rtb-quality", "messages": [{"role": "user", "content": content}],
            **extra}


def wait_for(condition, what: str, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def assert_error(answer, status: int, code: str, *, names: str | None = None) -> None:
    got, headers, body = answer
    assert got == status, body
    assert headers["content-type"] == "application/json"
    assert body["error"]["code"] == code, body
    if names is not None:
        assert names in body["error"]["message"], body


# -- the body's length ------------------------------------------------------------------------


def test_a_lying_content_length_is_refused_before_the_body_is_read(serve):
    _, port = serve(max_body=4096)
    path, body = "/v1/chat/completions", json.dumps(chat()).encode()
    for claimed in ("-1", "-0", "+5", "1e3", "0x10", "12abc", "", "1, 1",
                    "99999999999999999999999"):
        assert_error(exchange(port, post(path, body + b"x" * 1000, length=claimed)), 400,
                     "invalid_content_length", names="Content-Length")
    # Far over the limit: refused at once, without waiting for 200 MiB that never come.
    assert_error(exchange(port, post(path, b"", length=str(200 << 20))), 413,
                 "body_too_large", names="limit is 4096")
    assert_error(exchange(port, post(path, body, headers="Content-Length: 5\r\n")), 400,
                 "invalid_content_length", names="conflicting")
    chunked = (f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               f"{len(body):x}\r\n").encode() + body + b"\r\n0\r\n\r\n"
    assert_error(exchange(port, chunked), 411, "length_required")
    assert_error(exchange(port, post(path, body, headers="Transfer-Encoding: chunked\r\n")),
                 400, "invalid_content_length", names="both")
    no_length = f"POST {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() + body
    assert_error(exchange(port, no_length), 411, "length_required")
    # A body shorter than it said, then the client stops sending.
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(post(path, body[:10], length="100"))
        sock.shutdown(socket.SHUT_WR)
        assert_error(read_answer(sock), 400, "incomplete_body", names="10 of its 100")
    # Within the limit it is served as ever.
    status, _, answer = exchange(port, post(path, body))
    assert status == 200 and answer["object"] == "chat.completion"


# -- slow, stalled and idle clients -----------------------------------------------------------


def test_slow_and_stalled_clients_run_out_of_time(serve):
    httpd, port = serve(read_timeout=1.5)
    path, body = "/v1/chat/completions", json.dumps(chat()).encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as silent:
        assert_error(read_answer(silent), 408, "request_timeout")
    with socket.create_connection(("127.0.0.1", port), timeout=20) as partial:
        partial.sendall(post(path, body)[:-10])  # the body's last 10 bytes never come
        assert_error(read_answer(partial), 408, "request_timeout")
    # A byte every 0.2 s: each arrives well within any per-read timeout, yet the request
    # as a whole is cut off once its time is up -- before the client has sent it all.
    request = post(path, body)
    assert trickle(port, request, 0.2) < len(request)
    assert time.monotonic() - started < 60
    wait_for(lambda: httpd.connections == 0, "the timed-out connections were not closed")
    assert ask(port, "GET", "/healthz")[0] == 200


def test_healthz_answers_while_500_idle_connections_are_open(serve):
    httpd, port = serve(read_timeout=120)
    idle = []
    try:
        for _ in range(500):
            sock = socket.create_connection(("127.0.0.1", port), timeout=20)
            sock.sendall(post("/v1/chat/completions", b'{"model": ', length="1000"))
            idle.append(sock)
        wait_for(lambda: httpd.connections >= 500, "the idle connections never arrived")
        status, _, body = ask(port, "GET", "/healthz")
        assert status == 200 and body == {"ok": True}
        status, _, answer = ask(port, "POST", "/v1/chat/completions", chat())
        assert status == 200 and answer["choices"][0]["message"]["content"] == " ACCEPT"
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: httpd.connections == 0, "closed connections kept their threads")


def test_connections_past_the_bound_get_a_quick_503(serve):
    httpd, port = serve(max_connections=4, read_timeout=120)
    held = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(4)]
    try:
        for sock in held:
            sock.sendall(b"GET /heal")
        wait_for(lambda: httpd.connections == 4, "the held connections never arrived")
        with socket.create_connection(("127.0.0.1", port), timeout=20) as extra:
            status, headers, body = read_answer(extra)
        assert status == 503 and body["error"]["code"] == "server_busy"
        assert headers["retry-after"] == "1" and httpd.refused >= 1
        held.pop().close()
        wait_for(lambda: httpd.connections == 3, "a closed connection kept its slot")
        assert ask(port, "GET", "/healthz")[0] == 200
    finally:
        for sock in held:
            sock.close()


def test_64_concurrent_clients_all_get_in_and_healthz_answers_meanwhile(serve):
    """64 completions at once (half a second a batch of 8: several seconds in all), more
    than anyio's 40 worker threads: none is reset or refused, and ``/healthz`` answers
    within a second throughout (it never waits for a thread)."""
    httpd, port = serve()
    assert httpd.backlog >= 128
    gate = threading.Barrier(65)
    done = threading.Event()

    def one(i):
        gate.wait(timeout=60)
        return ask(port, "POST", "/v1/chat/completions", chat(f"slow {BID}", user=f"u{i}"))[0]

    def health():
        gate.wait(timeout=60)
        took = []
        while not done.is_set():
            started = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
            try:
                conn.request("GET", "/healthz")
                assert conn.getresponse().status == 200
            finally:
                conn.close()
            took.append(time.monotonic() - started)
            time.sleep(0.05)
        return took

    with ThreadPoolExecutor(65) as pool:
        checks = pool.submit(health)
        statuses = list(pool.map(one, range(64)))
        done.set()
        took = checks.result()
    assert statuses == [200] * 64
    assert took and max(took) < 1.0, took


# -- feedback ---------------------------------------------------------------------------------


def test_feedback_counts_once_per_response_id(serve):
    httpd, port = serve()
    service = httpd.service
    _, _, answer = ask(port, "POST", "/v1/chat/completions", chat())
    status, _, body = ask(port, "POST", "/v1/feedback", {"id": answer["id"], "score": 0.9})
    assert status == 200 and body["ok"] is True and body["version"] == "v1"
    for score in [0.0] * 300:  # a client trying to drag score_mean down
        assert_error(ask(port, "POST", "/v1/feedback", {"id": answer["id"], "score": score}),
                     409, "feedback_already_counted", names=answer["id"])
    # Ids this server never issued: a made-up one, one in the right shape.
    for made_up in ("chatcmpl-nope", "chatcmpl-" + "0" * 32, ""):
        assert_error(ask(port, "POST", "/v1/feedback", {"id": made_up, "score": 0.0}), 404,
                     "unknown_response")
    assert_error(ask(port, "POST", "/v1/feedback", {"id": 7, "score": 0.0}), 400,
                 "invalid_id", names="'id'")
    assert_error(ask(port, "POST", "/v1/feedback", b'{"id": "x", "score": NaN}'), 400,
                 "invalid_json", names="NaN")
    totals = service.metrics.totals[("rtb-quality", "v1", "production")]
    assert totals["feedback"] == 1 and totals["score_sum"] == pytest.approx(0.9)
    _, _, second = ask(port, "POST", "/v1/chat/completions", chat())
    assert ask(port, "POST", "/v1/feedback", {"id": second["id"], "score": 0.5})[0] == 200
    (window,) = service.flush()
    assert window.data["metrics"]["score_mean"] == pytest.approx(0.7)


# -- pathological JSON ------------------------------------------------------------------------


def test_pathological_json_is_a_400_naming_the_field(serve):
    _, port = serve()
    deep = b'{"model": "rtb-quality", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_error(ask(port, "POST", "/v1/chat/completions", deep), 400, "invalid_json",
                 names="'messages' nests")
    shallow_but_deep = {"reference": json.loads("[" * 40 + "]" * 40), **chat()}
    assert_error(ask(port, "POST", "/v1/chat/completions", shallow_but_deep), 400,
                 "invalid_json", names="'reference' nests")
    assert_error(ask(port, "POST", "/v1/chat/completions", chat(seed=2 ** 70)), 400,
                 "invalid_seed", names="'seed'")
    lone = b'{"model": "rtb-quality", "messages": [{"role": "user", "content": "a\\ud800"}]}'
    assert_error(ask(port, "POST", "/v1/chat/completions", lone), 400, "invalid_unicode",
                 names="'messages[0].content'")
    key = b'{"model": "rtb-quality", "metadata": {"\\udfff": "x"}, "messages": []}'
    assert_error(ask(port, "POST", "/v1/chat/completions", key), 400, "invalid_unicode",
                 names="'metadata'")
    assert_error(ask(port, "POST", "/v1/route", {"input": "a bid", "task": ["rtb"]}), 400,
                 "invalid_task", names="'task'")
    assert_error(ask(port, "POST", "/v1/route", {"input": "a bid", "metadata": {"a": 1}}),
                 400, "invalid_metadata", names="'metadata'")
    assert_error(ask(port, "POST", "/v1/chat/completions", b'{"model": "\xff\xfe"}'), 400,
                 "invalid_json", names="not UTF-8")
    assert_error(ask(port, "POST", "/v1/chat/completions", b'{"model": Infinity}'), 400,
                 "invalid_json", names="Infinity")
    assert_error(ask(port, "POST", "/v1/chat/completions", b'{"n": ' + b"9" * 5000 + b"}"),
                 400, "invalid_json")
    assert_error(ask(port, "POST", "/v1/chat/completions", b"[1, 2]"), 400, "invalid_json",
                 names="JSON object")
    # An escaped surrogate *pair* is one real character: served.
    pair = b'{"model": "rtb-quality", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    assert ask(port, "POST", "/v1/chat/completions", pair)[0] == 200
    assert ask(port, "POST", "/v1/chat/completions", chat(seed=2 ** 63 - 1))[0] == 200


# -- methods, request lines, auth -------------------------------------------------------------


def test_other_methods_get_a_json_405_with_allow(serve):
    _, port = serve(token=TOKEN)
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "FROB"):
        answer = ask(port, method, "/v1/chat/completions", b"{}")
        assert_error(answer, 405, "method_not_allowed")
        assert answer[1]["allow"] == "POST"
    answer = ask(port, "GET", "/v1/chat/completions", token=TOKEN)
    assert_error(answer, 405, "method_not_allowed")
    assert answer[1]["allow"] == "POST"
    answer = ask(port, "POST", "/healthz", b"{}")
    assert answer[0] == 405 and answer[1]["allow"] == "GET"
    answer = ask(port, "PUT", "/nowhere", b"")
    assert answer[0] == 405 and answer[1]["allow"] == "GET, POST"
    status, headers, body = ask(port, "HEAD", "/healthz")
    assert status == 405 and headers["allow"] == "GET" and body is None
    assert_error(ask(port, "GET", "/nowhere", token=TOKEN), 404, "not_found")
    # What the request parser refuses is JSON too.
    assert_error(exchange(port, b"GARBAGE\r\n\r\n"), 400, "bad_request")
    assert_error(exchange(port, b"GET /healthz HTTP/7.0\r\n\r\n"), 505, "bad_request")
    long_header = b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    assert_error(exchange(port, long_header), 431, "bad_request")
    assert_error(exchange(port, b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n"), 414,
                 "bad_request")
    assert ask(port, "GET", "/healthz")[0] == 200


def test_the_bearer_scheme_is_case_insensitive_and_the_token_exact(serve):
    _, port = serve(token=TOKEN)
    for header in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER   {TOKEN}  ",
                   f"bEaReR\t{TOKEN}"):
        status, _, body = ask(port, "GET", "/v1/models", headers={"Authorization": header})
        assert status == 200, (header, body)
    for header in (None, "", "Bearer", f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}",
                   f"Bearer {TOKEN}x", f"Bearer {TOKEN} {TOKEN}", TOKEN,
                   "Bearer s3cret-tok\u00e9n"):
        sent = {} if header is None else {"Authorization": header}
        assert_error(ask(port, "GET", "/v1/models", headers=sent), 401, "invalid_api_key")
    assert ask(port, "GET", "/healthz")[0] == 200  # needs no token


# -- clients that hang up ---------------------------------------------------------------------


def test_a_client_that_hangs_up_mid_answer_is_dropped_quietly(serve, capfd):
    httpd, port = serve()
    capfd.readouterr()
    for stream in (False, True):
        request = post("/v1/chat/completions",
                       json.dumps(chat(f"slow {BID}", stream=stream)).encode())
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", port), timeout=20)
            sock.sendall(request)
            # Close with a reset while the answer is being made.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
    wait_for(lambda: httpd.connections == 0, "the dropped connections never ended")
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err
    assert ask(port, "POST", "/v1/chat/completions", chat())[0] == 200


def trickle(port: int, request: bytes, every_s: float) -> int:
    """Send ``request`` a byte every ``every_s`` seconds until the server answers or cuts
    the connection; the answer must be the 408 of a request out of time. Returns the bytes
    sent."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=20) as slow:
        try:
            while sent < len(request):
                slow.sendall(request[sent:sent + 1])
                sent += 1
                time.sleep(every_s)
        except OSError:
            pass
        assert_error(read_answer(slow), 408, "request_timeout")
    return sent


def test_a_client_sending_its_headers_a_byte_at_a_time_runs_out_of_time(serve):
    """uvicorn bounds only idle keep-alive connections; the request's own deadline (from
    its first byte) cuts a client that sends its request line and headers byte by byte,
    each byte well within any per-read timeout."""
    httpd, port = serve(read_timeout=1)
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    assert trickle(port, request, 0.1) < len(request)
    wait_for(lambda: httpd.connections == 0, "the timed-out connection was not closed")


def test_a_gigabyte_content_length_with_no_body_is_refused_at_once(serve):
    _, port = serve(read_timeout=120, token=TOKEN)  # the length alone refuses it
    started = time.monotonic()
    assert_error(exchange(port, post("/v1/chat/completions", b"", length=str(1 << 30))),
                 413, "body_too_large", names="limit is 1048576")
    assert time.monotonic() - started < 60  # at once, not after read_timeout (120 s)
    # Invalid UTF-8: in a header value (obs-text, read as Latin-1: served), in the path
    # (raw: not a valid request line; escaped: no such endpoint), in a bearer token.
    status, _, body = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                     b"X-Odd: \xff\xfe\r\nConnection: close\r\n\r\n")
    assert status == 200 and body == {"ok": True}
    assert_error(ask(port, "GET", "/v1/%ff%fe", token=TOKEN), 404, "not_found")
    assert_error(exchange(port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n"
                                b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n"),
                 401, "invalid_api_key")
    assert_error(exchange(port, b"GET /v1/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n"), 400,
                 "bad_request")
    assert ask(port, "GET", "/healthz")[0] == 200


def test_keep_alive_serves_two_requests_on_one_connection(serve):
    httpd, port = serve()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        assert first.status == 200 and json.loads(first.read()) == {"ok": True}
        assert first.getheader("Connection") is None and first.version == 11
        sock = conn.sock
        assert sock is not None  # http.client keeps it open: the server did not close it
        conn.request("POST", "/v1/chat/completions", body=json.dumps(chat()),
                     headers={"Content-Type": "application/json"})
        second = conn.getresponse()
        assert second.status == 200 and json.loads(second.read())["object"] == \
            "chat.completion"
        assert conn.sock is sock  # the same connection answered both
        assert httpd.connections == 1
        assert first.getheader("Server") is None  # no server header
    finally:
        conn.close()
    # Pipelined: two requests in one write, two answers in order; the second one's bad
    # version is refused as JSON like a first one's.
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 2 and data.count(b'{"ok":true}') == 2
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /healthz HTTP/7.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 1, data
    assert b"HTTP/1.1 505 " in data and b"HTTP/7.0 is not supported" in data, data


def test_the_access_log_has_a_json_line_per_request_without_token_or_body(demo_repo,
                                                                          tmp_path):
    production_v1(demo_repo)
    service = screening_service(demo_repo)
    log = tmp_path / "access.jsonl"
    httpd = make_server(service, port=0, token=TOKEN, access_log=str(log)).start()
    port = httpd.port
    try:
        status, headers, answer = ask(port, "POST", "/v1/chat/completions",
                                      chat("a secret bid"), token=TOKEN)
        assert status == 200
        assert ask(port, "GET", "/v1/models", token="wrong")[0] == 401
        assert ask(port, "GET", "/healthz")[0] == 200
        exchange(port, b"GARBAGE\r\n\r\n")
    finally:
        httpd.stop(grace=1)
        service.close(timeout=5)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    text = log.read_text()
    assert TOKEN not in text and "a secret bid" not in text
    completion, refused, health, garbage = lines
    assert completion["method"] == "POST" and completion["path"] == "/v1/chat/completions"
    assert completion["status"] == 200 and completion["duration_ms"] >= 0
    assert (completion["specialist"], completion["version"], completion["stage"]) == \
        ("rtb-quality", "v1", "production")
    assert completion["response_id"] == answer["id"]
    assert completion["request_id"] == headers["x-request-id"]
    assert refused["status"] == 401 and "specialist" not in refused
    assert health["path"] == "/healthz" and health["status"] == 200
    assert garbage["status"] == 400 and garbage["path"] is None
    assert len({line["request_id"] for line in lines}) == 4
    assert all({"time", "method", "path", "status", "duration_ms", "request_id"} <= set(line)
               for line in lines)


# -- SIGINT and SIGTERM on the command ---------------------------------------------------------

# ``modelsmith serve`` itself, with one change: every version is a stand-in that answers at
# once, in 0.2 s for a bid saying ``busy``, in 2 s for one saying ``slow``, in 120 s for one
# saying ``stuck`` (touching the MARKER file when it starts on any of them); with SLOW_LOAD
# set, loading a version takes 120 s (touching MARKER when it starts).
SERVE = """
import os, sys, time
from modelsmith.inference.base import Generation
from modelsmith.serving import service

class Stand:
    name, model_ref, batch_size = "stand-in", "stand-in", 1
    def generate(self, requests, progress=None):
        for r in requests:
            if "slow" in r.prompt or "stuck" in r.prompt:
                open(os.environ["MARKER"], "w").close()
                time.sleep(120 if "stuck" in r.prompt else 2)
            elif "busy" in r.prompt:
                open(os.environ["MARKER"], "w").close()
                time.sleep(0.2)
        return [Generation(text=" ACCEPT", completion_tokens=1, latency_ms=1.0)
                for _ in requests]
    def count_tokens(self, text):
        return len(text.split())
    def close(self):
        pass

def load(self, specialist, version):
    if os.environ.get("SLOW_LOAD"):  # a version that takes its time to load
        open(os.environ["MARKER"], "w").close()
        time.sleep(120)
    return Stand()

service.Service._load_backend = load
from modelsmith.cli import main
main(sys.argv[1:])
"""


class Serving:
    """A ``modelsmith serve`` process (always killed at the end of the ``with``)."""

    def __init__(self, root: Path, marker: Path, *options: str, **env: str) -> None:
        self.marker = marker
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVE, "-C", str(root), "serve", "--port", "0",
             "--window", "600", *options],
            env={**os.environ, "MARKER": str(marker), **env}, stderr=subprocess.PIPE,
            text=True)

    def __enter__(self) -> Serving:
        line = self.process.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        assert found, line + self.process.stderr.read()
        self.port = int(found.group(1))
        return self

    def __exit__(self, *_exc) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self.process.stderr.close()
        assert_gone(self.process.pid, 10, "modelsmith serve")

    def ask_in_background(self, content: str) -> list:
        got: list = []

        def run():
            try:
                got.append(ask(self.port, "POST", "/v1/chat/completions", chat(content)))
            except OSError as exc:
                got.append(exc)

        threading.Thread(target=run, daemon=True).start()
        wait_for(self.marker.exists, "the request never reached the model")
        return got

    def signal_and_wait(self, signum: int, within_s: float = 20.0) -> str:
        self.process.send_signal(signum)
        try:
            _, err = self.process.communicate(timeout=within_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {within_s} s after {signum!r}") from None
        return err


def test_sigterm_under_load_drains_every_request_and_records_the_last_window(demo_repo,
                                                                             tmp_path):
    """16 clients with their requests in (each answer 0.2 s, one at a time): SIGTERM stops
    the server, every one of them still gets its 200, the last window counts them all,
    and the access log (a file) has their lines without the token."""
    production_v1(demo_repo)
    log = tmp_path / "access.jsonl"
    with Serving(demo_repo, tmp_path / "marker", "--shutdown-grace", "60",
                 "--access-log", str(log), MODELSMITH_SERVE_TOKEN=TOKEN) as busy:
        sent, results = threading.Barrier(17), []

        def client(i):
            conn = http.client.HTTPConnection("127.0.0.1", busy.port, timeout=120)
            try:
                conn.request("POST", "/v1/chat/completions",
                             body=json.dumps(chat(f"busy {i} {BID}")),
                             headers={"Authorization": f"Bearer {TOKEN}"})
                sent.wait(timeout=60)
                response = conn.getresponse()
                results.append((response.status, json.loads(response.read())))
            except OSError as exc:
                results.append((None, exc))
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        sent.wait(timeout=60)
        wait_for(busy.marker.exists, "no request reached the model")
        time.sleep(0.5)  # the last connections accepted
        err = busy.signal_and_wait(signal.SIGTERM, within_s=90)
        for thread in threads:
            thread.join(timeout=60)
    assert busy.process.returncode == 0, err
    assert "Traceback" not in err
    assert [status for status, _ in results] == [200] * 16, results
    assert sum(w["requests"] for w in windows(demo_repo)) == 16
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sum(line["status"] == 200 and line["path"] == "/v1/chat/completions"
               for line in lines) == 16
    assert TOKEN not in log.read_text()


@pytest.mark.parametrize("moment", ["idle", "loading", "mid-batch"])
def test_sigint_stops_the_server_promptly_whatever_it_is_doing(demo_repo, tmp_path, moment):
    """Idle, while a version loads (120 s), while a batch runs (120 s): SIGINT ends the
    process within seconds (grace 1 s), no traceback."""
    production_v1(demo_repo)
    env = {"SLOW_LOAD": "1"} if moment == "loading" else {}
    with Serving(demo_repo, tmp_path / "marker", "--shutdown-grace", "1", **env) as server:
        if moment == "idle":
            assert ask(server.port, "GET", "/healthz")[0] == 200
        else:
            server.ask_in_background("a bid" if moment == "loading" else f"stuck {BID}")
        started = time.monotonic()
        err = server.signal_and_wait(signal.SIGINT, within_s=30)
        took = time.monotonic() - started
        assert_gone(server.process.pid, 5, f"modelsmith serve ({moment})")
    assert server.process.returncode == 0, err
    assert "Traceback" not in err, err
    assert took < 30, took


def windows(root: Path) -> list[dict]:
    return [e.data for e in GitEventStore(root).read("rtb-quality")
            if e.type == "MetricsObserved"]


def test_sigterm_and_sigint_stop_the_server_and_record_the_last_window(demo_repo, tmp_path):
    production_v1(demo_repo)
    with Serving(demo_repo, tmp_path / "marker") as idle:
        assert ask(idle.port, "POST", "/v1/chat/completions", chat())[0] == 200
        err = idle.signal_and_wait(signal.SIGTERM)
    assert idle.process.returncode == 0, err
    assert "Traceback" not in err
    assert [w["requests"] for w in windows(demo_repo)] == [1]
    # SIGINT with an answer under way, a connection still sending its request and one that
    # hung up: the answer finishes (within the grace), the rest are cut, no traceback.
    with Serving(demo_repo, tmp_path / "marker") as busy:
        stalled = socket.create_connection(("127.0.0.1", busy.port), timeout=20)
        stalled.sendall(post("/v1/chat/completions", b"{", length="100"))
        hung_up = socket.create_connection(("127.0.0.1", busy.port), timeout=20)
        hung_up.sendall(post("/v1/chat/completions", json.dumps(chat()).encode()))
        hung_up.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        hung_up.close()
        answer = busy.ask_in_background(f"slow {BID}")
        err = busy.signal_and_wait(signal.SIGINT)
        stalled.close()
    assert busy.process.returncode == 0, err
    assert "Traceback" not in err
    wait_for(lambda: answer, "the answer under way never came back")
    assert answer[0][0] == 200, answer
    assert sum(w["requests"] for w in windows(demo_repo)) >= 2


def test_a_stuck_answer_does_not_hold_the_stop_and_a_second_sigint_exits_at_once(demo_repo,
                                                                                tmp_path):
    production_v1(demo_repo)
    # The grace runs out: the process leaves without the stuck answer.
    with Serving(demo_repo, tmp_path / "stuck", "--shutdown-grace", "1") as stuck:
        stuck.ask_in_background(f"stuck {BID}")
        err = stuck.signal_and_wait(signal.SIGINT)
    assert stuck.process.returncode == 0, err
    assert "Traceback" not in err and "still under way" in err
    # A long grace: a second SIGINT ends the wait.
    with Serving(demo_repo, tmp_path / "again", "--shutdown-grace", "300") as again:
        again.ask_in_background(f"stuck {BID}")
        again.process.send_signal(signal.SIGINT)
        time.sleep(1)
        assert again.process.poll() is None  # still waiting for the stuck answer
        err = again.signal_and_wait(signal.SIGINT)
    assert again.process.returncode == 128 + signal.SIGINT, err
    assert "SIGINT again: exiting now" in err and "Traceback" not in err
