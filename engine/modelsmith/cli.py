"""The `modelsmith` command: parses arguments, calls one service, renders the result.

Heavy or slow imports (rich, the specs loader) happen inside the commands that need them,
so `modelsmith --help` and `validate` start fast and never import torch, dvc or mcp.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from modelsmith import __version__
from modelsmith.errors import (
    EXIT_BELOW_TARGET,
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_INVALID,
    ModelsmithError,
)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the engine's errors into one clear line and an exit code, never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:
            # `modelsmith log | head`: the reader left; nothing is wrong.
            sys.stderr.close()
            sys.exit(0)
        except Exception as exc:
            if isinstance(exc, ModelsmithError):
                for line in exc.user_lines():
                    click.echo(line, err=True)
                sys.exit(exc.exit_code)
            if os.environ.get("MODELSMITH_DEBUG"):
                raise
            click.echo(
                f"internal error: {type(exc).__name__}: {exc}\n"
                "(set MODELSMITH_DEBUG=1 to see the traceback, and please report it)",
                err=True,
            )
            sys.exit(EXIT_INTERNAL)

    return wrapper


def _workspace(ctx: click.Context):
    from modelsmith.workspace import Workspace

    ws = Workspace.find(ctx.obj["repo"])
    ctx.call_on_close(ws.close)
    return ws


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-C", "--repo", default=".", metavar="PATH", show_default=True,
    help="The Modelsmith repository (any folder inside it).",
)
@click.version_option(__version__, prog_name="modelsmith")
@click.pass_context
def cli(ctx: click.Context, repo: str) -> None:
    """Modelsmith: evaluate, train and govern small domain-specialist models.

    Desired state is YAML in git (specialists/, evals/, policies/, config/); actual state
    is the event log on the branch modelsmith/events.
    """
    ctx.ensure_object(dict)
    ctx.obj["repo"] = repo


# ------------------------------------------------------------------ specs


@cli.command()
@click.argument("path", required=False, type=click.Path(file_okay=False, path_type=Path))
@json_option
@click.pass_context
@_guard
def validate(ctx: click.Context, path: Path | None, as_json: bool) -> None:
    """Check every declarative file of the repository; list all errors (exit 2)."""
    from modelsmith.specs import SpecError, load_repository

    root = (path or Path(ctx.obj["repo"])).resolve()
    if not root.is_dir():
        raise click.BadParameter(f"{root} is not a folder", param_hint="PATH")
    try:
        repo = load_repository(root)
    except SpecError as exc:
        if as_json:
            _print_json({"ok": False, "root": str(root),
                         "errors": [i.to_dict() for i in exc.issues]})
        else:
            for issue in exc.issues:
                click.echo(str(issue), err=True)
            n = len(exc.issues)
            click.echo(f"{n} error{'s' if n != 1 else ''} in {root}", err=True)
        sys.exit(EXIT_INVALID)
    counts = {
        "specialists": len(repo.specialists),
        "suites": len(repo.suites),
        "scenarios": sum(len(s.scenarios) for s in repo.suites.values()),
        "policies": len(repo.policies),
        "routing_rules": len(repo.routing.spec.rules) if repo.routing else 0,
        "hosts": len(repo.clusters.hosts),
        "models": len(repo.clusters.models),
    }
    if as_json:
        _print_json({"ok": True, "root": str(root), "errors": [], "counts": counts})
    else:
        parts = ", ".join(_count(v, k.replace("_", " ")) for k, v in counts.items())
        click.echo(f"ok: {parts}")


def _count(n: int, plural: str) -> str:
    singular = plural[:-3] + "y" if plural.endswith("ies") else plural[:-1]
    return f"{n} {singular if n == 1 else plural}"


@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write <Kind>.schema.json files here (default: print one JSON object).")
@_guard
def schema(out: Path | None) -> None:
    """JSON Schema for every declarative kind (for editors and CI)."""
    from modelsmith.specs import json_schemas, write_schemas

    if out is None:
        _print_json(json_schemas())
        return
    for written in write_schemas(out):
        click.echo(str(written))


# ------------------------------------------------------------------ the log


@cli.command()
@click.option("--at", "when", default=None, metavar="TIME|COMMIT",
              help="The fleet as it was then: an ISO date/time (UTC) or a git revision.")
@json_option
@click.pass_context
@_guard
def status(ctx: click.Context, when: str | None, as_json: bool) -> None:
    """Fleet table: which version holds production, canary and shadow now (or --at)."""
    ws = _workspace(ctx)
    fleet = ws.overview_at(when) if when else ws.overview()
    rows, note = fleet["specialists"], fleet.get("specs_error")
    if as_json:
        _print_json(fleet)
        return
    from rich.table import Table

    where = fleet["at"][:19] if when else (fleet["tip"] or "empty log")[:12]
    table = Table(title=f"fleet at {where} · {fleet['events']} events")
    for col in ("specialist", "production", "canary", "shadow", "candidates", "latest",
                "events"):
        table.add_column(col, justify="right" if col in ("candidates", "events") else "left")
    for row in rows:
        latest = row.get("latest_candidate")
        latest_txt = "-"
        if latest:
            comp = latest["composite"]
            latest_txt = f"{latest['version']}" + (f" ({comp:.3f})" if comp is not None else "")
        table.add_row(
            row["name"],
            _stage_cell(row, "production"),
            _stage_cell(row, "canary"),
            _stage_cell(row, "shadow"),
            str(row["candidates"]),
            latest_txt,
            str(row["events"]),
        )
    console = _console()
    console.print(table)
    if note:
        console.print(f"[yellow]note:[/] {note}")


def _stage_cell(row: dict[str, Any], stage: str) -> str:
    held = row.get(stage)
    text = "-" if held is None else held["version"]
    if held and held.get("traffic") is not None:
        text += f" ({held['traffic']:.0%})"
    if row.get("desired") is None:  # no desired state to compare with (--at)
        return text
    want = row["desired"].get(stage)
    if want != (held["version"] if held else None):
        text += f" → {want or '-'}"
    return text


def _propose_rollback(ws: Any, specialist: str, stage: str, version: str | None,
                      event: Any) -> str | None:
    """Propose the release change that records a rollback; where it is, or None."""
    from modelsmith.gitops.forge import ForgeError
    from modelsmith.gitops.propose import propose as make_proposal

    if version is None:
        return None
    try:
        proposal, _body, _ready = make_proposal(ws.specs(), ws.fleet(), specialist, stage,
                                                version, rolled_back=event)
    except ForgeError as exc:
        click.echo(f"release not proposed: {exc}", err=True)
        return None
    return f"{proposal.forge} forge: {proposal.ref}"


def _approvals(repo: Any) -> Any:
    """The approvals of the repository's forge (none outside a git repository)."""
    from modelsmith.gitops.forge import ForgeError
    from modelsmith.gitops.propose import forge_for

    try:
        return forge_for(repo).approval
    except ForgeError:
        return lambda *_: None


