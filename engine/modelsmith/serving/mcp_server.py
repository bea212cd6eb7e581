"""``modelsmith mcp``: the fleet as MCP tools (the ``mcp`` package, version 2), over stdio
or the streamable-HTTP transport (:func:`serve_streamable_http`: the package's own Starlette
app at ``/mcp`` under uvicorn, sessions, SSE answers, DNS-rebinding checks on loopback).

One tool per specialist, named after it: the input is the task's text (``input``, with an
optional ``user`` key for the canary split), the output is structured -- the answer, the
version that gave it, its stage and the latency; for a label task the answer is one of the
labels or the raw text, with ``valid`` saying which. Two read-only tools: ``fleet_status``
(who holds which stage) and ``evaluation_summary`` (a specialist's latest evaluation). The
answers go through the same service as ``modelsmith serve`` (split from the event log, one
model load per version). A call of a tool (or prompt) that is not there is the JSON-RPC
error -32602, as the MCP spec asks (``./dev conformance`` runs the MCP conformance suite).
Over HTTP a token (``modelsmith mcp --token-env``, ``MODELSMITH_MCP_TOKEN`` by default) puts
every request behind ``Authorization: Bearer``.
``mcp`` is imported only here: it costs 1-2 s.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field

from .service import ServeError, Service

if TYPE_CHECKING:
    from mcp.server import MCPServer

    from modelsmith.events.projection import FleetState

#: Longest input a tool takes (the HTTP endpoint's body limit is 1 MiB).
MAX_INPUT_CHARS = 100_000


class Answer(BaseModel):
    answer: str = Field(description="The specialist's answer.")
    valid: bool = Field(description="Whether the answer fits the task's output contract.")
    version: str = Field(description="The version that answered.")
    stage: str = Field(description="production or canary.")
    latency_ms: float


def build(service: Service, fleet: Callable[[], FleetState]) -> MCPServer:
    """The MCP server for ``service``; ``fleet`` folds the event log for the read-only
    tools."""
    from mcp.server import MCPServer

    mcp = MCPServer("modelsmith", instructions="Domain specialists of this Modelsmith "
                    "repository, one tool each; the version answering follows the event log.")
    for name, spec in sorted(service.repo.specialists.items()):
        mcp.add_tool(_specialist_tool(service, name, spec), name=name,
                     description=(spec.spec.description or name).strip(),
                     structured_output=True)

    def fleet_status() -> dict[str, Any]:
        """Which version holds production, canary and shadow, per specialist."""
        return fleet().to_dict()

    def evaluation_summary(specialist: str) -> dict[str, Any]:
        """The latest evaluation of ``specialist``: model, composite, held-out, event id."""
        state = fleet().specialists.get(specialist)
        if specialist not in service.repo.specialists:
            from mcp.server.mcpserver.exceptions import ToolError

            raise ToolError(f"no specialist {specialist!r} (known: "
                             f"{', '.join(sorted(service.repo.specialists))})")
        records = [(c.version, e) for c in (state.candidates.values() if state else [])
                   for e in c.evals] + [(None, e) for e in (state.model_evals if state else [])]
        if not records:
            return {"specialist": specialist, "evaluation": None}
        version, latest = max(records, key=lambda r: r[1].at)
        return {"specialist": specialist, "evaluation": {
            "event": latest.event_id, "version": version, "model": latest.model,
            "composite": latest.composite, "heldout": latest.heldout,
            "at": latest.at.isoformat(), "suite_hash": latest.suite_hash}}

    mcp.add_tool(fleet_status, name="fleet_status")
    mcp.add_tool(evaluation_summary, name="evaluation_summary")
    mcp.middleware.append(_unknown_names_are_protocol_errors(mcp))
    return mcp


def _unknown_names_are_protocol_errors(mcp: MCPServer) -> Any:
    """A middleware: ``tools/call`` of a tool we do not have, or ``prompts/get`` of a
    prompt (we have none), is the JSON-RPC error -32602 (invalid params) the MCP spec asks
    for; the package answers the first with a tool result flagged ``isError`` (which reads
    as the tool having run and failed) and the second with error code 0."""
    from mcp.shared.exceptions import MCPError

    invalid_params = -32602

    async def middleware(ctx: Any, call_next: Any) -> Any:
        name = (ctx.params or {}).get("name") if ctx.request_id is not None else None
        if ctx.method == "tools/call" and isinstance(name, str) and \
                name not in {tool.name for tool in await mcp.list_tools()}:
            raise MCPError(invalid_params, f"Unknown tool: {name}")
        if ctx.method == "prompts/get" and isinstance(name, str) and \
                name not in {prompt.name for prompt in await mcp.list_prompts()}:
            raise MCPError(invalid_params, f"Unknown prompt: {name}")
        return await call_next(ctx)

    return middleware


def _specialist_tool(service: Service, name: str, spec: Any) -> Callable[..., Answer]:
    output = spec.spec.task.output
    labels = list(getattr(output, "labels", None) or [])

    def answer(input: str, user: str | None = None) -> Answer:
        from mcp.server.mcpserver.exceptions import ToolError

        from modelsmith.evaluation.criteria import extract_label

        if not input.strip():
            raise ToolError("input is empty")
        started = time.perf_counter()
        try:
            reply = service.complete({"model": name, "user": user or uuid.uuid4().hex,
                                      "messages": [{"role": "user", "content": input}]})
        except ServeError as exc:  # no version to answer with, a failed generation
            raise ToolError(exc.message) from None
        text = reply["choices"][0]["message"]["content"].strip()
        valid = service.scorer(name).score(text).format_ok  # the eval's format check
        if labels and valid:  # the label as the contract spells it
            got = extract_label(text).casefold()
            text = next(label for label in labels if label.casefold() == got)
        return Answer(answer=text, valid=valid,
                      version=reply["modelsmith"]["version"],
                      stage=reply["modelsmith"]["stage"],
                      latency_ms=round((time.perf_counter() - started) * 1000, 1))

    answer.__doc__ = (f"Ask the {name} specialist. input: the text to decide on"
                      + (f" (answers one of {', '.join(labels)})" if labels else "") + ".")
    # The input schema is the task's: what the input fills in the prompt, what comes back.
    template = spec.spec.task.prompt_template
    returns = (f"one of {', '.join(labels)}" if labels else
               "a JSON document" if output.kind == "json" else "free text")
    answer.__annotations__ = {
        "input": Annotated[str, Field(
            min_length=1, max_length=MAX_INPUT_CHARS,
            description=f"The text the task is about; it fills {{input}} in the prompt "
                        f"{template!r}. The answer is {returns}.")],
        "user": Annotated[str | None, Field(
            description="A stable key of the caller: the canary answers a fixed share of "
                        "keys.")],
        "return": Answer,
    }
    return answer


def serve_streamable_http(mcp: MCPServer, host: str, port: int,
                          ready: Callable[[str], None], token: str | None = None) -> None:
    """Serve ``mcp`` over streamable HTTP at ``http://host:port/mcp`` until SIGINT or
    SIGTERM: no new connections, open ones finish (a second signal stops waiting for them),
    then this returns (uvicorn would re-raise the signal and kill the process before the
    caller closes its service). The socket is
    listening before ``ready`` gets the URL, so port 0 names the port it got. With a
    ``token`` every request needs ``Authorization: Bearer <token>`` (:func:`with_token`)."""
    import socket

    import uvicorn

    app = mcp.streamable_http_app(host=host)
    if token is not None:
        app = with_token(app, token)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)  # connections wait in the backlog while uvicorn starts
    except OSError as exc:
        sock.close()
        from modelsmith.errors import ModelsmithError

        raise ModelsmithError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") \
            from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    ready(f"http://{shown}:{bound}/mcp")
    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            self.force_exit = self.should_exit
            self.should_exit = True

    Server(uvicorn.Config(app, log_level="warning", lifespan="on")).run(sockets=[sock])


def with_token(app: Any, token: str) -> Any:
    """``app`` (ASGI) behind a bearer token, checked as ``serve`` checks its own (the scheme
    case-insensitive, the token in constant time): an HTTP request without it gets a 401
    with ``WWW-Authenticate: Bearer`` and a JSON-RPC error body, before the MCP app sees a
    byte of it. The lifespan passes through (the app's session manager starts there)."""
    import json

    from .wire import bearer_ok

    body = json.dumps({"jsonrpc": "2.0", "id": None,
                       "error": {"code": -32001,
                                 "message": "missing or wrong bearer token"}}).encode()

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = next((value.decode("latin-1") for key, value in scope["headers"]
                           if key == b"authorization"), None)
            if not bearer_ok(header, token):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()),
                                        (b"www-authenticate", b'Bearer realm="modelsmith"')]})
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return guarded
