"""A small OpenAI-compatible chat-completions server on 127.0.0.1 for tests: scripted
replies (streamed as server-sent chunks when the request says ``stream: true``), a request
log and a concurrency meter. The real clients talk to it over HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = tuple[int, Any, dict[str, str]]  # status, body (dict -> JSON, bytes -> raw), headers


def completion(content: str, *, finish: str = "stop", tokens: int | None = 3) -> dict:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "fake-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish}],
    }
    if tokens is not None:
        body["usage"] = {"prompt_tokens": 5, "completion_tokens": tokens,
                         "total_tokens": 5 + tokens}
    return body


class FakeOpenAI:
    """POST /v1/chat/completions like OpenAI; scripted replies, request log, concurrency meter."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], dict]] = []
        self.script: list[Reply] = []
        self.responder: Callable[[dict], Reply] | None = None
        self.delay_s: Callable[[dict], float] = lambda _body: 0.0
        self.active = 0
        #: Whether ``stream: true`` requests get server-sent chunks (else a whole answer).
        self.streams = True
        self.chunk_delay_s = 0.0
        self.max_active = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}}, {})
                    return
                body = json.loads(raw)
                with fake.lock:
                    fake.calls.append((dict(self.headers), body))
                    fake.active += 1
                    fake.max_active = max(fake.max_active, fake.active)
                    scripted = fake.script.pop(0) if fake.script else None
                try:
                    time.sleep(fake.delay_s(body))
                    if scripted is not None:
                        reply = scripted
                    elif fake.responder is not None:
                        reply = fake.responder(body)
                    else:
                        prompt = body["messages"][-1]["content"]
                        reply = (200, completion(f"echo:{prompt}"), {})
                finally:
                    # Leave the count before answering: once the client has the answer it
                    # may send its next request, and that must not look like one too many.
                    with fake.lock:
                        fake.active -= 1
                if body.get("stream") and reply[0] == 200 and isinstance(reply[1], dict) \
                        and fake.streams:
                    self._stream(reply[1], bool((body.get("stream_options") or {})
                                                .get("include_usage")))
                    return
                self._send(*reply)

            def _stream(self, answer: dict, usage: bool) -> None:
                """A completion as OpenAI streams it: a chunk per word, then the finish
                (and the usage when asked), then ``[DONE]``."""
                choice = answer["choices"][0]
                text = choice["message"]["content"] or ""
                words = [w for w in text.replace(" ", "\0 ").split("\0") if w]
                head = {"id": answer["id"], "object": "chat.completion.chunk",
                        "model": answer["model"], "created": answer["created"]}
                events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant"},
                                                "finish_reason": None}]}]
                events += [{**head, "choices": [{"index": 0, "delta": {"content": w},
                                                 "finish_reason": None}]} for w in words]
                events.append({**head, "choices": [{"index": 0, "delta": {},
                                                    "finish_reason": choice["finish_reason"]}]})
                if usage and answer.get("usage"):
                    events.append({**head, "choices": [], "usage": answer["usage"]})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for event in events:
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(fake.chunk_delay_s)
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True

            def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                headers = dict(headers)
                self.send_header("Content-Type", headers.pop("Content-Type",
                                                             "application/json"))
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


