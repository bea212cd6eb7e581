"""``modelsmith serve``: an OpenAI-compatible HTTP endpoint in front of the :class:`.Service`,
a Starlette app run by uvicorn (HTTP/1.1 with keep-alive, h11).

``POST /v1/chat/completions`` answers with a specialist (``model`` names it, or ``auto``
lets the router pick from the last user message; ``stream: true`` sends the answer as
server-sent events, ``data: {chunk}`` then ``data: [DONE]``, from ``Service.stream`` when
the service has it, else the finished answer cut into :func:`chunks`). ``GET /v1/models``
lists the specialists, ``POST /v1/route`` shows the routing decision, ``POST /v1/feedback``
scores an earlier response (``{"id", "score"}``; once per response id), ``GET /metrics`` is
the service's Prometheus registry, ``GET /healthz`` says it is up (answered on the event
loop, never queued behind the service's threads).

The service blocks, so every call into it runs on a worker thread (anyio's, the limiter
raised to ``max_connections``). Loopback by default; with a token every request but
``/healthz`` needs ``Authorization: Bearer <token>``. Every error is an OpenAI-style JSON
body with a 4xx or 5xx, and the server keeps serving (:mod:`.wire` has the request rules):

- a body over ``max_body``, or a ``Content-Length`` that is not a number of bytes, is
  refused before a byte of it is read (413, 400); chunked bodies without a length get 411;
- a request has ``read_timeout`` seconds, in all, to send its request line, headers and
  body, from its first byte (408 after that, or the connection closed): a client sending a
  byte a second runs out of time like a silent one; an idle keep-alive connection is closed
  after ``keep_alive`` seconds;
- at most ``max_connections`` connections are open at once; one more gets a 503 at once,
  and the listen backlog (``backlog``) holds bursts of new connections meanwhile;
- methods other than GET and POST, or the wrong one for a path, get a 405 with ``Allow``;
  request lines over 16 KiB a 414, headers over 64 KiB a 431, HTTP versions but 1.0/1.1 a 505;
- a client that goes away mid-answer (or mid-stream) is dropped without a word.

Each request is one JSON line in the access log (when there is one): time, method, path,
status, duration_ms, request_id (also the ``X-Request-Id`` of the answer), the specialist,
version and stage that answered and the response id when known -- never the token or the
body. :class:`ServiceServer` runs the server on a thread of its own (``start``) and stops it
(``stop``): no new connections, the ones still sending their request cut, the answers under
way given a grace period. Signals are the caller's (the CLI's): uvicorn installs none.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from typing import IO, Any

import anyio.to_thread
import h11
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from .service import ServeError, Service
from .wire import bearer_ok, body_length, parse_body

#: Bodies larger than this are refused (413).
MAX_BODY = 1 << 20
#: Seconds a request has to arrive whole (line, headers, body), from its first byte.
READ_TIMEOUT = 10.0
#: Connections open at once; one more gets a 503.
MAX_CONNECTIONS = 1024
#: The listen backlog: new connections the kernel holds until they are accepted.
BACKLOG = 1024
#: Seconds an idle keep-alive connection stays open.
KEEP_ALIVE = 5
#: A request line longer than this is refused (414).
MAX_LINE = 16 * 1024
#: A request line and headers longer than this, together, are refused (431).
MAX_HEAD = 64 * 1024
#: After a refusal with the request still coming: bytes (and a second) read and dropped
#: before the close, so that the client reads its error instead of a reset.
LINGER_BYTES = 256 * 1024
#: The scope extension holding the request's read deadline (the event loop's clock).
DEADLINE = "modelsmith.read_deadline"

#: The methods each path answers (the ``Allow`` of a 405).
ALLOWED: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("POST",), "/v1/route": ("POST",), "/v1/feedback": ("POST",),
    "/v1/models": ("GET",), "/metrics": ("GET",), "/healthz": ("GET",)}


def _answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection (sent without the app)."""
    data = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n"
            f"connection: close\r\n{extra}\r\n").encode() + data


