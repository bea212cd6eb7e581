"""``route``, ``package``, ``serve``, ``replay`` and ``mcp``: the fleet in service."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from modelsmith.errors import EXIT_FAILED
from modelsmith.stages import STAGES

from ._base import Progress, app, console, guard, json_option, print_json, say, warn_open


@click.command()
@click.argument("text")
@click.option("--meta", "meta", multiple=True, metavar="KEY=VALUE",
              help="Request metadata (repeatable).")
@click.option("--task", default=None, help="The caller's task label.")
@click.option("--explain", is_flag=True, help="Say why each earlier rule did not match.")
@json_option
@click.pass_context
@guard
def route(ctx: click.Context, text: str, meta: tuple[str, ...], task: str | None,
          explain: bool, as_json: bool) -> None:
    """Which specialist the router sends TEXT to, by which rule (policies/routing.yaml)."""
    from modelsmith.serving.router import NoRoute, Request

    pairs = {}
    for item in meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--meta")
        pairs[key] = value
    router = app(ctx).router()
    request = Request(text, pairs, task)
    try:
        decision = router.route(request)
        chosen: dict[str, Any] = {"specialist": decision.specialist, "rule": decision.rule}
    except NoRoute as exc:
        chosen = {"specialist": None, "rule": None, "error": str(exc)}
    steps = router.explain(request) if explain else []
    if as_json:
        print_json({**chosen, "explain": [{"rule": r, "route": to, "failed": why}
                                          for r, to, why in steps]})
    else:
        for rule, to, why in steps:
            click.echo(f"  {'->' if why is None else '  '} {rule} ({to}): "
                       f"{'matched' if why is None else why}")
        if chosen["specialist"] is None:
            click.echo(f"rejected: {chosen['error']}")
        else:
            click.echo(f"{chosen['specialist']} (rule {chosen['rule'] or 'default'})")
    if chosen["specialist"] is None:
        sys.exit(EXIT_FAILED)


@click.command("package")
@click.argument("specialist")
@click.argument("version")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@json_option
@click.pass_context
@guard
def package_cmd(ctx: click.Context, specialist: str, version: str, out: Path,
                as_json: bool) -> None:
    """Write VERSION as a serving artifact in OUT: merged weights, tokenizer, and a manifest
    with the prompt contract, lineage and the rollback contract."""
    manifest = app(ctx).package(specialist, version, out)
    if as_json:
        print_json(manifest)
        return
    back = manifest["rollback"]
    click.echo(f"packaged {specialist} {version} in {out} (artifact "
               f"{manifest['artifact_hash'][:12]}); falls back to {back['version'] or '-'}")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind (loopback unless you mean it).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--token-env", default="MODELSMITH_SERVE_TOKEN", show_default=True,
              metavar="VAR", help="Environment variable holding the bearer token (unset: "
                                  "no token required).")
@click.option("--window", "window_s", type=click.FloatRange(min=1), default=60.0,
              show_default=True, help="Seconds per MetricsObserved window.")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="Concurrent requests to one version answered in one backend call "
                   "[default: the backend's batch size; 1 turns batching off].")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0, max=1000), default=0.0,
              show_default=True, help="How long a batch waits for company before it starts.")
@click.option("--backend", "engine", type=click.Choice(["transformers", "vllm"]),
              default="transformers", show_default=True,
              help="What runs the models (vllm: pip install -e '.[gpu]', CUDA).")
@click.option("--device", default="cpu", show_default=True,
              help="Where the transformers backend runs: cpu, cuda, cuda:1, ...")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]),
              default="float32", show_default=True, help="Weights' type (transformers).")
@click.option("--request-timeout", "request_timeout_s", type=click.FloatRange(min=0.1),
              default=120.0, show_default=True,
              help="Seconds a request waits for its answer before a 504.")
@click.option("--read-timeout", "read_timeout_s", type=click.FloatRange(min=0.1),
              default=10.0, show_default=True,
              help="Seconds a connection has to send its whole request before a 408.")
@click.option("--max-connections", type=click.IntRange(min=1), default=1024,
              show_default=True, help="Connections served at once; more get a 503.")
@click.option("--shutdown-grace", "grace_s", type=click.FloatRange(min=0), default=5.0,
              show_default=True,
              help="On SIGINT/SIGTERM, seconds the answers under way get to finish.")
@click.option("--access-log", "access_log", default="-", show_default=True, metavar="PATH",
              help="Where the access log goes, one JSON line per request (- is stderr, "
                   "none turns it off).")
@click.pass_context
@guard
def serve(ctx: click.Context, host: str, port: int, token_env: str, window_s: float,
          max_batch: int | None, batch_wait_ms: float, engine: str, device: str,
          dtype: str, request_timeout_s: float, read_timeout_s: float, max_connections: int,
          grace_s: float, access_log: str) -> None:
    """An OpenAI-compatible endpoint: POST /v1/chat/completions (model = a specialist or
    auto), GET /v1/models, POST /v1/route, POST /v1/feedback, GET /metrics, GET /healthz.
    Versions follow the event log; concurrent requests to a version are batched.

    SIGINT or SIGTERM stops it: no new connections, the answers under way get
    --shutdown-grace seconds, the last metrics window is recorded. A second signal exits
    at once (without that window); one before it serves exits at once too."""
    signals = _Signals()
    try:
        if engine == "transformers" and device != "cpu":
            import torch

            if not device.startswith("cuda") or not torch.cuda.is_available():
                raise click.ClickException(f"--device {device}: no such device here (cpu, "
                                           "or cuda[:N] on a machine with a CUDA GPU)")
        log: Any = None if access_log == "none" else sys.stderr if access_log == "-" \
            else access_log
        token = os.environ.get(token_env) or None
        warn_open(host, token, token_env, "can call every specialist")
        server = app(ctx).server(host, port, token=token,
                                 limits={"read_timeout": read_timeout_s,
                                         "max_connections": max_connections,
                                         "access_log": log},
                                 window_s=window_s, max_batch=max_batch,
                                 max_wait_ms=batch_wait_ms, backend=engine, device=device,
                                 dtype=dtype, request_timeout_s=request_timeout_s)
        try:
            signals.run(server, lambda at: f"serving on http://{at[0]}:{at[1]}/v1 (Ctrl-C stops)")
        finally:
            try:
                left = server.stop(grace_s)
                if left:
                    say(f"stopping: {left} answer(s) still under way after {grace_s:g} s; "
                        "not waiting for them")
                server.service.close(timeout=grace_s)
            finally:
                signals.restore()
    finally:
        signals.restore()
    _exit_if_busy()


class _Signals:
    """SIGINT and SIGTERM while ``serve`` runs: before it serves, the process exits at once
    (nothing is under way); once it serves, the first one sets :attr:`stop` (the main
    thread stops the server, on its own thread, and drains it) and a second exits at once.
    Only the main thread can take signals: elsewhere (a test's thread) nothing changes."""

    def __init__(self) -> None:
        import signal
        import threading

        self.stop = threading.Event()
        self._serving = False
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal)
                              for s in (signal.SIGINT, signal.SIGTERM)}

    def run(self, server: Any, banner: Callable[[tuple[str, int]], str]) -> None:
        """Start ``server``, say where it listens (``banner`` of its address), and wait until
        it stops or a signal asks it to (the caller stops it, in its ``finally``)."""
        server.start()
        self.serving()  # it answers from here on: a signal now drains it (before the banner)
        say(banner(server.server_address))
        while server.running and not self.stop.wait(0.5):
            pass

    def serving(self) -> None:
        self._serving = True

    def _on_signal(self, signum: int, _frame: Any) -> None:
        import signal

        name = signal.Signals(signum).name
        if not self._serving or self.stop.is_set():
            again = "again: exiting now, without the last metrics window" \
                if self.stop.is_set() else "before serving: exiting now"
            os.write(2, f"{name} {again}\n".encode())
            os._exit(128 + signum)
        self.stop.set()
        os.write(2, f"{name}: stopping (again to exit at once)\n".encode())

    def restore(self) -> None:
        import signal

        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _exit_if_busy() -> None:
    """After a stop: threads still busy past the grace (a generation that does not end, a
    shadow) would hold the interpreter's exit; leave without them."""
    import threading
    import time

    busy = [t for t in threading.enumerate()
            if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    until = time.monotonic() + 1.0  # idle pool threads are on their way out
    for thread in busy:
        thread.join(max(0.0, until - time.monotonic()))
    if any(t.is_alive() for t in busy):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@click.command()
@click.argument("file", required=False, metavar="[FILE]")
@click.option("--suite", metavar="SPECIALIST", default=None,
              help="Send the specialist's eval scenarios (input as the user message, the "
                   "expected answer as the reference) instead of a FILE.")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, metavar="URL",
              help="The running `modelsmith serve` (its /v1 may be included).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Requests per second overall, at most [default: unlimited].")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True,
              help="Requests in flight at once.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Send only the first N requests (all are checked).")
