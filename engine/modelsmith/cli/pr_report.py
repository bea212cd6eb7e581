"""``pr-report``: the evaluation report a pull request's CI posts as one comment."""

from __future__ import annotations

from pathlib import Path

import click

from ._base import app, guard, json_option, print_json, say


@click.command("pr-report")
@click.option("--base", "base", required=True, metavar="REF",
              help="The revision the pull request goes into (e.g. origin/main).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the first N core, dev and held-out scenarios of each suite.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the Markdown there (stdout stays for --json).")
@click.option("--backend", type=click.Choice(["transformers", "vllm"]), default=None,
              help="Local inference engine (default: transformers on CPU).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads (default: MODELSMITH_THREADS or 1).")
@json_option
@click.pass_context
@guard
def pr_report(ctx: click.Context, base: str, limit: int | None, out: Path | None,
              backend: str | None, threads: int | None, as_json: bool) -> None:
    """Evaluate what a pull request changes: for every specialist whose suite, task prompt
    or policy differs from REF, the versions in production, canary and shadow (the base
    model when none is deployed) on this suite and on REF's, paired on their shared
    scenarios, with the scenarios added, removed and changed. Records nothing.

    Exit 0 when the report is written, whatever the scores; 2 for a bad REF; 1 when it
    cannot be made (weights missing from the DVC remote, REF's files invalid).
    """
    report = app(ctx).pr_report(base, limit=limit, backend=backend, threads=threads, say=say)
    markdown = report.to_markdown()
    if out is not None:
        out.write_text(markdown, encoding="utf-8")
        say(f"wrote {out}")
    if as_json:
        print_json(report.to_dict())
    elif out is None:
        click.echo(markdown, nl=False)