def _error(error: ServeError) -> bytes:
    return _answer(error.status, error.body(), error.headers)


class _Limits:
    """What the connections of one server share: its limits, its refusals, its log."""

    def __init__(self, *, read_timeout: float, max_body: int, max_connections: int,
                 log: AccessLog | None) -> None:
        self.read_timeout = read_timeout
        self.max_body = max_body
        self.max_connections = max_connections
        self.log = log
        #: Connections refused because ``max_connections`` were open.
        self.refused = 0


class _Config(uvicorn.Config):
    limits: _Limits


class _Recording(h11.Connection):
    """h11's connection, keeping the protocol error it raised (for the JSON answer)."""

    error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error = exc
            raise


def head_problem(head: bytes, max_body: int) -> ServeError | None:
    """What is wrong with the start of a request (its line and headers, as far as they
    came), checked before h11 parses it: a line or head too long, an HTTP version but
    1.0/1.1, and the :func:`.wire.body_length` rules on the headers exactly as sent."""
    line_end = head.find(b"\r\n")
    if line_end > MAX_LINE or (line_end < 0 and len(head) > MAX_LINE):
        return ServeError(414, f"the request line is longer than {MAX_LINE} bytes",
                          code="bad_request")
    end = head.find(b"\r\n\r\n")
    if end > MAX_HEAD or (end < 0 and len(head) > MAX_HEAD):
        return ServeError(431, f"the request's headers are longer than {MAX_HEAD} bytes",
                          code="bad_request")
    if end < 0:
        return None
    lines = head[:end].decode("latin-1").split("\r\n")
    version = lines[0].rsplit(" ", 1)[-1]
    if version.startswith("HTTP/") and version not in ("HTTP/1.0", "HTTP/1.1"):
        return ServeError(505, f"{version[:20]} is not supported (HTTP/1.1 or 1.0)",
                          code="bad_request")
    lengths, encodings = [], []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            lengths.append(value.strip())
        elif name.lower() == "transfer-encoding":
            encodings.append(value.strip())
    if lengths or encodings:
        try:
            body_length(lengths, encodings, max_body)
        except ServeError as exc:
            return exc
    return None