@cli.command()
@click.argument("specialist")
@click.option("--version", "version", required=True, help="The candidate version (vN).")
@click.option("--stage", type=click.Choice(["shadow", "canary", "production"]), required=True)
@click.option("--traffic", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=None, help="Canary share of traffic (canary only).")
@json_option
@click.pass_context
@_guard
def propose(ctx: click.Context, specialist: str, version: str, stage: str,
            traffic: float | None, as_json: bool) -> None:
    """Ask for a release change: a branch (local forge) or pull request editing `release`,
    with the evidence -- lineage, evaluations, every gate and the event ids -- attached."""
    from modelsmith.evaluation.service import specialist_or_error
    from modelsmith.gitops.plan import logged_evidence, logged_heldout
    from modelsmith.gitops.propose import propose as make_proposal

    ws = _workspace(ctx)
    repo = ws.specs()
    specialist_or_error(repo, specialist)
    proposal, body, ready = make_proposal(repo, ws.fleet(), specialist, stage, version,
                                          traffic=traffic, heldout=logged_heldout(ws.store),
                                          sound=logged_evidence(ws.store, repo))
    if as_json:
        _print_json({"forge": proposal.forge, "ref": proposal.ref, "commit": proposal.commit,
                     "title": proposal.title, "ready": ready, "body": body})
        return
    click.echo(f"proposed on the {proposal.forge} forge: {proposal.ref} ({proposal.commit[:12]})")
    click.echo(body)
    if not ready:
        click.echo("\nnote: some gates fail today; reconcile will reject the change until "
                   "they pass", err=True)


@cli.command()
@click.argument("specialist")
@click.option("--stage", type=click.Choice(["shadow", "canary", "production"]),
              default="production", show_default=True)
@click.option("--to", "to", default=None, metavar="VERSION",
              help="The version to go back to (default: the one that held the stage before).")
@click.option("--reason", default="by hand", show_default=True)
@json_option
@click.pass_context
@_guard
def rollback(ctx: click.Context, specialist: str, stage: str, to: str | None, reason: str,
             as_json: bool) -> None:
    """Roll a stage back now (RolledBack), and propose the change that makes `release`
    match."""
    from modelsmith.gitops.reconcile import manual_rollback

    ws = _workspace(ctx)
    event = manual_rollback(ws.store, specialist, stage, to=to, reason=reason,
                            cause=ws.head_commit(), cache=ws.cache_dir / "fleet.pickle")
    back_to = event.data["to_version"]
    where = _propose_rollback(ws, specialist, stage, back_to, event)
    if as_json:
        _print_json({"event": event.id, "stage": stage, "from": event.data["from_version"],
                     "to": back_to, "proposal": where})
        return
    click.echo(f"RolledBack {specialist} {stage}: {event.data['from_version']} -> {back_to}")
    if where:
        click.echo(f"proposed the matching release on the {where}")


@cli.command()
@click.argument("text")
@click.option("--meta", "meta", multiple=True, metavar="KEY=VALUE",
              help="Request metadata (repeatable).")