@click.option("--split", type=click.Choice(["core", "dev", "heldout", "all"]), default=None,
              help="With --suite: which scenarios [default: core].")
@click.option("--model", default=None, metavar="NAME",
              help="Send every request to NAME instead (a specialist, or auto).")
@click.option("--feedback", default="line", show_default=True,
              metavar="line|none|reference|NUMBER",
              help="Feedback after each answer: each line's recorded 'feedback' (line), "
                   "none, 1/0 for agreeing with the line's reference (reference), or a "
                   "fixed score in [0, 1].")
@click.option("--feedback-stage", type=click.Choice([s for s in STAGES if s != "shadow"]),
              default=None,
              help="Send feedback only for answers this stage served (e.g. canary).")
@click.option("--token-env", default="MODELSMITH_SERVE_TOKEN", show_default=True,
              metavar="VAR", help="Environment variable holding the server's bearer token.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=120.0,
              show_default=True, help="Seconds to wait for each answer.")
@json_option
@click.pass_context
@guard
def replay(ctx: click.Context, file: str | None, suite: str | None, url: str,
           rate: float | None, concurrency: int, limit: int | None, split: str | None,
           model: str | None, feedback: str, feedback_stage: str | None, token_env: str,
           timeout_s: float, as_json: bool) -> None:
    """Send the chat requests of FILE (JSONL, one request a line; - reads stdin), or a
    specialist's eval scenarios, through a running `modelsmith serve`, and summarise:
    answers by version and stage, errors, latency, throughput, feedback.

    Every line is checked first: a bad one is named by line and field, nothing is sent
    (exit 2). Exit 0 when every request was answered, 1 when any failed or the server went
    away mid-run.
    """
    if file is not None and suite is not None:
        raise click.UsageError("give a request FILE or --suite SPECIALIST, not both")
    if file is None and suite is None:
        raise click.UsageError("give a request FILE (- reads stdin) or --suite SPECIALIST")
    if split is not None and suite is None:
        raise click.UsageError("--split picks the scenarios of --suite")
    source: Any = None
    name = None
    if file == "-":
        source, name = sys.stdin.buffer, "<stdin>"
    elif file is not None:
        source = Path(file)
        name = file
    summary = app(ctx).replay(
        source, url=url, suite=suite, split=split or "core", model=model, rate=rate,
        concurrency=concurrency, limit=limit, feedback=feedback,
        feedback_stage=feedback_stage, token=os.environ.get(token_env) or None,
        timeout_s=timeout_s, name=name, progress=Progress if sys.stderr.isatty() else None)
    if as_json:
        print_json(summary.to_dict())
    else:
        render_replay(summary.to_dict())
    if not summary.clean:
        sys.exit(EXIT_FAILED)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def render_replay(s: dict[str, Any]) -> None:
    """The replay summary for a person: totals, latency, what served, errors, feedback."""
    from rich.markup import escape
    from rich.table import Table

    rich = console()

    def out(item: Any) -> None:  # messages carry brackets ([Errno 111]): never markup
        if isinstance(item, str):
            rich.print(item, markup=False)
        else:
            rich.print(item)

    pace = f"rate {s['rate']:g}/s" if s["rate"] else "rate unlimited"
    achieved = f"{s['requests_per_s']:.1f} requests/s" if s["requests_per_s"] else "-"
    out(f"replayed {s['sent']} of {s['requests']} requests to {s['url']} in "
        f"{s['duration_s']:.2f} s: {achieved} ({pace}, concurrency {s['concurrency']})")
    out(f"ok {s['ok']}, failed {s['failed']}, not sent {s['not_sent']}")
    lat = s["latency_ms"]
    out(f"latency p50 {_ms(lat['p50'])}, p90 {_ms(lat['p90'])}, p99 {_ms(lat['p99'])}")
    if s["served"]:
        table = Table(title="served by", title_justify="left")
        for column in ("specialist", "version", "stage", "requests"):
            table.add_column(column, justify="right" if column == "requests" else "left")
        for row in s["served"]:
            table.add_row(*(escape(row[k]) for k in ("specialist", "version", "stage")),
                          str(row["requests"]))
        out(table)
    if s["errors"]:
        table = Table(title="errors", title_justify="left")
        for column in ("error", "count", "message"):
            table.add_column(column, justify="right" if column == "count" else "left",
                             overflow="fold")
        for e in s["errors"]:
            kind = " ".join(str(x) for x in (e["status"], e["code"]) if x) \
                if e["kind"] == "http" else e["kind"]
            table.add_row(escape(kind), str(e["count"]), escape(e["message"]))
        out(table)
    fb = s["feedback"]
    if fb["sent"] or fb["failed"]:
        mean = f" (mean {fb['mean']:.3f})" if fb["mean"] is not None else ""
        line = f"feedback: {fb['sent']} sent{mean}"
        if fb["failed"]:
            line += f", {fb['failed']} failed ({fb['error']})"
        out(line)
    else:
        out("feedback: none sent")
    if s["stopped"]:
        out(f"stopped early: {s['stopped']}; {s['not_sent']} requests not sent")


