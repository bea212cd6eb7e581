"""``status``, ``log``, ``history``, ``lineage`` and ``verify``: reading the event log."""

from __future__ import annotations

import sys
from typing import Any

import click

from modelsmith.errors import EXIT_FAILED
from modelsmith.stages import STAGES

from ._base import app, console, guard, json_option, print_json


@click.command()
@click.option("--at", "when", default=None, metavar="TIME|COMMIT",
              help="The fleet as it was then: an ISO date/time (UTC) or a git revision.")
@json_option
@click.pass_context
@guard
def status(ctx: click.Context, when: str | None, as_json: bool) -> None:
    """Fleet table: which version holds production, canary and shadow now (or --at)."""
    fleet = app(ctx).status(at=when)
    rows, note = fleet["specialists"], fleet.get("specs_error")
    if as_json:
        print_json(fleet)
        return
    from rich.table import Table

    where = fleet["at"][:19] if when else (fleet["tip"] or "empty log")[:12]
    table = Table(title=f"fleet at {where} · {fleet['events']} events")
    stages = tuple(reversed(STAGES))  # production first
    for col in ("specialist", *stages, "candidates", "latest", "events"):
        table.add_column(col, justify="right" if col in ("candidates", "events") else "left")
    for row in rows:
        latest = row.get("latest_candidate")
        latest_txt = "-"
        if latest:
            comp = latest["composite"]
            latest_txt = f"{latest['version']}" + (f" ({comp:.3f})" if comp is not None else "")
        table.add_row(row["name"], *(_stage_cell(row, stage) for stage in stages),
                      str(row["candidates"]), latest_txt, str(row["events"]))
    out = console()
    out.print(table)
    if note:
        out.print(f"[yellow]note:[/] {note}")


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


@click.command()
@click.argument("specialist", required=False)
@click.option("-n", "--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="Show the last N events.")
@click.option("--type", "types", multiple=True, metavar="TYPE",
              help="Only events of this type (repeatable).")
@json_option
@click.pass_context
@guard
def log(ctx: click.Context, specialist: str | None, limit: int, types: tuple[str, ...],
        as_json: bool) -> None:
    """Event timeline, oldest first (all streams, or one specialist)."""
    tail = app(ctx).log(specialist, limit=limit, types=types)
    if as_json:
        print_json([e.model_dump(mode="json", by_alias=True) | {"position": e.position}
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


@click.command()
@click.argument("specialist")
@json_option
@click.pass_context
@guard
def history(ctx: click.Context, specialist: str, as_json: bool) -> None:
    """Who held each stage of a specialist, and when."""
    periods = app(ctx).history(specialist)
    if as_json:
        print_json({"specialist": specialist, "assignments": [a.to_dict() for a in periods]})
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
    console().print(table)


@click.command()
@click.argument("specialist")
@click.argument("version")
@json_option
@click.pass_context
@guard
def lineage(ctx: click.Context, specialist: str, version: str, as_json: bool) -> None:
    """Where a candidate version came from: every input by hash, and its evaluations."""
    data = app(ctx).lineage(specialist, version)
    if as_json:
        print_json(data)
        return
    click.echo(f"{specialist} {version} · registered {data['registered_at']} "
               f"(event {data['event_id']})")
    click.echo(f"  {'chain':<17} {' <- '.join(data['chain'])} (base model {data['base']})")
    for key, value in data["lineage"].items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):  # the seen scenarios: how many, and the first few
            shown = ", ".join(value[:5]) + (f", ... ({len(value)})" if len(value) > 5 else "")
            value = f"{len(value)} core scenarios: {shown}" if value else "none"
        click.echo(f"  {key:<17} {value if value is not None else '-'}")
    for r in data["evaluations"]:
        held = f", held-out {r['heldout']:.3f}" if r["heldout"] is not None else ""
        decided = (f", {r['decision_metric']} {r['decision']:.3f}"
                   if r.get("decision_metric") and r.get("decision") is not None else "")
        click.echo(f"  evaluated {r['at'][:19]}  composite {r['composite']:.3f}{decided}{held}")
    for a in data["stages"]:
        click.echo(f"  held {a['stage']} from {a['since'][:19]} to {(a['until'] or 'now')[:19]}")


def _anchored(report) -> str:
    """What the anchors on main vouch for (a clone of a rewritten origin fails them)."""
    if not report.anchors:
        return ("note: main names no event-log anchor yet (a merged proposal adds one); "
                "a rewrite of origin's log would pass unseen")
    many = report.anchors != 1
    line = (f"anchored: {report.anchors} anchor{'s' * many} on main "
            f"match{'' if many else 'es'} the log")
    if report.unanchored:
        one = report.unanchored == 1
        line += (f"; {report.unanchored} event{'' if one else 's'} after the newest anchor "
                 f"on main {'is' if one else 'are'} not anchored")
    return line


@click.command()
@json_option
@click.pass_context
@guard
def verify(ctx: click.Context, as_json: bool) -> None:
    """Walk the event log: linear, seqs contiguous, ids unique, every event valid, every
    state snapshot equal to the fold of the log up to it."""
    report = app(ctx).verify()
    if not as_json:
        for warning in report.warnings:
            click.echo(f"warning: {warning}", err=True)
    if as_json:
        print_json(report.to_dict())
    elif report.ok:
        snaps = (f", {report.snapshots} state snapshot{'s' * (report.snapshots != 1)} match "
                 "the fold" if report.snapshots else "")
        signed = f", {report.signed} signed" if report.signed else ""
        click.echo(f"ok: {report.events} events{signed}, tip {report.tip or '-'}{snaps}")
        click.echo(_anchored(report))
    else:
        for problem in report.problems:
            click.echo(f"commit {problem}", err=True)
        click.echo(f"{len(report.problems)} problems in {report.events} events", err=True)
    if not report.ok:
        sys.exit(EXIT_FAILED)
