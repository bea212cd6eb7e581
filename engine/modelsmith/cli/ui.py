"""``modelsmith ui`` (the read-only dashboard) and ``modelsmith report`` (the same pages as a
static site)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ._base import app, guard, json_option, print_json, say, warn_open
from .serving import _Signals


@click.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default: the dashboard shows the whole "
                   "log; put a token on it before you listen elsewhere).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port (0: any free one; the address is printed).")
@click.option("--token-env", default="MODELSMITH_UI_TOKEN", show_default=True,
              help="Environment variable holding the token; when it is set, a request needs "
                   "Authorization: Bearer <token>, or opens a page once with ?token=<token> "
                   "(kept as a cookie).")
@click.pass_context
@guard
def ui(ctx: click.Context, host: str, port: int, token_env: str) -> None:
    """A read-only web dashboard on the event log: the fleet, each specialist's timeline and
    scores, every evaluation down to the scenario, lineage, open proposals with their gates,
    and the log itself. Pages follow the log's tip. SIGINT or SIGTERM stops it."""
    signals = _Signals()
    try:
        token = os.environ.get(token_env) or None
        warn_open(host, token, token_env, "can read the whole event log")
        server = app(ctx).ui_server(host, port, token=token)
        try:
            signals.run(server, lambda at: f"dashboard on http://{at[0]}:{at[1]}/ (Ctrl-C stops)")
        finally:
            try:
                server.stop(2.0)
            finally:
                signals.restore()
    finally:
        signals.restore()


@click.command("report")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the site into (new, empty, or an earlier report).")
@json_option
@click.pass_context
@guard
def report(ctx: click.Context, out: Path, as_json: bool) -> None:
    """The dashboard's pages as a static site with relative links (open OUT/index.html from
    file://, publish it on GitHub Pages, or attach it to a pull request)."""
    written = app(ctx).write_report(out, say=say)
    if as_json:
        print_json(written.to_dict())
        return
    for line in written.skipped:
        say(f"skipped {line}")
    click.echo(f"wrote {written.pages} pages to {written.out} (open "
               f"{written.out / 'index.html'})")