class Protocol(H11Protocol):
    """uvicorn's h11 protocol with what a hostile client needs: one deadline for the whole
    request from its first byte (uvicorn bounds only idle keep-alive connections: a client
    sending its headers a byte a second held a connection for ever), the head checked
    before h11 parses it, the connection bound enforced when a connection opens, JSON for
    every refusal, a body cut short by the client's end of stream answered (400) instead
    of dropped, and a linger after a refusal so that the client reads it."""

    def __init__(self, config: _Config, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.conn = _Recording(h11.SERVER, config.h11_max_incomplete_event_size or MAX_HEAD)
        self.limits = config.limits
        self.limit_concurrency = None  # bounded in connection_made instead (JSON 503)
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_at: float | None = None
        self._seen: Any = None  # the request cycle the deadline was handed to
        self._draining = -1  # bytes dropped since a refusal (-1: not draining)
        self._head: bytearray | None = None  # the request head arriving (not yet parsed)
        self._line_end = -1  # where its request line ends, once it does
        self._opened = time.monotonic()

    # -- the connection ----------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets it only on sockets whose proto says TCP: a kept-alive
            # connection's answer must not wait for the client's delayed ACK (~40 ms).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.connections.discard(self)  # it holds no slot: it is closed at once
            self.limits.refused += 1
            self._refuse(ServeError(503, "the server is busy (too many connections) or "
                                         "stopping; try again", kind="server_error",
                                    code="server_busy", headers={"retry-after": "1"}))
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._draining >= 0:
            self._draining += len(data)
            if self._draining > LINGER_BYTES:
                self.transport.close()
            return
        if self.conn.their_state is h11.IDLE:  # a request starting, or its head arriving
            self._arm()
            problem = self._head_arrived(data)
            if problem is not None:
                self._refuse(problem)
                return
        super().data_received(data)

    def _head_arrived(self, data: bytes) -> ServeError | None:
        """Add ``data`` to the head of the request arriving; what :func:`head_problem`
        finds once its line is too long, it is too long, or it is complete. Linear in the
        head's length however it is cut into pieces (searches start where the last one
        ended)."""
        if self._head is None:  # what h11 holds already (pipelined) counts too
            self._head = bytearray(self.conn.trailing_data[0])
        head, before = self._head, len(self._head)
        head += data
        if self._line_end < 0:
            self._line_end = head.find(b"\r\n", max(0, before - 1))
        end = head.find(b"\r\n\r\n", max(0, before - 3))
        if end >= 0:
            return head_problem(bytes(head[:end + 4]), self.limits.max_body)
        if (self._line_end < 0 and len(head) > MAX_LINE) or len(head) > MAX_HEAD:
            return head_problem(bytes(head), self.limits.max_body)
        return None

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # its head is parsed: the next is new
            self._head, self._line_end = None, -1
        cycle = self.cycle
        if cycle is not None and cycle is not self._seen:  # a new request: its deadline
            self._seen = cycle
            self._arm()
            cycle.scope.setdefault("extensions", {})[DEADLINE] = self._deadline_at
        if self.conn.their_state is h11.DONE:  # the request is in
            self._disarm()

    def eof_received(self) -> bool | None:
        cycle = self.cycle
        if self._draining < 0 and cycle is not None and not cycle.response_complete:
            if cycle.more_body:  # the body ended early: the app answers that (400)
                cycle.more_body = False
                cycle.message_event.set()
            cycle.keep_alive = False
            return True  # the writing side stays open for the answer
        return None

    def send_400_response(self, msg: str) -> None:
        """What h11 refuses (a bad request line, a malformed header), as JSON."""
        error = self.conn.error
        status = getattr(error, "error_status_hint", 400)
        text = str(error) if error is not None else msg
        if status == 431:
            message = f"the request's headers are longer than {MAX_HEAD} bytes"
        else:
            message = f"not a valid HTTP/1.1 request: {text[:200]}"
        self._refuse(ServeError(status, message, code="bad_request"))

    def shutdown(self) -> None:
        """The server stops: a connection still sending its request is cut, an answer under
        way finishes (then the connection closes), an idle one closes."""
        cycle = self.cycle
        if (cycle is not None and not cycle.response_started
                and self.conn.their_state is h11.SEND_BODY) or (
                cycle is None and self.conn.their_state is h11.IDLE):
            self.transport.close()
            return
        super().shutdown()

    # -- the deadline and refusals -----------------------------------------------------------

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline_at = self.loop.time() + self.limits.read_timeout
            self._deadline = self.loop.call_at(self._deadline_at, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._deadline_at = None

    def _expired(self, last: bool = False) -> None:
        """The request did not arrive in time. An app reading its body answers the 408
        itself (it reads under the same deadline); else this does, or closes."""
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self.conn.their_state is h11.SEND_BODY and cycle is not None:
            if cycle.response_started:
                self.transport.close()  # answered, but the rest of its body never came
                return
            if not last:
                self._deadline = self.loop.call_later(0.5, self._expired, True)
                return
            cycle.disconnected = True  # the app's answer, if any, goes nowhere
            cycle.message_event.set()
        self._refuse(ServeError(408, f"the request did not arrive within "
                                     f"{self.limits.read_timeout:g} s", code="request_timeout"))

    def _refuse(self, error: ServeError) -> None:
        """Answer ``error`` without the app, then close (after a linger)."""
        self._disarm()
        if self.limits.log is not None:
            self.limits.log.write(method=None, path=None, status=error.status,
                                  duration_ms=(time.monotonic() - self._opened) * 1000,
                                  request_id=uuid.uuid4().hex[:16])
        self.transport.write(_error(error))
        self._linger()

    def _linger(self) -> None:
        """Close the writing side now; read (and drop) what the client still sends, for a
        second at most, then close: the client reads the answer, not a reset."""
        self._draining = 0
        try:
            self.transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            self.transport.close()
            return
        with contextlib.suppress(Exception):
            self.transport.resume_reading()
        self.loop.call_later(1.0, self.transport.close)


# -- the access log ------------------------------------------------------------------------


class AccessLog:
    """One JSON line per request, to a stream (stderr) or a file opened for appending."""

    def __init__(self, target: IO[str] | str) -> None:
        self._own = isinstance(target, str)
        self._out: IO[str] = open(target, "a", encoding="utf-8") if isinstance(target, str) \
            else target  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()

    def write(self, **fields: Any) -> None:
        line = json.dumps({"time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                           **{k: v for k, v in fields.items() if v is not None
                              or k in ("method", "path")}})
        with self._lock, contextlib.suppress(OSError, ValueError):
            self._out.write(line + "\n")
            self._out.flush()

    def close(self) -> None:
        if self._own:
            self._out.close()


# -- the app -------------------------------------------------------------------------------


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on a worker thread (what ``run_in_threadpool`` does), abandoned when
    the request is cancelled (a client gone, a stop past its grace)."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args),
                                          abandon_on_cancel=True)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


