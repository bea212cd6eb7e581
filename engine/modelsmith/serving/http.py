"""``modelsmith serve``: an OpenAI-compatible HTTP endpoint in front of the :class:`.Service`.

``POST /v1/chat/completions`` answers with a specialist (``model`` names it, or ``auto``
lets the router pick from the last user message; ``stream: true`` sends the answer as
server-sent chunks). ``GET /v1/models`` lists the specialists, ``POST /v1/route`` shows the
routing decision, ``POST /v1/feedback`` scores an earlier response (``{"id", "score"}``),
``GET /metrics`` is Prometheus text, ``GET /healthz`` says it is up.

Loopback by default; with a token every request but ``/healthz`` needs
``Authorization: Bearer <token>``. Bodies over the size limit, malformed JSON, unknown
models and bad fields get a 4xx with an OpenAI-style JSON error, and the server keeps
serving.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from .service import ServeError, Service

#: Bodies larger than this are refused (413).
MAX_BODY = 1 << 20


class ServiceServer(ThreadingHTTPServer):
    """A threading HTTP server holding what its handlers answer with."""

    def __init__(self, address: tuple[str, int], service: Service, *,
                 token: str | None, max_body: int) -> None:
        self.service = service
        self.token = token
        self.max_body = max_body
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    """One request: parse it, check the token, route it to the service, send the answer
    or the error."""

    server: ServiceServer
    server_version = "modelsmith"

    def log_message(self, *args: Any) -> None:  # quiet; metrics say what happened
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            self._dispatch(method, path)
        except ServeError as exc:
            self._send(exc.status, exc.body())
        except Exception as exc:  # the server keeps serving
            self._send(500, ServeError(500, f"{type(exc).__name__}: {exc}",
                                       kind="server_error").body())

    def _dispatch(self, method: str, path: str) -> None:
        if path == "/healthz" and method == "GET":
            self._send(200, {"ok": True})
            return
        if not self._authorised():
            raise ServeError(401, "missing or wrong bearer token",
                             kind="authentication_error", code="invalid_api_key")
        endpoint = self.routes.get((method, path))
        if endpoint is None:
            raise ServeError(404, f"no endpoint {method} {path}", code="not_found")
        endpoint(self)

    # -- endpoints ---------------------------------------------------------------------------

    def _metrics(self) -> None:
        self._send_bytes(200, self.server.service.metrics.prometheus().encode("utf-8"),
                         "text/plain; version=0.0.4")

    def _models(self) -> None:
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
        answer = self.server.service.complete(body)
        if stream:
            self._stream(chunks(answer))
        else:
            self._send(200, answer)

    routes: ClassVar[dict[tuple[str, str], Callable[[Handler], None]]] = {
        ("GET", "/metrics"): _metrics,
        ("GET", "/v1/models"): _models,
        ("POST", "/v1/feedback"): _feedback,
        ("POST", "/v1/chat/completions"): _complete,
        ("POST", "/v1/route"): _route,
    }

    # -- the request and the answer ----------------------------------------------------------

    def _authorised(self) -> bool:
        token = self.server.token
        return token is None or self.headers.get("Authorization") == f"Bearer {token}"

    def _body(self) -> dict[str, Any]:
        """The request's JSON object, within the size limit."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ServeError(400, "bad Content-Length") from None
        limit = self.server.max_body
        if length > limit:
            self.close_connection = True
            raise ServeError(413, f"the body has {length} bytes; the limit is {limit}",
                             code="body_too_large")
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ServeError(400, f"the body is not JSON: {exc}", code="invalid_json") \
                from None
        if not isinstance(body, dict):
            raise ServeError(400, "the body must be a JSON object", code="invalid_json")
        return body

    def _send(self, status: int, body: Any) -> None:
        self._send_bytes(status, json.dumps(body).encode("utf-8"), "application/json")

    def _send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: list[dict[str, Any]]) -> None:
        """Server-sent events, as OpenAI streams; the answer is whole before the first
        event (a specialist's answers are a few tokens), then the connection closes."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True


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
                token: str | None = None, max_body: int = MAX_BODY) -> ServiceServer:
    """A threading HTTP server for ``service`` (``serve_forever`` runs it)."""
    return ServiceServer((host, port), service, token=token, max_body=max_body)