@click.command()
@click.option("--transport", type=click.Choice(["stdio", "streamable-http"]),
              default="stdio", show_default=True,
              help="stdio (a client starts this process) or streamable-http (a server at "
                   "http://HOST:PORT/mcp).")
@click.option("--host", default=None,
              help="With streamable-http: interface to bind [default: 127.0.0.1].")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="With streamable-http: port to bind, 0 for any free one "
                   "[default: 8001].")
@click.option("--token-env", default=None, metavar="VAR",
              help="With streamable-http: environment variable holding the bearer token "
                   "every request needs (Authorization: Bearer <token>) [default: "
                   "MODELSMITH_MCP_TOKEN; unset: no token].")
@click.pass_context
@guard
def mcp(ctx: click.Context, transport: str, host: str | None, port: int | None,
        token_env: str | None) -> None:
    """An MCP server: one tool per specialist (structured answer, version, latency), plus
    fleet_status and evaluation_summary. Over stdio, or streamable HTTP at /mcp (loopback
    requests are checked for DNS rebinding; set a token before you bind elsewhere)."""
    if transport == "stdio" and (host is not None or port is not None
                                 or token_env is not None):
        raise click.UsageError("--host, --port and --token-env are for --transport "
                               "streamable-http")
    token_var = token_env or "MODELSMITH_MCP_TOKEN"
    token = os.environ.get(token_var) or None
    if transport != "stdio":
        warn_open(host or "127.0.0.1", token, token_var, "can call every specialist")
    try:
        server, service = app(ctx).mcp_server()
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise click.ClickException(f"modelsmith mcp needs the mcp package: pip install "
                                   f"-e '.[serve]' ({exc})") from None
    try:
        if transport == "stdio":
            server.run("stdio")
        else:
            from modelsmith.serving.mcp_server import serve_streamable_http

            serve_streamable_http(server, host or "127.0.0.1", 8001 if port is None else port,
                                  ready=lambda url: say(f"serving MCP on {url} (Ctrl-C "
                                                        "stops)"), token=token)
    finally:
        service.close()
