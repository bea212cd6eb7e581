"""``doctor``: onboarding checks, each with its fix."""

from __future__ import annotations

import sys

import click

from modelsmith.errors import EXIT_FAILED

from ._base import app, guard, json_option, print_json


@click.command()
@click.option("--model", "model_ref", default=None, metavar="REF",
              help="Model for the smoke generation and the 10-scenario eval (default: the "
                   "specialist's base).")
@click.option("--specialist", default=None, help="Which specialist to smoke-test (default: "
              "the first by name).")
@click.option("--no-model", "no_model", is_flag=True,
              help="Skip the generation and eval checks (no model is loaded).")
@json_option
@click.pass_context
@guard
def doctor(ctx: click.Context, model_ref: str | None, specialist: str | None,
           no_model: bool, as_json: bool) -> None:
    """Onboarding checks, one line each with the fix: specs, event log, hosts, DVC remote,
    ML stack, a smoke generation and a 10-scenario eval. Exit 1 when any fails."""
    checks = []
    for check in app(ctx).doctor(model=model_ref, with_model=not no_model,
                                 specialist=specialist):
        checks.append(check)
        if not as_json:
            mark = {True: "ok  ", False: "FAIL", None: "skip"}[check.ok]
            click.echo(f"{mark} {check.name}: {check.detail}")
            if check.ok is False:
                click.echo(f"     fix: {check.fix}")
    failed = [c for c in checks if c.ok is False]
    if as_json:
        print_json({"ok": not failed, "checks": [c.to_dict() for c in checks]})
    else:
        click.echo(f"{len(failed)} of {len(checks)} checks failed" if failed
                   else f"all {sum(c.ok is True for c in checks)} checks passed")
    if failed:
        sys.exit(EXIT_FAILED)
