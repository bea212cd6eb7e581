"""``validate``, ``schema`` and ``init``: the declarative files."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from modelsmith.errors import EXIT_INVALID

from ._base import guard, json_option, print_json


@click.command()
@click.argument("path", required=False, type=click.Path(file_okay=False, path_type=Path))
@json_option
@click.pass_context
@guard
def validate(ctx: click.Context, path: Path | None, as_json: bool) -> None:
    """Check every declarative file of the repository, and that every scenario's reference
    answer scores 1.0 under its rubric; list all errors (exit 2)."""
    from modelsmith.app import Modelsmith
    from modelsmith.specs import SpecError

    root = (path or Path(ctx.obj["repo"])).resolve()
    if not root.is_dir():
        raise click.BadParameter(f"{root} is not a folder", param_hint="PATH")
    try:
        counts = Modelsmith.validate(root)
    except SpecError as exc:
        if as_json:
            print_json({"ok": False, "root": str(root),
                        "errors": [i.to_dict() for i in exc.issues]})
        else:
            for issue in exc.issues:
                click.echo(str(issue), err=True)
            n = len(exc.issues)
            click.echo(f"{n} error{'s' if n != 1 else ''} in {root}", err=True)
        sys.exit(EXIT_INVALID)
    if as_json:
        print_json({"ok": True, "root": str(root), "errors": [], "counts": counts})
    else:
        parts = ", ".join(_count(v, k.replace("_", " ")) for k, v in counts.items())
        click.echo(f"ok: {parts}")


def _count(n: int, plural: str) -> str:
    singular = plural[:-3] + "y" if plural.endswith("ies") else plural[:-1]
    return f"{n} {singular if n == 1 else plural}"


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write <Kind>.schema.json files here (default: print one JSON object).")
@guard
def schema(out: Path | None) -> None:
    """JSON Schema for every declarative kind (for editors and CI)."""
    from modelsmith.app import Modelsmith

    if out is None:
        print_json(Modelsmith.schemas())
        return
    for written in Modelsmith.schemas(out):
        click.echo(str(written))


@click.command()
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--engine", default=None, metavar="URL",
              help="The engine the workflows install, pinned: git+https://HOST/OWNER/REPO"
                   "@COMMIT or a wheel URL with #sha256= (default: this engine's git URL "
                   "and commit, when known).")
@guard
def init(dest: Path, engine: str | None) -> None:
    """Scaffold a new Modelsmith repository in DEST: an example specialist with its suite,
    policies, config/clusters.json, the DVC pipeline, GitHub workflows, DVC initialised."""
    from modelsmith.app import Modelsmith
    from modelsmith.app.engine_pin import ENGINE_FILE

    pinned = Modelsmith.init(dest, engine)
    click.echo(f"initialised a Modelsmith repository in {dest} (branch main, one commit)")
    if pinned:
        click.echo(f"its workflows install the engine pinned in {ENGINE_FILE}: {pinned}")
    else:
        click.echo(f"note: no engine pinned yet: write its git URL and commit in "
                   f"{dest / ENGINE_FILE} (git+https://HOST/OWNER/REPO@COMMIT); the "
                   "workflows fail until it names one", err=True)
    click.echo(f"next: `modelsmith -C {dest} validate`, `modelsmith -C {dest} plan`, and push "
               "it to a forge")
