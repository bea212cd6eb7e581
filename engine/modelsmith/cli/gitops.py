"""``plan``, ``reconcile``, ``propose`` and ``rollback``: desired state against the log."""

from __future__ import annotations

import click

from modelsmith.errors import EXIT_BELOW_TARGET
from modelsmith.stages import STAGES

from ._base import app, guard, json_option, print_json, say


@click.command()
@click.argument("specialist")
@click.option("--version", "version", required=True, help="The candidate version (vN).")
@click.option("--stage", type=click.Choice(STAGES), required=True)
@click.option("--traffic", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=None, help="Canary share of traffic (canary only).")
@click.option("--report-url", default=None, metavar="URL",
              help="Where `modelsmith report` is published: the body links to the "
                   "specialist's, candidate's and evaluations' pages there (default: "
                   "MODELSMITH_REPORT_URL).")
@json_option
@click.pass_context
@guard
def propose(ctx: click.Context, specialist: str, version: str, stage: str,
            traffic: float | None, report_url: str | None, as_json: bool) -> None:
    """Ask for a release change: a branch (local forge) or pull request editing `release`,
    with the evidence -- lineage, evaluations, every gate and the event ids -- attached."""
    if report_url is not None and not report_url.startswith(("http://", "https://", "file:")):
        raise click.BadParameter("give an http(s):// or file: URL", param_hint="--report-url")
    proposal, body, ready = app(ctx).propose(specialist, version, stage, traffic=traffic,
                                             report_url=report_url)
    if as_json:
        print_json({"forge": proposal.forge, "ref": proposal.ref, "commit": proposal.commit,
                    "title": proposal.title, "ready": ready, "body": body})
        return
    click.echo(f"proposed on the {proposal.forge} forge: {proposal.ref} ({proposal.commit[:12]})")
    click.echo(body)
    if not ready:
        click.echo("\nnote: some gates fail today; reconcile will reject the change until "
                   "they pass", err=True)


@click.command()
@click.argument("specialist")
@click.option("--stage", type=click.Choice(STAGES), default="production", show_default=True)
@click.option("--to", "to", default=None, metavar="VERSION",
              help="The version to go back to (default: the one that held the stage before).")
@click.option("--reason", default="by hand", show_default=True)
@json_option
@click.pass_context
@guard
def rollback(ctx: click.Context, specialist: str, stage: str, to: str | None, reason: str,
             as_json: bool) -> None:
    """Roll a stage back now (RolledBack), and propose the change that makes `release`
    match."""
    done = app(ctx).rollback(specialist, stage, to=to, reason=reason)
    for warning in done.warnings:
        say(warning)
    event = done.event
    if as_json:
        print_json({"event": event.id, "stage": stage, "from": event.data["from_version"],
                    "to": event.data["to_version"], "proposal": done.proposal})
        return
    click.echo(f"RolledBack {specialist} {stage}: {event.data['from_version']} -> "
               f"{event.data['to_version'] or '-'}")
    if done.proposal:
        click.echo(f"proposed the matching release on the {done.proposal}")


MARKS = {"promote": "+", "demote": "-", "rollback": "<", "reject": "!", "evaluate": "?"}


