"""``route``, ``package``, ``serve`` and ``mcp``: the fleet in service."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from modelsmith.errors import EXIT_FAILED

from ._base import app, guard, json_option, print_json, say


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
              help="What runs the models (vllm: pip install 'modelsmith[gpu]', CUDA).")
@click.option("--device", default="cpu", show_default=True,
              help="Where the transformers backend runs: cpu, cuda, cuda:1, ...")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]),
              default="float32", show_default=True, help="Weights' type (transformers).")
@click.option("--request-timeout", "request_timeout_s", type=click.FloatRange(min=0.1),
              default=120.0, show_default=True,
              help="Seconds a request waits for its answer before a 504.")
@click.pass_context
@guard
def serve(ctx: click.Context, host: str, port: int, token_env: str, window_s: float,
          max_batch: int | None, batch_wait_ms: float, engine: str, device: str,
          dtype: str, request_timeout_s: float) -> None:
    """An OpenAI-compatible endpoint: POST /v1/chat/completions (model = a specialist or
    auto), GET /v1/models, POST /v1/route, POST /v1/feedback, GET /metrics, GET /healthz.
    Versions follow the event log; concurrent requests to a version are batched."""
    if engine == "transformers" and device != "cpu":
        import torch

        if not device.startswith("cuda") or not torch.cuda.is_available():
            raise click.ClickException(f"--device {device}: no such device here (cpu, or "
                                       "cuda[:N] on a machine with a CUDA GPU)")
    server = app(ctx).server(host, port, token=os.environ.get(token_env) or None,
                             window_s=window_s, max_batch=max_batch,
                             max_wait_ms=batch_wait_ms, backend=engine, device=device,
                             dtype=dtype, request_timeout_s=request_timeout_s)
    bound = server.server_address
    say(f"serving on http://{bound[0]}:{bound[1]}/v1 (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.service.close()


@click.command()
@click.pass_context
@guard
def mcp(ctx: click.Context) -> None:
    """A stdio MCP server: one tool per specialist (structured answer, version, latency),
    plus fleet_status and evaluation_summary."""
    try:
        server, service = app(ctx).mcp_server()
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise click.ClickException(f"modelsmith mcp needs the mcp package: pip install "
                                   f"'modelsmith[serve]' ({exc})") from None
    try:
        server.run("stdio")
    finally:
        service.close()
