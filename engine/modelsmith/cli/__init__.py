"""The `modelsmith` command: a click group and one module per command group.

Each command parses its arguments, calls one method of the application façade
(:class:`modelsmith.app.Modelsmith`) and renders the result; errors are mapped by class
(:mod:`modelsmith.errors`). Importing this package imports no torch, dvc or mcp.
"""

from __future__ import annotations

import click

from modelsmith import __version__

from .demo import demo
from .doctor import doctor
from .evaluation import compare, eval_cmd
from .fleet import history, lineage, log, status, verify
from .gitops import plan_cmd, propose, reconcile, rollback, sync_cmd
from .iterate import iterate
from .pr_report import pr_report
from .serving import mcp, package_cmd, replay, route, serve
from .specs import init, schema, validate
from .training import job, repro, train
from .ui import report, ui


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-C", "--repo", default=".", metavar="PATH", show_default=True,
    help="The Modelsmith repository (any folder inside it).",
)
@click.option(
    "--no-fetch", is_flag=True,
    help="Do not fetch origin's event log before reading it (as MODELSMITH_NO_FETCH=1).",
)
@click.version_option(__version__, prog_name="modelsmith")
@click.pass_context
def cli(ctx: click.Context, repo: str, no_fetch: bool) -> None:
    """Modelsmith: evaluate, train and govern small domain-specialist models.

    Desired state is YAML in git (specialists/, evals/, policies/, config/); actual state
    is the event log on the branch modelsmith/events. Commands that read or append the log
    first bring in origin's copy (a clone continues the shared log).
    """
    ctx.ensure_object(dict)
    ctx.obj["repo"] = repo
    ctx.obj["fetch"] = not no_fetch


for command in (validate, schema, init, status, log, history, lineage, verify, propose,
                rollback, plan_cmd, reconcile, sync_cmd, route, package_cmd, serve, replay,
                mcp, eval_cmd, pr_report,
                compare, train, job, repro, iterate, doctor, demo, ui, report):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """The console script's entry point."""
    cli.main(args=argv, prog_name="modelsmith")


__all__ = ["cli", "main"]