@click.command("plan")
@json_option
@click.pass_context
@guard
def plan_cmd(ctx: click.Context, as_json: bool) -> None:
    """What reconciling would do, per specialist and stage, with every gate and its
    numbers (from the event log's evidence only), and the proposals waiting for review
    with the gates they would meet once merged."""
    report = app(ctx).plan_report()
    for warning in report.warnings:
        say(warning)
    if as_json:
        print_json(report.to_dict())
        return
    actions = report.actions
    current = None
    for action in actions:
        if action.specialist != current:
            current = action.specialist
            click.echo(current)
        moving = f"{action.previous or '-'} -> {action.version or '-'}"
        click.echo(f"  {MARKS[action.kind]} {action.kind} {action.stage}: {moving}")
        click.echo(f"      {action.reason}")
        for gate in action.gates:
            click.echo(f"      {'ok  ' if gate.passed else 'FAIL'} {gate.name}: {gate.detail}")
    if report.holds:
        click.echo("Held for review (promotions wait for an approved change to each):")
        for name, holds in sorted(report.holds.items()):
            for hold in holds:
                click.echo(f"  {name}: {hold['entry']} changed by {hold['commit'][:12]} "
                           f"without an approved merge ({hold['why']})")
    if report.proposals:
        _render_proposals(report.proposals)
    counts = {kind: sum(a.kind == kind for a in actions) for kind in MARKS}
    waiting = _waiting(report.proposals)
    if not actions and waiting:
        click.echo(f"No changes to apply; {waiting}.")
    elif not actions:
        click.echo("No changes: the event log matches every specialist's release.")
    click.echo("Plan: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()) + ".")
    if actions and waiting:
        click.echo(waiting[0].upper() + waiting[1:] + ".")


def _waiting(proposals) -> str:
    """``1 proposal waits for review: rtb v2 -> production (ref)``, or empty."""
    if not proposals:
        return ""
    listed = "; ".join(f"{p.proposal.specialist} {p.proposal.version or '(empty)'} -> "
                       f"{p.proposal.stage} ({p.proposal.ref})" for p in proposals)
    one = len(proposals) == 1
    return (f"{len(proposals)} proposal{'' if one else 's'} wait{'s' if one else ''} "
            f"for review: {listed}")


def _render_proposals(proposals) -> None:
    """Each open proposal with the gates it meets today; the approval is the merge's own,
    so an unmerged proposal's waits rather than fails."""
    click.echo("Waiting for review (what each would do once merged):")
    for waiting in proposals:
        proposal = waiting.proposal
        click.echo(f"  {proposal.specialist} {proposal.stage}: {waiting.previous or '-'} -> "
                   f"{proposal.version or '-'} ({proposal.forge} {proposal.ref})")
        if waiting.note:
            click.echo(f"      {waiting.note}")
        for gate in waiting.gates:
            mark = "ok  " if gate.passed else "wait" if gate.name == "approval" else "FAIL"
            click.echo(f"      {mark} {gate.name}: {gate.detail}")
        if waiting.gates:
            failed = list(dict.fromkeys(g.name for g in waiting.gates
                                        if not g.passed and g.name != "approval"))
            needs = any(g.name == "approval" for g in waiting.gates)
            if failed:
                click.echo(f"      merged today, it would be rejected: the {', '.join(failed)} "
                           + ("gates fail" if len(failed) > 1 else "gate fails"))
            else:
                click.echo("      merged " + ("with the approval it needs" if needs
                                              else "today") + ", reconcile promotes it")


@click.command()
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
@guard
def reconcile(ctx: click.Context, push: bool, watch: bool, run_evals: bool, remote: str,
              as_json: bool) -> None:
    """Apply the plan: append Promoted, RolledBack and PromotionRejected events. Running it
    again with nothing new appends nothing."""
    repo = app(ctx)

    def evaluate(specialist: str, version: str) -> None:
        """As `modelsmith eval SPECIALIST --model VERSION` does, report included."""
        from .evaluation import eval_cmd

        say(f"evaluating {specialist} {version} on the current suite")
        try:
            ctx.invoke(eval_cmd, specialist=specialist, model_ref=version)
        except SystemExit as exit_:
            if exit_.code not in (0, None, EXIT_BELOW_TARGET):
                raise

    def once() -> None:
        _render(repo.reconcile(push=push, remote=remote, evaluate=run_evals,
                               on_evaluate=evaluate), remote, as_json)

    once()
    if watch:
        for why in repo.watch():
            say(f"-- {why}: reconciling")
            once()


def _render(done, remote: str, as_json: bool) -> None:
    for warning in done.warnings:
        say(warning)
    result, synced = done.result, done.synced
    if as_json:
        print_json(done.to_dict())
        return
    for action, event in result.applied:
        click.echo(f"{event.type} {action.specialist} {action.stage}: "
                   f"{action.previous or '-'} -> {action.version or '-'} ({action.reason})")
        if done.proposals.get(event.id):
            click.echo(f"  proposed the matching release on the {done.proposals[event.id]}")
    for action in result.pending:
        click.echo(f"pending {action.specialist} {action.stage}: {action.reason}")
    if not result.applied and not result.pending:
        click.echo("nothing to do: the event log matches every specialist's release")
    if synced is not None:
        if synced.dropped:
            click.echo(f"{len(synced.dropped)} decision(s) no longer held on {remote}'s log "
                       "and were decided again")
        if synced.pushed:
            n, again = len(synced.pushed_events), len(synced.replayed)
            onto = f", {again} replayed onto its tip" if again else ""
            click.echo(f"event log pushed to {remote} ({n} event{'' if n == 1 else 's'}"
                       f"{onto})")
        else:
            click.echo(f"event log in step with {remote}")


@click.command("sync")
@click.option("--remote", default="origin", show_default=True)
@json_option
@click.pass_context
@guard
def sync_cmd(ctx: click.Context, remote: str, as_json: bool) -> None:
    """Share the event log with a remote and decide nothing: fetch, then fast-forward to
    its log or replay the events recorded only here onto its tip, and push (never a
    force-push). A decision that no longer holds on the shared log is dropped; run
    `modelsmith reconcile` to decide again."""
    synced = app(ctx).sync(remote)
    if as_json:
        print_json(synced.to_dict())
        return
    if synced.replayed:
        click.echo(f"replayed {len(synced.replayed)} local event(s) onto {remote}'s log")
    if synced.dropped:
        click.echo(f"{len(synced.dropped)} decision(s) no longer held on {remote}'s log and "
                   "were dropped: run `modelsmith reconcile` to decide again")
    if synced.pushed:
        n = len(synced.pushed_events)
        click.echo(f"event log pushed to {remote} ({n} event{'' if n == 1 else 's'})")
    elif synced.fast_forwarded:
        click.echo(f"event log fast-forwarded to {remote}'s")
    else:
        click.echo(f"event log in step with {remote}")
