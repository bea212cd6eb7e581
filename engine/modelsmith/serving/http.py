"""``modelsmith serve``: an OpenAI-compatible HTTP endpoint in front of the :class:`.Service`.

``POST /v1/chat/completions`` answers with a specialist (``model`` names it, or ``auto``
lets the router pick from the last user message; ``stream: true`` sends the answer as
server-sent chunks). ``GET /v1/models`` lists the specialists, ``POST /v1/route`` shows the
routing decision, ``POST /v1/feedback`` scores an earlier response (``{"id", "score"}``;
once per response id), ``GET /metrics`` is Prometheus text, ``GET /healthz`` says it is up.

Loopback by default; with a token every request but ``/healthz`` needs
``Authorization: Bearer <token>``. Every error is an OpenAI-style JSON body with a 4xx or
5xx, and the server keeps serving (:mod:`.wire` has the request rules):

- a body over ``max_body``, or a ``Content-Length`` that is not a number of bytes, is
  refused before a byte of it is read (413, 400); chunked bodies without a length get 411;
- a connection has ``read_timeout`` seconds, in all, to send its request line, headers and
  body (408 after that): a slow or stalled client holds its thread no longer;
- at most ``max_connections`` connections are served at once; one more gets a 503 at once,
  and the listen backlog (``backlog``) holds bursts of new connections meanwhile;
- methods other than GET and POST, or the wrong one for a path, get a 405 with ``Allow``;
- a client that goes away mid-answer is dropped without a word.

One request per connection (HTTP/1.0 answers). :meth:`ServiceServer.stop` ends serving:
no new connections, the ones still sending their request cut, the answers under way given
a grace period.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from .service import ServeError, Service
from .wire import bearer_ok, body_length, parse_body

#: Bodies larger than this are refused (413).
MAX_BODY = 1 << 20
#: Seconds a connection has to send its whole request (line, headers, body).
READ_TIMEOUT = 10.0
#: Connections served at once (one thread each); more get a 503.
MAX_CONNECTIONS = 1024
#: The listen backlog: new connections the kernel holds until they are accepted.
BACKLOG = 1024
#: Request line and header lines longer than this are refused.
MAX_LINE = 16 * 1024
#: Bytes of an unread body drained (for at most a second) before closing, so that the
#: client reads its error instead of a reset.
LINGER_BYTES = 256 * 1024

_QUIET = (ConnectionError, TimeoutError)  # a client gone or too slow: nothing to report


def _refusal(status: int, reason: str, message: str, code: str) -> bytes:
    body = json.dumps(ServeError(status, message, kind="server_error", code=code).body())
    return (f"HTTP/1.0 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
            f"{body}").encode()


class ServiceServer(ThreadingHTTPServer):
    """A threading HTTP server holding what its handlers answer with, with a bound on the
    connections it serves at once."""

    daemon_threads = True  # an answer under way never keeps the process alive
    block_on_close = False  # server_close() never waits for the answers under way

    def __init__(self, address: tuple[str, int], service: Service, *,
                 token: str | None, max_body: int, read_timeout: float = READ_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS, backlog: int = BACKLOG) -> None:
        if read_timeout <= 0 or max_connections < 1 or backlog < 1 or max_body < 0:
            raise ValueError("read_timeout, max_connections and backlog must be positive")
        self.service = service
        self.token = token
        self.max_body = max_body
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.request_queue_size = backlog  # listen() reads it in the constructor
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: dict[socket.socket, str] = {}  # connection -> "reading" | "answering"
        self._changed = threading.Condition()
        self._stopping = False
        #: Connections refused because ``max_connections`` were being served.
        self.refused = 0
        super().__init__(address, Handler)

    # -- connections -------------------------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection on a thread of its own, if one of the ``max_connections``
        slots is free; else answer 503 at once."""
        if self._stopping or not self._slots.acquire(blocking=False):
            self.refused += 1
            self._refuse(request, _refusal(503, "Service Unavailable",
                                           "the server is busy (too many connections) "
                                           "or stopping; try again", "server_busy"))
            return
        with self._changed:
            self._open[request] = "reading"
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # no thread to be had
            self._forget(request)
            self._refuse(request, _refusal(503, "Service Unavailable",
                                           "the server is out of threads; try again",
                                           "server_busy"))

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def _forget(self, request: Any) -> None:
        with self._changed:
            self._open.pop(request, None)
            self._changed.notify_all()
        self._slots.release()

    def answering(self, request: Any) -> None:
        """The connection's request is read: it is being answered (a stop lets it finish)."""
        with self._changed:
            if request in self._open:
                self._open[request] = "answering"

    def _refuse(self, request: socket.socket, answer: bytes) -> None:
        """Answer without a thread: never blocks the accepting loop."""
        try:
            request.setblocking(False)
            with contextlib.suppress(OSError):  # what the client sent already, so that
                request.recv(65536)  # no reset hides the answer
            request.send(answer)
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line on stderr for what went wrong in a connection; nothing for a client that
        went away or was too slow."""
        error = sys.exc_info()[1]
        if isinstance(error, _QUIET):
            return
        sys.stderr.write(f"modelsmith serve: {client_address[0]}: "
                         f"{type(error).__name__}: {error}\n")

    def stop(self, grace: float = 5.0) -> int:
        """Stop serving (after ``serve_forever`` returned, or from any thread but its own
        once ``shutdown`` did): close the listening socket, cut the connections still
        sending their request, and give the answers under way ``grace`` seconds. Returns
        how many connections were still open then (their threads end with the process)."""
        self._stopping = True
        self.server_close()
        with self._changed:
            for connection, phase in list(self._open.items()):
                if phase == "reading":
                    with contextlib.suppress(OSError):
                        connection.shutdown(socket.SHUT_RDWR)
            deadline = time.monotonic() + grace
            while self._open and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            return len(self._open)

    @property
    def connections(self) -> int:
        """Connections being served now."""
        with self._changed:
            return len(self._open)


class _Deadline(io.RawIOBase):
    """The connection's reading side, with one deadline for all of its reads: a client that
    sends a byte a second runs out of time like one that sends nothing."""

    def __init__(self, connection: socket.socket, seconds: float) -> None:
        self._connection = connection
        self.deadline: float | None = time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request took too long to arrive")
            self._connection.settimeout(left)
        return self._connection.recv_into(buffer)


class _Writer(io.BufferedIOBase):
    """The connection's writing side: every write sent whole."""

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._connection.sendall(data)
        with memoryview(data) as view:
            return view.nbytes