def _failure(exc: BaseException) -> Response:
    if isinstance(exc, ServeError):
        return _json(exc.status, exc.body(), exc.headers)
    return _json(500, ServeError(500, f"{type(exc).__name__}: {exc}",
                                 kind="server_error").body())


def _note(request: Request, answer: Any) -> None:
    """What answered (a completion, a chunk, a feedback answer), for the access log."""
    entry = request.scope.get("modelsmith.log")
    if entry is None or not isinstance(answer, dict):
        return
    served = answer.get("modelsmith")
    found = {"specialist": answer.get("model", answer.get("specialist")),
             **(served if isinstance(served, dict) else answer)}
    for key in ("specialist", "version", "stage"):
        if isinstance(found.get(key), str):
            entry[key] = found[key]
    if isinstance(answer.get("id"), str) and answer.get("object") is not None:
        entry["response_id"] = answer["id"]


def build_app(service: Service, *, token: str | None = None, max_body: int = MAX_BODY,
              read_timeout: float = READ_TIMEOUT, log: AccessLog | None = None) -> Any:
    """The ASGI app: the routes (a Starlette app) behind a guard that checks the HTTP
    version, the method, the token and the path, turns whatever goes wrong into a JSON
    error, and writes the access log."""

    async def read(request: Request) -> dict[str, Any]:
        """The request's JSON object: its declared length checked before the body is read,
        all of it read by the request's deadline."""
        close = {"connection": "close"}
        try:
            length = body_length(request.headers.getlist("content-length"),
                                 request.headers.getlist("transfer-encoding"), max_body)
        except ServeError as exc:
            exc.headers.update(close)
            raise
        deadline = request.scope.get("extensions", {}).get(DEADLINE)
        loop = asyncio.get_running_loop()
        left = read_timeout if deadline is None else deadline - loop.time()
        raw = bytearray()
        try:
            async with asyncio.timeout(max(left, 0.0)):
                async for chunk in request.stream():
                    raw += chunk
                    if len(raw) > length:
                        break
        except TimeoutError:
            raise ServeError(408, f"the request did not arrive within {read_timeout:g} s",
                             code="request_timeout", headers=close) from None
        if len(raw) < length:
            raise ServeError(400, f"the body ended after {len(raw)} of its {length} bytes",
                             code="incomplete_body", headers=close)
        return parse_body(bytes(raw[:length]))

    async def healthz(_request: Request) -> Response:
        return _json(200, {"ok": True})

    async def models(_request: Request) -> Response:
        return _json(200, await _call(service.models))

    async def metrics(_request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        text = await _call(generate_latest, service.metrics.registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    async def feedback(request: Request) -> Response:
        answer = await _call(service.feedback, await read(request))
        _note(request, answer)
        return _json(200, answer)

    async def route(request: Request) -> Response:
        return _json(200, await _call(service.route, await read(request)))

    async def complete(request: Request) -> Response:
        body = await read(request)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ServeError(400, "'stream' must be true or false", code="invalid_stream")
        if stream:
            return await streamed(request, body)
        answer = await _call(service.complete, body)
        _note(request, answer)
        return _json(200, answer)

    async def streamed(request: Request, body: dict[str, Any]) -> Response:
        """Server-sent events: ``Service.stream`` validates and starts before the first
        event (its 4xx is an ordinary answer); the events come off a worker thread."""
        stream = getattr(service, "stream", None)
        if stream is not None:
            events: Iterator[dict[str, Any]] = await _call(stream, body)
        else:
            events = iter(chunks(await _call(service.complete, body)))
        return StreamingResponse(sse(request, events), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})

    async def sse(request: Request, events: Iterator[dict[str, Any]]) -> AsyncIterator[bytes]:
        pump = _Pump(events)
        try:
            while True:
                try:
                    event = await _call(pump.next)
                except Exception as exc:  # after the first event: an error event ends it
                    event = _failure_event(exc)
                if event is None:
                    break
                _note(request, event)
                yield f"data: {json.dumps(event)}\n\n".encode()
                if "error" in event:  # the last event, then [DONE] (as vLLM ends one)
                    break
            yield b"data: [DONE]\n\n"
        finally:  # done, or the client went away: the generation stops with it
            pump.stop()

    def endpoint(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        @functools.wraps(fn)
        async def run(request: Request) -> Response:
            try:
                return await fn(request)
            except ClientDisconnect:
                return Response(status_code=499)  # nobody reads it
            except Exception as exc:  # the server keeps serving
                return _failure(exc)
        return run

    handlers = {"/healthz": healthz, "/v1/models": models, "/metrics": metrics,
                "/v1/feedback": feedback, "/v1/route": route,
                "/v1/chat/completions": complete}
    routes = Starlette(routes=[Route(path, endpoint(fn), methods=list(ALLOWED[path]))
                               for path, fn in handlers.items()])

    async def guard(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan is off; nothing else is served
            return
        started = time.perf_counter()
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        entry: dict[str, Any] = {"request_id": uuid.uuid4().hex[:16]}
        scope = {**scope, "path": path, "modelsmith.log": entry}
        status = [0]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [
                    *message.get("headers", []),
                    (b"x-request-id", entry["request_id"].encode())]}
            await send(message)

        try:
            refusal = _refusal(scope, method, path, token)
            if refusal is not None:
                await _failure(refusal)(scope, receive, sending)
            else:
                await routes(scope, receive, sending)
        except asyncio.CancelledError:  # a stop past its grace: the answer never comes
            if not status[0]:
                with contextlib.suppress(Exception):
                    await _failure(ServeError(
                        503, "the server stopped before this answer was ready; try again",
                        kind="server_error", code="server_stopping",
                        headers={"connection": "close", "retry-after": "1"}))(
                            scope, receive, sending)
        except Exception as exc:  # never uvicorn's traceback
            if not status[0]:
                with contextlib.suppress(Exception):
                    await _failure(exc)(scope, receive, sending)
        finally:
            if log is not None:
                log.write(method=method[:20], path=path[:200], status=status[0] or None,
                          duration_ms=round((time.perf_counter() - started) * 1000, 3),
                          **entry)

    return guard


def _refusal(scope: dict[str, Any], method: str, path: str,
             token: str | None) -> ServeError | None:
    """Why the guard answers instead of a route: the HTTP version (of a pipelined request:
    the protocol checks the others), the method, the token, the path."""
    if scope["http_version"] not in ("1.0", "1.1"):
        return ServeError(505, f"HTTP/{scope['http_version'][:10]} is not supported "
                               "(HTTP/1.1 or 1.0)", code="bad_request")
    allowed = ALLOWED.get(path)
    if method not in ("GET", "POST") or (allowed is not None and method not in allowed):
        allow = ", ".join(allowed or ("GET", "POST"))
        return ServeError(405, f"{method[:20]} is not allowed on {path[:200]} "
                               f"(allowed: {allow})", code="method_not_allowed",
                          headers={"Allow": allow})
    if path == "/healthz":
        return None
    header = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            header = value.decode("latin-1")
            break
    if not bearer_ok(header, token):
        return ServeError(401, "missing or wrong bearer token", kind="authentication_error",
                          code="invalid_api_key")
    if allowed is None:
        return ServeError(404, f"no endpoint {method} {path[:200]}", code="not_found")
    return None


class _Pump:
    """A stream's events, taken one at a time on worker threads, and closed once when the
    answer ends -- by the thread taking an event if one is (a generator cannot be closed
    while it runs), else on a thread of its own (never blocking the event loop)."""

    def __init__(self, events: Iterator[dict[str, Any]]) -> None:
        self._events = events
        self._lock = threading.Lock()
        self._stopped = self._closed = False

    def next(self) -> dict[str, Any] | None:
        """The next event; ``None`` at the end (or once stopped)."""
        with self._lock:
            try:
                event = None if self._stopped else next(self._events, None)
                self._closed |= event is None and not self._stopped  # ran out: nothing to close
                return event
            finally:
                if self._stopped:
                    self._close()

    def stop(self) -> None:
        self._stopped = True
        if not self._closed and self._lock.acquire(blocking=False):  # none being taken
            self._lock.release()
            threading.Thread(target=self._closing, daemon=True, name="stream-close").start()

    def _closing(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            close = getattr(self._events, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()


def _failure_event(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, ServeError):
        return exc.body()
    return ServeError(500, f"{type(exc).__name__}: {exc}", kind="server_error").body()


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


# -- the server ----------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers (the caller's own stop them), with
    the thread limiter raised to the connection bound."""

    def __init__(self, config: _Config, threads: int) -> None:
        super().__init__(config)
        self.threads = threads
        #: Requests still under way when a stop's grace ran out (they were cancelled).
        self.unfinished = 0

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = self.threads
        await super().startup(sockets)

    async def _wait_tasks_to_complete(self) -> None:
        try:
            await super()._wait_tasks_to_complete()
        except asyncio.CancelledError:  # the grace ran out: what is left is cancelled
            self.unfinished = len(self.server_state.tasks)
            raise


def _quiet_uvicorn() -> None:
    """uvicorn's loggers: its warnings about bad requests are answered as JSON already;
    what is left (errors) is one line on stderr, never a traceback."""
    import logging

    class OneLine(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"modelsmith serve: {record.getMessage()}"

    for name in ("uvicorn.error", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        if not any(getattr(h, "_modelsmith", False) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(OneLine())
            handler._modelsmith = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
            # A stop past its grace is the caller's to report (it knows how many).
            logger.addFilter(lambda record: "graceful shutdown" not in str(record.msg))
        logger.setLevel(logging.ERROR)
        logger.propagate = False


class ServiceServer:
    """The uvicorn server for a service, bound at construction (``server_address`` says
    where), serving on a thread of its own after :meth:`start` until :meth:`stop`. With
    ``app``, it serves that ASGI app instead (``service`` is then None), with the same
    limits on connections, request heads and slow clients."""

    def __init__(self, service: Service, host: str, port: int, *, token: str | None,
                 max_body: int = MAX_BODY, read_timeout: float = READ_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS, backlog: int = BACKLOG,
                 keep_alive: float = KEEP_ALIVE,
                 access_log: IO[str] | str | None = None, app: Any = None) -> None:
        if read_timeout <= 0 or max_connections < 1 or backlog < 1 or max_body < 0 \
                or keep_alive <= 0:
            raise ValueError("read_timeout, max_connections, backlog and keep_alive must be "
                             "positive")
        self.service = service
        self.backlog = backlog
        self.log = AccessLog(access_log) if access_log is not None else None
        self.limits = _Limits(read_timeout=read_timeout, max_body=max_body,
                              max_connections=max_connections, log=self.log)
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        self._socket = socket.create_server((host, port), family=family, backlog=backlog)
        _quiet_uvicorn()
        if app is None:
            app = build_app(service, token=token, max_body=max_body,
                            read_timeout=read_timeout, log=self.log)
        config = _Config(
            app,
            http=Protocol, ws="none", lifespan="off", interface="asgi3", loop="asyncio",
            log_config=None, access_log=False, server_header=False, proxy_headers=False,
            limit_concurrency=max_connections, backlog=backlog,
            timeout_keep_alive=keep_alive,  # type: ignore[arg-type]
            h11_max_incomplete_event_size=MAX_HEAD)
        config.limits = self.limits
        self.server = _Server(config, threads=max(40, max_connections))
        self._thread: threading.Thread | None = None

    @property
    def server_address(self) -> tuple[str, int]:
        return self._socket.getsockname()[:2]

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self.server.server_state.connections)

    @property
    def refused(self) -> int:
        """Connections refused (503) because ``max_connections`` were open."""
        return self.limits.refused

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 30.0) -> ServiceServer:
        """Serve on a thread of its own; returns once it accepts connections."""
        failed: list[BaseException] = []

        def run() -> None:
            try:
                self.server.run(sockets=[self._socket])
            except BaseException as exc:  # SystemExit from a failed startup too
                failed.append(exc)

        self._thread = threading.Thread(target=run, daemon=True, name="serve")
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if failed or not self._thread.is_alive():
                raise RuntimeError(f"the server did not start: {failed[:1]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within {timeout:g} s")
            time.sleep(0.01)
        return self

    def stop(self, grace: float = 5.0) -> int:
        """Stop serving: no new connections, the ones still sending their request cut, the
        answers under way given ``grace`` seconds (then cancelled). Returns how many
        requests were still under way then (their threads end with the process)."""
        self.server.config.timeout_graceful_shutdown = grace  # type: ignore[assignment]
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(grace + 2.0)
            if self._thread.is_alive():  # the loop still ends with the process
                self.server.force_exit = True
        else:
            self._socket.close()
        if self.log is not None:
            self.log.close()
        return self.server.unfinished


def make_server(service: Service, host: str = "127.0.0.1", port: int = 8000, *,
                token: str | None = None, max_body: int = MAX_BODY,
                read_timeout: float = READ_TIMEOUT, max_connections: int = MAX_CONNECTIONS,
                backlog: int = BACKLOG, keep_alive: float = KEEP_ALIVE,
                access_log: IO[str] | str | None = None) -> ServiceServer:
    """The HTTP server for ``service``, bound but not serving (``start`` serves on a thread
    of its own, ``stop`` ends it); ``access_log``: a stream or a path for the JSON lines."""
    return ServiceServer(service, host, port, token=token, max_body=max_body,
                         read_timeout=read_timeout, max_connections=max_connections,
                         backlog=backlog, keep_alive=keep_alive, access_log=access_log)


def make_asgi_server(app: Any, host: str = "127.0.0.1", port: int = 8000, *,
                     max_body: int = MAX_BODY, read_timeout: float = READ_TIMEOUT,
                     max_connections: int = MAX_CONNECTIONS, backlog: int = BACKLOG,
                     keep_alive: float = KEEP_ALIVE) -> ServiceServer:
    """The same HTTP server for another ASGI ``app`` (the dashboard): bound, not serving."""
    return ServiceServer(None, host, port, token=None, max_body=max_body,  # type: ignore[arg-type]
                         read_timeout=read_timeout, max_connections=max_connections,
                         backlog=backlog, keep_alive=keep_alive, app=app)