@click.option("--task", default=None, help="The caller's task label.")
@click.option("--explain", is_flag=True, help="Say why each earlier rule did not match.")
@json_option
@click.pass_context
@_guard
def route(ctx: click.Context, text: str, meta: tuple[str, ...], task: str | None,
          explain: bool, as_json: bool) -> None:
    """Which specialist the router sends TEXT to, by which rule (policies/routing.yaml)."""
    from modelsmith.serving.router import NoRoute, Request, Router

    pairs = {}
    for item in meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--meta")
        pairs[key] = value
    router = Router.from_table(_workspace(ctx).specs().routing)
    request = Request(text, pairs, task)
    try:
        decision = router.route(request)
        chosen: dict[str, Any] = {"specialist": decision.specialist, "rule": decision.rule}
    except NoRoute as exc:
        chosen = {"specialist": None, "rule": None, "error": str(exc)}
    steps = router.explain(request) if explain else []
    if as_json:
        _print_json({**chosen, "explain": [{"rule": r, "route": to, "failed": why}
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


@cli.command("package")
@click.argument("specialist")
@click.argument("version")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@json_option
@click.pass_context
@_guard
def package_cmd(ctx: click.Context, specialist: str, version: str, out: Path,
                as_json: bool) -> None:
    """Write VERSION as a serving artifact in OUT: merged weights, tokenizer, and a manifest
    with the prompt contract, lineage and the rollback contract."""
    from modelsmith.artifacts.dvc import ArtifactStore
    from modelsmith.serving.package import package

    ws = _workspace(ctx)
    repo = ws.specs()
    manifest = package(repo, ws.fleet, ws.registry(repo), ArtifactStore(ws.root), specialist,
                       version, out)
    if as_json:
        _print_json(manifest)
        return
    back = manifest["rollback"]
    click.echo(f"packaged {specialist} {version} in {out} (artifact "
               f"{manifest['artifact_hash'][:12]}); falls back to {back['version'] or '-'}")


@cli.command()
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
@_guard
def serve(ctx: click.Context, host: str, port: int, token_env: str, window_s: float,
          max_batch: int | None, batch_wait_ms: float, engine: str, device: str,
          dtype: str, request_timeout_s: float) -> None:
    """An OpenAI-compatible endpoint: POST /v1/chat/completions (model = a specialist or
    auto), GET /v1/models, POST /v1/route, POST /v1/feedback, GET /metrics, GET /healthz.
    Versions follow the event log; concurrent requests to a version are batched."""
    from modelsmith.serving.http import make_server
    from modelsmith.serving.service import Service

    if engine == "transformers" and device != "cpu":
        import torch

        if not device.startswith("cuda") or not torch.cuda.is_available():
            raise click.ClickException(f"--device {device}: no such device here (cpu, or "
                                       "cuda[:N] on a machine with a CUDA GPU)")
    ws = _workspace(ctx)
    repo = ws.specs()
    service = Service(repo, ws.store, ws.registry(repo), window_s=window_s,
                      max_batch=max_batch, max_wait_ms=batch_wait_ms, backend=engine,
                      device=device, dtype=dtype, request_timeout_s=request_timeout_s)
    server = make_server(service, host, port, token=os.environ.get(token_env) or None)
    bound = server.server_address
    click.echo(f"serving on http://{bound[0]}:{bound[1]}/v1 (Ctrl-C stops)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        service.close()


@cli.command()
@click.pass_context
@_guard
def mcp(ctx: click.Context) -> None:
    """A stdio MCP server: one tool per specialist (structured answer, version, latency),
    plus fleet_status and evaluation_summary."""
    try:
        from modelsmith.serving.mcp_server import build
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise click.ClickException(f"modelsmith mcp needs the mcp package: pip install "
                                   f"'modelsmith[serve]' ({exc})") from None
    from modelsmith.serving.service import Service

    ws = _workspace(ctx)
    repo = ws.specs()
    service = Service(repo, ws.store, ws.registry(repo))
    try:
        build(service, ws.fleet).run("stdio")
    finally:
        service.close()


@cli.command("plan")
@json_option
@click.pass_context
@_guard
def plan_cmd(ctx: click.Context, as_json: bool) -> None:
    """What reconciling would do, per specialist and stage, with every gate and its
    numbers (from the event log's evidence only)."""
    from modelsmith.gitops.plan import desired_state, logged_evidence, logged_heldout, plan

    ws = _workspace(ctx)
    repo = ws.specs()
    actions = plan(desired_state(repo), ws.fleet(), heldout=logged_heldout(ws.store),
                   approval=_approvals(repo), evidence=logged_evidence(ws.store, repo))
    if as_json:
        _print_json({"tip": ws.store.tip(), "actions": [a.to_dict() for a in actions]})
        return
    marks = {"promote": "+", "demote": "-", "rollback": "<", "reject": "!", "evaluate": "?"}
    current = None
    for action in actions:
        if action.specialist != current:
            current = action.specialist
            click.echo(current)
        moving = f"{action.previous or '-'} -> {action.version or '-'}"
        click.echo(f"  {marks[action.kind]} {action.kind} {action.stage}: {moving}")
        click.echo(f"      {action.reason}")
        for gate in action.gates:
            click.echo(f"      {'ok  ' if gate.passed else 'FAIL'} {gate.name}: {gate.detail}")
    counts = {kind: sum(a.kind == kind for a in actions) for kind in marks}
    if not actions:
        click.echo("No changes: the event log matches every specialist's release.")
    click.echo("Plan: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()) + ".")


@cli.command()
@click.option("--push", is_flag=True,
              help="Share the event log with origin: fetch first, then replay what is only "
                   "local on the remote tip and push (never a force-push).")
@click.option("--watch", is_flag=True,
              help="Keep reconciling: again whenever the declarative files change or a new "
                   "commit lands (Ctrl-C stops).")
@click.option("--evaluate", "run_evals", is_flag=True,
              help="Run the evaluations the plan asks for (a version with none on the "
                   "current suite) before deciding; needs the train extra.")
@click.option("--remote", default="origin", show_default=True)
@json_option
@click.pass_context
@_guard
def reconcile(ctx: click.Context, push: bool, watch: bool, run_evals: bool, remote: str,
              as_json: bool) -> None:
    """Apply the plan: append Promoted, RolledBack and PromotionRejected events. Running it
    again with nothing new appends nothing."""
    ws = _workspace(ctx)
    _reconcile_once(ws, push, remote, as_json, run_evals)
    if watch:
        from modelsmith.gitops.watch import changes

        for why in changes(ws.root):
            click.echo(f"-- {why}: reconciling", err=True)
            _reconcile_once(ws, push, remote, as_json, run_evals)


def _evaluate_pending(ws: Any, pending: list[Any]) -> None:
    """Evaluate each version the plan is waiting on (as `modelsmith eval` does)."""
    for specialist, version in sorted({(a.specialist, a.version) for a in pending}):
        click.echo(f"evaluating {specialist} {version} on the current suite", err=True)
        try:
            cli.main(args=["-C", str(ws.root), "eval", specialist, "--model", version],
                     prog_name="modelsmith", standalone_mode=False)
        except SystemExit as exit_:
            if exit_.code not in (0, None, EXIT_BELOW_TARGET):
                raise


def _reconcile_once(ws: Any, push: bool, remote: str, as_json: bool,
                    run_evals: bool = False) -> None:
    from modelsmith.gitops.plan import desired_state, logged_evidence, logged_heldout
    from modelsmith.gitops.reconcile import reconcile as apply_plan

    repo = ws.specs()

    def apply(store: Any) -> Any:
        return apply_plan(store, desired_state(repo), cause=ws.head_commit(),
                          heldout=logged_heldout(store), approval=_approvals(repo),
                          evidence=logged_evidence(store, repo),
                          cache=ws.cache_dir / "fleet.pickle")

    synced = None
    if push:
        from modelsmith.gitops.sync import sync

        sync(ws.root, remote)  # decide on the shared log, not a stale copy
    result = apply(ws.store)
    if run_evals and result.pending:
        _evaluate_pending(ws, result.pending)
        earlier = result.applied
        result = apply(ws.store)
        result.applied = earlier + result.applied
    if push:
        synced = sync(ws.root, remote, replan=apply)
        if synced.dropped:  # what stands: the decisions kept, and those made again
            gone = set(synced.dropped)
            result.applied = [(a, e) for a, e in result.applied if e.id not in gone]
            for again in synced.replans:
                result.applied += [(a, e) for a, e in again.applied if e.id not in gone]
            if synced.replans:
                result.pending = synced.replans[-1].pending
    proposals = {event.id: _propose_rollback(ws, action.specialist, action.stage,
                                             action.version, event)
                 for action, event in result.applied if action.kind == "rollback"}
    if as_json:
        _print_json({**result.to_dict(), "proposals": proposals,
                     "sync": None if synced is None else synced.to_dict()})
        return
    for action, event in result.applied:
        click.echo(f"{event.type} {action.specialist} {action.stage}: "
                   f"{action.previous or '-'} -> {action.version or '-'} ({action.reason})")
        if proposals.get(event.id):
            click.echo(f"  proposed the matching release on the {proposals[event.id]}")
    for action in result.pending:
        click.echo(f"pending {action.specialist} {action.stage}: {action.reason}")
    if not result.applied and not result.pending:
        click.echo("nothing to do: the event log matches every specialist's release")
    if synced is not None:
        if synced.dropped:
            click.echo(f"{len(synced.dropped)} decision(s) no longer held on {remote}'s log "
                       "and were decided again")
        click.echo(f"event log {'pushed to' if synced.pushed else 'in step with'} {remote}")


@cli.command()
@click.argument("specialist", required=False)
@click.option("-n", "--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="Show the last N events.")
@click.option("--type", "types", multiple=True, metavar="TYPE",
              help="Only events of this type (repeatable).")
@json_option
@click.pass_context
@_guard
def log(ctx: click.Context, specialist: str | None, limit: int, types: tuple[str, ...],
        as_json: bool) -> None:
    """Event timeline, oldest first (all streams, or one specialist)."""
    from collections import deque

    store = _workspace(ctx).store
    events = store.read(specialist) if specialist else store.read()
    if types:
        events = (e for e in events if e.type in types)
    tail = list(deque(events, maxlen=limit))
    if as_json:
        _print_json([e.model_dump(mode="json", by_alias=True) | {"position": e.position}
                     for e in tail])
        return
    if not tail:
        click.echo("no events" + (f" for {specialist}" if specialist else ""))
        return
    width = min(40, max(14, *(len(e.actor) for e in tail)))
    for e in tail:
        when = e.at.strftime("%Y-%m-%d %H:%M:%S")
        cause = f"  ({e.cause})" if e.cause else ""
        click.echo(f"{e.position:>6}  {when}  {e.actor:<{width}} {e.summary()}{cause}")


@cli.command()
@click.argument("specialist")
@json_option
@click.pass_context
@_guard
def history(ctx: click.Context, specialist: str, as_json: bool) -> None:
    """Who held each stage of a specialist, and when."""
    fleet = _workspace(ctx).fleet()
    state = fleet.specialists.get(specialist)
    periods = state.history if state else []
    if as_json:
        _print_json({"specialist": specialist, "assignments": [a.to_dict() for a in periods]})
        return
    if not periods:
        click.echo(f"no stage assignments for {specialist}")
        return
    from rich.table import Table

    table = Table(title=f"{specialist}: stage assignments")
    for col in ("stage", "version", "since", "until", "ended by", "actor", "cause"):
        table.add_column(col)
    for a in periods:
        table.add_row(
            a.stage,
            a.version + (f" ({a.traffic:.0%})" if a.traffic else ""),
            a.since.strftime("%Y-%m-%d %H:%M:%S"),
            a.until.strftime("%Y-%m-%d %H:%M:%S") if a.until else "now",
            a.ended_by or "",
            a.actor,
            a.cause or "",
        )
    _console().print(table)


@cli.command()
@click.argument("specialist")
@click.argument("version")
@json_option
@click.pass_context
@_guard
def lineage(ctx: click.Context, specialist: str, version: str, as_json: bool) -> None:
    """Where a candidate version came from: every input by hash, and its evaluations."""
    fleet = _workspace(ctx).fleet()
    state = fleet.specialists.get(specialist)
    cand = state.candidates.get(version) if state else None
    if cand is None:
        known = ", ".join(state.candidates) if state and state.candidates else "none"
        click.echo(f"error: {specialist} has no candidate {version} (candidates: {known})",
                   err=True)
        sys.exit(EXIT_FAILED)
    evals = [{"event_id": r.event_id, "at": r.at.isoformat(), "model": r.model,
              "suite_hash": r.suite_hash, "composite": r.composite, "heldout": r.heldout}
             for r in cand.evals]
    stages = [a.to_dict() for a in state.history if a.version == version]
    data = {"specialist": specialist, "version": version,
            "registered_at": cand.registered_at.isoformat(), "event_id": cand.event_id,
            "lineage": cand.lineage.model_dump(), "evaluations": evals, "stages": stages}
    if as_json:
        _print_json(data)
        return
    click.echo(f"{specialist} {version} · registered {data['registered_at']} "
               f"(event {cand.event_id})")
    for key, value in data["lineage"].items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        click.echo(f"  {key:<17} {value if value is not None else '-'}")
    for r in evals:
        held = f", held-out {r['heldout']:.3f}" if r["heldout"] is not None else ""
        click.echo(f"  evaluated {r['at'][:19]}  composite {r['composite']:.3f}{held}")
    for a in stages:
        click.echo(f"  held {a['stage']} from {a['since'][:19]} to {(a['until'] or 'now')[:19]}")


@cli.command()
@json_option
@click.pass_context
@_guard
def verify(ctx: click.Context, as_json: bool) -> None:
    """Walk the event log: linear, seqs contiguous, ids unique, every event valid."""
    report = _workspace(ctx).store.verify()
    if as_json:
        _print_json(report.to_dict())
    elif report.ok:
        click.echo(f"ok: {report.events} events, tip {report.tip or '-'}")
    else:
        for problem in report.problems:
            click.echo(f"commit {problem}", err=True)
        click.echo(f"{len(report.problems)} problems in {report.events} events", err=True)
    if not report.ok:
        sys.exit(EXIT_FAILED)


# ------------------------------------------------------------------ evaluation


@cli.command("eval")
@click.argument("specialist")
@click.option("--model", "model_ref", default=None, metavar="REF",
              help="A model profile, a local HF folder, a hub id, or openai:NAME "
                   "(default: the specialist's base model).")
@click.option("--backend", type=click.Choice(["transformers", "vllm"]), default=None,
              help="Local inference engine (default: transformers on CPU).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the first N core and N held-out scenarios (a quick look; gates "
                   "ignore partial evaluations).")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--reducer", type=click.Choice(["mean", "majority", "pass@k"]), default="mean",
              show_default=True, help="How repeats combine into a scenario score.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads (default: MODELSMITH_THREADS or 1).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32",
              show_default=True, help="Weights' precision for the transformers backend.")
@click.option("--min-composite", type=click.FloatRange(0, 1), default=None,
              help="Exit 3 below this composite (default: the specialist's target).")
@click.option("--no-record", is_flag=True, help="Do not append events to the log.")
@click.option("--markdown", is_flag=True, help="Print the report as Markdown (PR bodies).")
@json_option
@click.pass_context
@_guard
def eval_cmd(ctx: click.Context, specialist: str, model_ref: str | None, backend: str | None,
             limit: int | None, repeats: int, reducer: str, temperature: float,
             threads: int | None, batch_size: int, dtype: str, min_composite: float | None,
             no_record: bool, markdown: bool, as_json: bool) -> None:
    """Evaluate a model on a specialist's suite; record EvalStarted/EvalCompleted.

    Exit 0 when the composite meets the target, 3 when it does not.
    """
    from modelsmith.artifacts.registry import is_version
    from modelsmith.evaluation.judge import BackendJudge
    from modelsmith.evaluation.runner import EvalSettings
    from modelsmith.evaluation.service import evaluate, specialist_or_error
    from modelsmith.inference import make_backend

    ws = _workspace(ctx)
    repo = ws.specs()
    spec = specialist_or_error(repo, specialist)
    ref = model_ref or spec.spec.base
    version = ref if is_version(ref) else None
    candidate = _candidate(ws, repo, specialist, version) if version else None
    load = str(candidate.path) if candidate else ref
    chat = candidate.base.chat_template if candidate else None
    settings = EvalSettings(limit=limit, repeats=repeats, reducer=reducer,
                            temperature=temperature)
    click.echo(f"loading {ref} ...", err=True)
    model = make_backend(load, repo.clusters, backend=backend, threads=threads,
                         batch_size=batch_size, repo_root=ws.root, dtype=dtype,
                         chat_template=chat)
    checks = []
    if version and not no_record:
        from modelsmith.training.watch import reward_hacking_check

        watch = reward_hacking_check(ws.store, specialist, version)
        checks = [watch] if watch else []
    # Judge criteria grade with another model, built only if a rubric asks for one.
    judge = BackendJudge(lambda judge_ref: make_backend(judge_ref, repo.clusters,
                                                        repo_root=ws.root))
    try:
        with _progress(f"{specialist} on {ref}") as progress:
            outcome = evaluate(repo, specialist, model, model_ref=ref, version=version,
                               store=None if no_record else ws.store, settings=settings,
                               commit=ws.head_commit(), progress=progress, judge=judge,
                               checks=checks)
    finally:
        model.close()
        judge.close()
    report = outcome.report
    target = min_composite if min_composite is not None else spec.spec.target.composite
    meets = report.meets(target)
    if as_json:
        _print_json({"specialist": specialist, "model": ref, "target": target, "meets": meets,
                     "event_id": outcome.event.id if outcome.event else None,
                     "warnings": outcome.warnings,
                     "duration_s": round(outcome.duration_s, 3), "report": report.to_dict()})
    elif markdown:
        click.echo(f"### {specialist} · `{ref}`\n\n{report.to_markdown()}")
        for warning in outcome.warnings:
            click.echo(f"\n> **Warning:** {warning}")
    else:
        _render_report(report, specialist, ref, target, outcome)
    if not meets:
        sys.exit(EXIT_BELOW_TARGET)


def _candidate(ws, repo, specialist: str, version: str):
    """A candidate's weights (pulled from the DVC remote when missing) and base profile."""
    return ws.candidate(repo, specialist, version, say=lambda m: click.echo(m, err=True))


def _render_report(report, specialist: str, ref: str, target: float, outcome) -> None:
    from rich.table import Table

    def fmt(v):
        return "-" if v is None or v != v else f"{v:.3f}"

    def ci(c):
        return "" if not c or any(x is None or x != x for x in c) else f"[{c[0]:.3f}, {c[1]:.3f}]"

    table = Table(title=f"{specialist} · {ref} · {outcome.duration_s:.1f}s")
    for col in ("metric", "value", "95% CI", "n"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    table.add_row("composite", fmt(report.composite), ci(report.composite_ci), "")
    table.add_row("core", fmt(report.core), ci(report.core_ci), str(report.n_core))
    table.add_row("robustness", fmt(report.robustness), ci(report.robustness_ci),
                  str(report.n_variants))
    table.add_row("micro", fmt(report.micro), "", "")
    for name, part in report.micro_parts.items():
        value, goal = part.get("value"), part.get("target")
        detail = (f"p{name.split('_p')[-1]} {value:.0f} ms, budget {goal:.0f}"
                  if part.get("kind") == "latency" and value is not None
                  else f"rate {fmt(value)}, min {fmt(goal)}")
        table.add_row(f"  {name}", fmt(part.get("score")), detail, "")
    table.add_row("held-out (not in composite)", fmt(report.heldout), ci(report.heldout_ci),
                  str(report.n_heldout))
    table.add_row("pass rate", fmt(report.pass_rate), "", "")
    for tag, sl in sorted(report.slices.items()):
        table.add_row(f"  tag {tag}", fmt(sl.get("score")), ci(sl.get("ci")), str(sl.get("n")))
    console = _console()
    console.print(table)
    verdict = "meets" if report.meets(target) else "is below"
    console.print(f"composite {fmt(report.composite)} {verdict} the target {target:.3f}")
    for warning in outcome.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")
    if outcome.event is not None:
        console.print(f"recorded EvalCompleted {outcome.event.id} "
                      f"({specialist}#{outcome.event.seq})")


class _progress:
    """A progress bar on stderr for long generation; quiet when stderr is not a terminal."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._bar = None

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        console = Console(stderr=True)
        self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                             MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                             transient=True, disable=not console.is_terminal)
        self._bar.start()
        self._task = self._bar.add_task(self.title, total=None)
        self._last_line = 0.0
        return self.update

    def update(self, done: int, total: int) -> None:
        import time

        self._bar.update(self._task, completed=done, total=total)
        if self._bar.disable and (time.monotonic() - self._last_line > 10 or done == total):
            self._last_line = time.monotonic()
            click.echo(f"{self.title}: {done}/{total}", err=True)

    def __exit__(self, *exc) -> None:
        self._bar.stop()


class _TrainProgress:
    """One stderr line per training log: phase, step of total, the phase's main metric,
    seconds per step and the time left in that phase (stdout stays free for --json)."""

    def __init__(self) -> None:
        self._phase: str | None = None
        self._start = 0.0
        self._first_step = 0

    def __call__(self, log: dict) -> None:
        phase, step, total = log.get("phase"), int(log.get("step", 0)), log.get("total")
        if phase != self._phase:
            self._phase, self._start, self._first_step = phase, time.monotonic(), step
        if "train_runtime" in log:
            return
        done = step - self._first_step
        pace = (time.monotonic() - self._start) / done if done > 0 else None
        parts = [f"{phase} {step}/{total}" if total else f"{phase} {step}"]
        for key in ("loss", "reward", "reward_std", "kl", "entropy"):
            if key in log:
                parts.append(f"{key} {log[key]:.4f}")
        if pace is not None:
            parts.append(f"{pace:.1f} s/step")
            if total:
                parts.append(f"{_duration(pace * max(0, int(total) - step))} left")
        click.echo("  " + " · ".join(parts), err=True)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@cli.command()
@click.argument("specialist")
@click.option("--from-eval", "from_eval", default=None, metavar="EVENT",
              help="The EvalCompleted whose failures to train on (default: the latest full "
                   "evaluation of the base model).")
@click.option("--method", type=click.Choice(["grpo", "sft", "sft+grpo"]), default=None,
              help="Default: the specialist's training.method.")
@click.option("--profile", "profile_name", default=None, metavar="NAME",
              help="Hyper-parameter profile in config/clusters.json (default: the "
                   "specialist's training.profile).")
@click.option("--model", "model_ref", default=None, metavar="REF",
              help="Base model (profile, folder or candidate version; default: the "
                   "specialist's base).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Override the profile's max_steps (SFT steps for sft, GRPO steps "
                   "otherwise); recorded in the config hash.")
@click.option("--sft-steps", type=click.IntRange(min=1), default=None,
              help="Override the profile's sft_steps (the warm start of sft+grpo).")
@click.option("--teacher", "teacher_ref", default=None, metavar="REF",
              help="A model that rephrases each failed input, keeping its label "
                   "(openai:NAME for an OpenAI-compatible endpoint, or any model ref).")
@json_option
@click.pass_context
@_guard
def train(ctx: click.Context, specialist: str, from_eval: str | None, method: str | None,
          profile_name: str | None, model_ref: str | None, steps: int | None,
          sft_steps: int | None, teacher_ref: str | None, as_json: bool) -> None:
    """Train a candidate on an evaluation's failures; register it with its lineage.

    Progress goes to stderr, one line per optimiser step (phase, step, loss or reward,
    seconds per step, time left); --json prints the result on stdout.
    """
    from modelsmith.artifacts.dvc import ArtifactStore
    from modelsmith.evaluation.service import specialist_or_error
    from modelsmith.training.service import train_candidate

    ws = _workspace(ctx)
    repo = ws.specs()
    spec = specialist_or_error(repo, specialist)
    ref = model_ref or spec.spec.base
    base_path = ws.weights_path(repo, specialist, ref, say=lambda m: click.echo(m, err=True))

    overrides = {key: value for key, value in (("max_steps", steps), ("sft_steps", sft_steps))
                 if value is not None}
    teacher = None
    if teacher_ref:
        from modelsmith.inference import make_backend
        from modelsmith.training.teacher import BackendTeacher

        click.echo(f"loading teacher {teacher_ref} ...", err=True)
        teacher = BackendTeacher(make_backend(teacher_ref, repo.clusters, repo_root=ws.root))
    try:
        outcome = train_candidate(repo, specialist, store=ws.store,
                                  artifacts=ArtifactStore(ws.root), base_path=base_path,
                                  base_ref=ref, from_eval=from_eval, method=method,
                                  profile_name=profile_name, overrides=overrides,
                                  teacher=teacher, teacher_ref=teacher_ref,
                                  cause=ws.head_commit(), progress=_TrainProgress(),
                                  say=lambda m: click.echo(m, err=True))
    finally:
        if teacher is not None:
            teacher.backend.close()
    if teacher is not None:
        click.echo(f"teacher {teacher_ref}: {teacher.asked - teacher.dropped} of "
                   f"{teacher.asked} rewrites kept ({teacher.dropped} changed a value, "
                   "repeated the input or were missing)", err=True)
    data = {"specialist": specialist, "version": outcome.version,
            "weights": str(outcome.weights.relative_to(ws.root)),
            "dataset_hash": outcome.dataset_hash, "metrics": outcome.metrics,
            "duration_s": round(outcome.duration_s, 2),
            "events": [e.id for e in outcome.events]}
    if as_json:
        _print_json(data)
    else:
        click.echo(f"registered {specialist} {outcome.version} in {outcome.duration_s:.0f}s "
                   f"(dataset {outcome.dataset_hash[:12]}); evaluate it with "
                   f"`modelsmith eval {specialist} --model {outcome.version}`")


@cli.command()
@click.argument("specialist")
@click.option("--max-iterations", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--hosts", default=None, metavar="A,B",
              help="Training hosts to use, in order (default: defaults.training_hosts).")
@click.option("--model", "model_ref", default=None, metavar="REF",
              help="Base model to start from (default: the specialist's base).")
@click.option("--method", type=click.Choice(["grpo", "sft", "sft+grpo"]), default=None)
@click.option("--profile", "profile_name", default=None, metavar="NAME")
@click.option("--target", type=click.FloatRange(0, 1), default=None,
              help="Composite to reach (default: the specialist's target.composite).")
@click.option("--sustained", type=click.IntRange(min=1), default=None,
              help="Consecutive iterations at target (default: target.sustained).")
@click.option("--patience", type=click.IntRange(min=1), default=2, show_default=True,
              help="Stop after this many iterations without a gain.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Evaluation threads (default: MODELSMITH_THREADS or 1).")
@click.option("--rehearse/--no-rehearse", default=True, show_default=True,
              help="Train on the previous iteration's dataset too, not only on the latest "
                   "failures (keeps a model from forgetting what it had learnt).")
@click.option("--status", "show_status", is_flag=True,
              help="Show where the loop stands (state.json and its iterations); run nothing.")
@json_option
@click.pass_context
@_guard
def iterate(ctx: click.Context, specialist: str, max_iterations: int, hosts: str | None,
            model_ref: str | None, method: str | None, profile_name: str | None,
            target: float | None, sustained: int | None, patience: int, threads: int | None,
            rehearse: bool, show_status: bool, as_json: bool) -> None:
    """Evaluate -> train on the failures -> re-evaluate, until the target holds (exit 0),
    the budget ends or gains stop (exit 3). Crash-safe: run it again to resume."""
    from modelsmith.evaluation.service import specialist_or_error
    from modelsmith.iterate.loop import IterateLoop, LoopOptions, failpoint_from_env
    from modelsmith.iterate.progress import LoopProgress
    from modelsmith.iterate.state import StateFile

    ws = _workspace(ctx)
    specialist_or_error(ws.specs(), specialist)
    if show_status:
        state = StateFile(ws.root, specialist).load()
        if as_json:
            _print_json(state.model_dump(mode="json") if state else None)
            return
        if state is None:
            click.echo(f"no iterate loop has run for {specialist}")
            return
        click.echo(f"{specialist} · loop {state.loop_id} · iteration {state.iteration} · "
                   f"phase {state.phase} ({'done' if state.done else 'running or stopped'})"
                   f" · updated {state.updated_at.isoformat()[:19]}")
        if state.history:
            from modelsmith.iterate.report import score_table

            click.echo(score_table(state.history))
        return
    options = LoopOptions(max_iterations=max_iterations, model=model_ref, method=method,
                          profile=profile_name, target=target, sustained=sustained,
                          patience=patience, eval_threads=threads, rehearse=rehearse,
                          hosts=[h.strip() for h in hosts.split(",")] if hosts else None)
    emit = (lambda event: click.echo(json.dumps(event, sort_keys=True))) if as_json \
        else (lambda _event: None)
    progress = LoopProgress(max_iterations=max_iterations, emit=emit, stream=sys.stderr)
    def open_proposal(version: str, stage: str) -> str | None:
        """The loop's PromotionProposed goes through `propose`: a reviewable change."""
        from modelsmith.gitops.forge import ForgeError
        from modelsmith.gitops.plan import logged_evidence, logged_heldout
        from modelsmith.gitops.propose import propose as make_proposal

        try:
            repo = ws.specs()
            proposal, _body, _ready = make_proposal(repo, ws.fleet(), specialist, stage,
                                                    version, heldout=logged_heldout(ws.store),
                                                    sound=logged_evidence(ws.store, repo))
        except ForgeError as exc:
            click.echo(f"not proposed on a forge: {exc}", err=True)
            return None
        return f"{proposal.forge} forge: {proposal.ref}"

    result = IterateLoop(ws, specialist, options, emit=emit, progress=progress,
                         say=lambda m: click.echo(m, err=True),
                         fail_after=failpoint_from_env(), on_proposed=open_proposal).run()
    progress.clear()
    from modelsmith.iterate.report import score_svg, score_table

    plot = StateFile(ws.root, specialist).folder / "scores.svg"
    plot.write_text(score_svg(result.iterations, result.target, f"{specialist} · iterate"),
                    encoding="utf-8")
    if as_json:
        click.echo(json.dumps({"event": "result", **result.to_dict(), "plot": str(plot)},
                              sort_keys=True))
    else:
        click.echo(f"{specialist}: {result.reason}: {result.message}")
        click.echo(score_table(result.iterations, result.target))
        click.echo(f"score history plot: {plot}")
    if result.reason != "target":
        sys.exit(EXIT_BELOW_TARGET)


@cli.command()
@click.option("--model", "model_ref", default=None, metavar="REF",
              help="Model for the smoke generation and the 10-scenario eval (default: the "
                   "specialist's base).")
@click.option("--specialist", default=None, help="Which specialist to smoke-test (default: "
              "the first by name).")
@click.option("--no-model", "no_model", is_flag=True,
              help="Skip the generation and eval checks (no model is loaded).")
@json_option
@click.pass_context
@_guard
def doctor(ctx: click.Context, model_ref: str | None, specialist: str | None,
           no_model: bool, as_json: bool) -> None:
    """Onboarding checks, one line each with the fix: specs, event log, hosts, DVC remote,
    ML stack, a smoke generation and a 10-scenario eval. Exit 1 when any fails."""
    from modelsmith.doctor import run_checks

    ws = _workspace(ctx)
    checks = []
    for check in run_checks(ws.root, model=model_ref, with_model=not no_model,
                            specialist=specialist):
        checks.append(check)
        if not as_json:
            mark = {True: "ok  ", False: "FAIL", None: "skip"}[check.ok]
            click.echo(f"{mark} {check.name}: {check.detail}")
            if check.ok is False:
                click.echo(f"     fix: {check.fix}")
    failed = [c for c in checks if c.ok is False]
    if as_json:
        _print_json({"ok": not failed, "checks": [c.to_dict() for c in checks]})
    else:
        click.echo(f"{len(failed)} of {len(checks)} checks failed" if failed
                   else f"all {sum(c.ok is True for c in checks)} checks passed")
    if failed:
        sys.exit(EXIT_FAILED)


@cli.group()
def job() -> None:
    """Work units the iterate loop hands to an executor (local, ssh, ray)."""


@job.command("train")
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
@_guard
def job_train(ctx: click.Context, spec_file: Path) -> None:
    """Train as the job spec (JSON) says: one `progress` line per step on stdout, the
    heartbeat file touched, the weights and `<out>.result.json` written at the end."""
    from modelsmith.training.job import TrainJobSpec, run_train_job

    spec = TrainJobSpec.load(spec_file)
    summary = run_train_job(spec, say=lambda line: click.echo(line))
    click.echo(f"done {summary['steps']} steps in {summary['duration_s']:.1f}s -> {spec.out}")


@cli.group()
def repro() -> None:
    """Rebuild a registered candidate from its lineage (the stages of dvc.yaml).

    data -> train -> eval, each reading the candidate's events and writing plain files
    that DVC owns; nothing is appended to the event log. `dvc repro` runs all three for
    the specialist and version named in params.yaml.
    """


@repro.command("data")
@click.argument("specialist")
@click.argument("version")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the rebuilt dataset (JSONL).")
@json_option
@click.pass_context
@_guard
def repro_data(ctx: click.Context, specialist: str, version: str, out: Path,
               as_json: bool) -> None:
    """Rebuild the dataset VERSION trained on; fail unless its hash is the recorded one."""
    from modelsmith.training.repro import rebuild_dataset

    ws = _workspace(ctx)

    def fetch(path: Path) -> None:
        from modelsmith.artifacts.dvc import ArtifactStore

        click.echo(f"pulling {path.name} from the DVC remote ...", err=True)
        ArtifactStore(ws.root).pull([path])

    result = rebuild_dataset(ws.specs(), ws.store, specialist, version, out, fetch=fetch)
    if as_json:
        _print_json(result.to_dict())
    else:
        click.echo(f"dataset {result.hash} rebuilt in {result.path} (matches {version})")


@repro.command("train")
@click.argument("specialist")
@click.argument("version")
@click.option("--dataset", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              required=True, help="The rebuilt dataset (output of `repro data`).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Where to write the weights (replaced if present).")
@click.option("--strict", is_flag=True,
              help="Exit 1 unless the weights are bit-identical to the recorded ones.")
@json_option
@click.pass_context
@_guard
def repro_train(ctx: click.Context, specialist: str, version: str, dataset: Path, out: Path,
                strict: bool, as_json: bool) -> None:
    """Train again as VERSION was trained; compare the weights' hash with the recorded one."""
    import shutil

    from modelsmith.artifacts.dvc import ArtifactStore
    from modelsmith.training.repro import retrain

    ws = _workspace(ctx)
    repo = ws.specs()

    def base_path(ref: str) -> Path:
        return ws.weights_path(repo, specialist, ref, say=lambda m: click.echo(m, err=True))

    if out.exists():
        shutil.rmtree(out)  # DVC removes stage outputs before running; a manual run may not
    artifacts = ArtifactStore(ws.root)
    result = retrain(repo, ws.store, specialist, version, dataset, out, base_path=base_path,
                     hash_of=artifacts.content_hash, progress=_TrainProgress())
    if as_json:
        _print_json(result.to_dict())
    elif result.identical:
        click.echo(f"weights {result.hash} in {result.path}: bit-identical to {version}")
    else:
        click.echo(f"weights {result.hash} in {result.path} differ from {version}'s recorded "
                   f"{result.expected} (another machine, thread count or library version?)")
    if strict and not result.identical:
        sys.exit(EXIT_FAILED)


@repro.command("eval")
@click.argument("specialist")
@click.argument("version")
@click.option("--model", "model_dir", type=click.Path(file_okay=False, exists=True,
              path_type=Path), required=True, help="The rebuilt weights (`repro train`).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the metrics (JSON).")
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.pass_context
@_guard
def repro_eval(ctx: click.Context, specialist: str, version: str, model_dir: Path, out: Path,
               threads: int | None, batch_size: int) -> None:
    """Evaluate rebuilt weights as VERSION is prompted; write the report as metrics."""
    from modelsmith.evaluation.service import evaluate
    from modelsmith.inference import make_backend
    from modelsmith.training.repro import write_json

    ws = _workspace(ctx)
    repo = ws.specs()
    candidate = _candidate(ws, repo, specialist, version)
    model = make_backend(str(model_dir), repo.clusters, threads=threads, batch_size=batch_size,
                         repo_root=ws.root, chat_template=candidate.base.chat_template)
    try:
        with _progress(f"{specialist} on {model_dir}") as progress:
            outcome = evaluate(repo, specialist, model, model_ref=str(model_dir), store=None,
                               progress=progress)
    finally:
        model.close()
    report = outcome.report.to_dict()
    # DVC metrics: numbers only, so `dvc metrics diff` compares them.
    low, high = report.get("heldout_ci") or (None, None)
    write_json(out, {key: report.get(key) for key in
                     ("composite", "core", "robustness", "micro", "heldout", "pass_rate")}
               | {"heldout_ci_low": low, "heldout_ci_high": high})
    click.echo(f"{specialist} rebuilt {version}: composite {outcome.report.composite:.3f} "
               f"-> {out}")


@cli.command()
@click.argument("specialist")
@click.argument("baseline")
@click.argument("candidate")
@click.option("--split", type=click.Choice(["core", "heldout"]), default="core",
              show_default=True)
@click.option("--resamples", type=click.IntRange(min=100), default=2000, show_default=True)
@json_option
@click.pass_context
@_guard
def compare(ctx: click.Context, specialist: str, baseline: str, candidate: str, split: str,
            resamples: int, as_json: bool) -> None:
    """Paired comparison of two recorded evaluations (event ids or model refs).

    Same scenarios, per-scenario deltas, a paired bootstrap CI of the difference, and a
    verdict: better, worse or inconclusive at 95%.
    """
    from modelsmith.evaluation.service import compare as compare_evals

    result = compare_evals(_workspace(ctx).store, specialist, baseline, candidate,
                           split=split, n_resamples=resamples)
    data = result.to_dict()
    if as_json:
        _print_json(data)
        return
    r = result.result
    click.echo(f"{specialist} · {split} · {r.n} shared scenarios")
    click.echo(f"  baseline  {baseline:<20} {r.mean_a:.3f}  ({result.baseline.id[:12]})")
    click.echo(f"  candidate {candidate:<20} {r.mean_b:.3f}  ({result.candidate.id[:12]})")
    click.echo(f"  difference {r.diff:+.3f}  95% CI [{r.ci[0]:+.3f}, {r.ci[1]:+.3f}]  "
               f"wins {r.wins} / losses {r.losses} / ties {r.ties}")
    click.echo(f"  verdict: {r.verdict}")
    if result.deltas:
        shown = result.deltas[:10]
        click.echo(f"  changed scenarios ({len(result.deltas)}, largest first):")
        for d in shown:
            click.echo(f"    {d['id']:<16} {d['baseline']:.3f} -> {d['candidate']:.3f} "
                       f"({d['delta']:+.3f})")
        if len(result.deltas) > len(shown):
            click.echo(f"    ... {len(result.deltas) - len(shown)} more (--json lists all)")
    if not result.same_suite:
        click.echo("  note: the two evaluations ran on different suite versions", err=True)


@cli.command()
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.pass_context
@_guard
def init(ctx: click.Context, dest: Path) -> None:
    """Scaffold a new Modelsmith repository in DEST: an example specialist with its suite,
    policies, config/clusters.json, the DVC pipeline, GitHub workflows, DVC initialised."""
    from modelsmith.demo import embedded_defaults, scaffold

    source = embedded_defaults(Path(__file__).resolve().parent)
    scaffold(source, dest)
    click.echo(f"initialised a Modelsmith repository in {dest} (branch main, one commit)")
    click.echo(f"next: `modelsmith -C {dest} validate`, `modelsmith -C {dest} plan`, and push "
               "it to a forge")


#: The demo's base model and hyper-parameters when none is named: a model built locally in
#: seconds, trained briefly enough that the whole loop fits in about 5 minutes on 2 cores.
DEMO_MODEL, DEMO_PROFILE = "tiny-test", "cpu-tiny-demo"


@cli.command()
@click.option("--dir", "dest", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to create the demo fork (default: a new temporary folder).")
@click.option("--model", "model_ref", default=None, metavar="REF",
              help=f"Base model (default: {DEMO_MODEL}, built locally; smollm2-135m is the "
                   "specialist's real base).")
@click.option("--profile", "profile_name", default=None, metavar="NAME",
              help=f"Hyper-parameter profile (default: {DEMO_PROFILE} for {DEMO_MODEL}, "
                   "else the specialist's).")
@click.option("--max-iterations", type=click.IntRange(min=1), default=6, show_default=True,
              help="The loop's budget.")
@click.option("--eval-only", is_flag=True,
              help="No loop: evaluate the model on --limit scenarios per split and stop.")
@click.option("--limit", type=click.IntRange(min=1), default=40, show_default=True,
              help="Scenarios per split with --eval-only.")
@click.pass_context
@_guard
def demo(ctx: click.Context, dest: Path | None, model_ref: str | None,
         profile_name: str | None, max_iterations: int, eval_only: bool, limit: int) -> None:
    """Run the demo on the embedded defaults, in a scratch fork (your repo is untouched):
    the iterate loop on rtb-quality, then its score history, the event log and the fleet."""
    import tempfile

    from modelsmith.demo import embedded_defaults, prepare_fork

    source = embedded_defaults(Path(ctx.obj["repo"]).resolve())
    dest = dest or Path(tempfile.mkdtemp(prefix="modelsmith-demo-"))
    click.echo(f"1. forking the defaults of {source} into {dest}")
    prepare_fork(source, dest)
    model = model_ref or DEMO_MODEL
    profile = profile_name or (DEMO_PROFILE if model == DEMO_MODEL else None)
    # Sized for 2 cores: two threads for evaluation unless told otherwise.
    threads = os.environ.get("MODELSMITH_THREADS") or str(min(2, os.cpu_count() or 1))
    if eval_only:
        work = ("evaluating the model", ["eval", "rtb-quality", "--model", model, "--threads",
                                         threads, "--batch-size", "32", "--limit",
                                         str(limit)])
    else:
        work = (f"the iterate loop on rtb-quality from {model}",
                ["iterate", "rtb-quality", "--model", model, "--threads", threads,
                 "--max-iterations", str(max_iterations),
                 *(["--profile", profile] if profile else [])])
    steps = [
        ("validating the declarative files", ["validate"], ()),
        (*work, (EXIT_BELOW_TARGET,)),
        ("the event log", ["log", "rtb-quality", *([] if eval_only else ["-n", "12"])], ()),
        ("the fleet as the event log folds it", ["status"], ()),
        ("verifying the event log", ["verify"], ()),
    ]
    for n, (title, argv, tolerated) in enumerate(steps, start=2):
        click.echo(f"\n{n}. {title}: modelsmith -C {dest} {' '.join(argv)}")
        try:
            cli.main(args=["-C", str(dest), *argv], prog_name="modelsmith",
                     standalone_mode=False)
        except SystemExit as exit_:
            if exit_.code not in (0, None, *tolerated):
                raise
            if exit_.code == EXIT_BELOW_TARGET:
                click.echo("   (below target" + (": training is for this)" if eval_only
                                                 else "; run it again to go on)"))
    click.echo(f"\nThe demo fork stays at {dest}; try `modelsmith -C {dest} --help`.")


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="modelsmith")


if __name__ == "__main__":
    main()