def _methods(routes: dict[tuple[str, str], Any]) -> dict[str, tuple[str, ...]]:
    """Each path's methods, from the route table."""
    found: dict[str, tuple[str, ...]] = {}
    for method, path in routes:
        found[path] = (*found.get(path, ()), method)
    return found


class Handler(BaseHTTPRequestHandler):
    """One request: read it within the deadline, check the method and the token, route it
    to the service, send the answer or the error."""

    server: ServiceServer
    server_version = "modelsmith"
    protocol_version = "HTTP/1.0"  # one request per connection
    default_request_version = "HTTP/1.0"  # answers carry a status line, even to "GET /"

    def log_message(self, *args: Any) -> None:  # quiet; metrics say what happened
        pass

    # -- the connection ----------------------------------------------------------------------

    def setup(self) -> None:
        self.connection = self.request
        self._reader = _Deadline(self.connection, self.server.read_timeout)
        self.rfile = io.BufferedReader(self._reader)
        self.wfile = _Writer(self.connection)
        self._unread = False  # a body left unread (refused): drained before closing
        self._answered = False
        # What the parser sets, for an answer sent before it did (a 408 on the first line).
        self.command, self.requestline, self.request_version = None, "", "HTTP/1.0"

    def handle(self) -> None:
        """One request, then the connection closes. A request that does not arrive in time
        gets a 408; a client that went away, nothing."""
        self.close_connection = True
        try:
            self.raw_requestline = self.rfile.readline(MAX_LINE + 1)
            if not self.raw_requestline:
                return
            if len(self.raw_requestline) > MAX_LINE:
                self.requestline, self.request_version, self.command = "", "HTTP/1.0", ""
                self.send_error(414, f"the request line is longer than {MAX_LINE} bytes")
                return
            if not self.parse_request():  # it sent its error
                return
            self._handle(self.command)
        except TimeoutError:
            if not self._answered:
                self._quietly(self._send, 408, ServeError(
                    408, f"the request did not arrive within {self.server.read_timeout:g} s",
                    code="request_timeout").body())
        except _QUIET:
            pass

    def finish(self) -> None:
        if self._unread:  # let the client read the error before the close resets it
            self._quietly(self._linger)
        self.rfile.close()

    def _linger(self) -> None:
        self.connection.shutdown(socket.SHUT_WR)
        self.connection.settimeout(1.0)
        drained, until = 0, time.monotonic() + 1.0
        while drained < LINGER_BYTES and time.monotonic() < until:
            chunk = self.connection.recv(65536)
            if not chunk:
                return
            drained += len(chunk)

    @staticmethod
    def _quietly(fn: Callable[..., Any], *args: Any) -> None:
        with contextlib.suppress(OSError, ValueError):
            fn(*args)

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """The errors the request parser finds (a bad request line, headers too long or
        too many, an HTTP version), as JSON like every other error."""
        reason = self.responses.get(code, ("error",))[0]
        self._send(code, ServeError(code, message or reason, code="bad_request").body())

    # -- dispatch ----------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            self._dispatch(method, path)
        except ServeError as exc:
            self._send(exc.status, exc.body(), exc.headers)
        except _QUIET as exc:
            if self._answered or self._reader.deadline is not None:
                raise  # the client's connection: it went away, or was too slow
            self._fail(exc)  # from the service (a backend's connection): a 500
        except Exception as exc:  # the server keeps serving
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        self._send(500, ServeError(500, f"{type(exc).__name__}: {exc}",
                                   kind="server_error").body())

    def _dispatch(self, method: str, path: str) -> None:
        allowed = self.allowed.get(path)
        if method not in ("GET", "POST") or (allowed is not None and method not in allowed):
            allow = ", ".join(allowed or ("GET", "POST"))
            raise ServeError(405, f"{method[:20]} is not allowed on {path[:200] or '/'} "
                                  f"(allowed: {allow})", code="method_not_allowed",
                             headers={"Allow": allow})
        if path == "/healthz":
            self._send(200, {"ok": True})
            return
        if not bearer_ok(self.headers.get("Authorization"), self.server.token):
            raise ServeError(401, "missing or wrong bearer token",
                             kind="authentication_error", code="invalid_api_key")
        endpoint = self.routes.get((method, path))
        if endpoint is None:
            raise ServeError(404, f"no endpoint {method} {path[:200]}", code="not_found")
        endpoint(self)

    # -- endpoints ---------------------------------------------------------------------------

    def _metrics(self) -> None:
        self._read_done()
        self._send_bytes(200, self.server.service.metrics.prometheus().encode("utf-8"),
                         "text/plain; version=0.0.4")

    def _models(self) -> None:
        self._read_done()
        self._send(200, self.server.service.models())

    def _feedback(self) -> None:
        self._send(200, self.server.service.feedback(self._body()))

    def _route(self) -> None:
        self._send(200, self.server.service.route(self._body()))

    def _complete(self) -> None:
        body = self._body()
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ServeError(400, "'stream' must be true or false", code="invalid_stream")
        if stream:
            self._stream(self.server.service.stream(body))
        else:
            self._send(200, self.server.service.complete(body))

    routes: ClassVar[dict[tuple[str, str], Callable[[Handler], None]]] = {
        ("GET", "/metrics"): _metrics,
        ("GET", "/v1/models"): _models,
        ("POST", "/v1/feedback"): _feedback,
        ("POST", "/v1/chat/completions"): _complete,
        ("POST", "/v1/route"): _route,
    }
    #: The methods each path answers (the ``Allow`` of a 405).
    allowed: ClassVar[dict[str, tuple[str, ...]]] = {
        **_methods(routes), "/healthz": ("GET",)}

    # -- the request and the answer ----------------------------------------------------------

    def _body(self) -> dict[str, Any]:
        """The request's JSON object: its declared length checked before the body is read,
        all of it read within the connection's deadline."""
        try:
            length = body_length(self.headers.get_all("Content-Length") or [],
                                 self.headers.get_all("Transfer-Encoding") or [],
                                 self.server.max_body)
        except ServeError:
            self._unread = True
            raise
        raw = self.rfile.read(length)
        if len(raw) < length:
            raise ServeError(400, f"the body ended after {len(raw)} of its {length} bytes",
                             code="incomplete_body")
        self._read_done()
        return parse_body(raw)

    def _read_done(self) -> None:
        """The request is in: no more deadline for reading; writes get the timeout per
        send, and a stop lets this answer finish."""
        self._reader.deadline = None
        self.connection.settimeout(self.server.read_timeout)
        self.server.answering(self.request)

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(body).encode("utf-8"), "application/json",
                         headers)

    def _send_bytes(self, status: int, data: bytes, content_type: str,
                    headers: dict[str, str] | None = None) -> None:
        self._answered = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _stream(self, events: Iterable[dict[str, Any]]) -> None:
        """Server-sent events, as OpenAI streams: each chunk as the service yields it
        (while the answer is generated), then ``[DONE]``; then the connection closes."""
        self._answered = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


def chunks(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A finished completion as the ``chat.completion.chunk`` events of a stream: the
    role, the content, then the finish reason (and usage, as OpenAI sends it last)."""
    choice = response["choices"][0]
    head = {"id": response["id"], "object": "chat.completion.chunk",
            "created": response["created"], "model": response["model"]}
    return [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                              "finish_reason": None}],
         "modelsmith": response["modelsmith"]},
        {**head, "choices": [{"index": 0, "delta": {"content": choice["message"]["content"]},
                              "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {},
                              "finish_reason": choice["finish_reason"]}],
         "usage": response["usage"]},
    ]


def make_server(service: Service, host: str = "127.0.0.1", port: int = 8000, *,
                token: str | None = None, max_body: int = MAX_BODY,
                read_timeout: float = READ_TIMEOUT, max_connections: int = MAX_CONNECTIONS,
                backlog: int = BACKLOG) -> ServiceServer:
    """A threading HTTP server for ``service`` (``serve_forever`` runs it; ``stop`` ends
    it)."""
    return ServiceServer((host, port), service, token=token, max_body=max_body,
                         read_timeout=read_timeout, max_connections=max_connections,
                         backlog=backlog)
