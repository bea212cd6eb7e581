"""``demo``: the journey on the embedded defaults, in a scratch fork."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import click

from modelsmith.errors import EXIT_BELOW_TARGET

from ._base import guard

#: The demo's base model and hyper-parameters when none is named: a model built locally in
#: seconds, trained briefly enough that the whole loop fits in about 5 minutes on 2 cores.
DEMO_MODEL, DEMO_PROFILE = "tiny-test", "cpu-tiny-demo"


@click.command()
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
@guard
def demo(ctx: click.Context, dest: Path | None, model_ref: str | None,
         profile_name: str | None, max_iterations: int, eval_only: bool, limit: int) -> None:
    """Run the demo on the embedded defaults, in a scratch fork (your repo is untouched):
    the iterate loop on rtb-quality, then its score history, the event log and the fleet."""
    from modelsmith.app import Modelsmith

    dest = dest or Path(tempfile.mkdtemp(prefix="modelsmith-demo-"))
    source = Modelsmith.defaults(Path(ctx.obj["repo"]).resolve())
    click.echo(f"1. forking the defaults of {source} into {dest}")
    Modelsmith.fork(source, dest)
    model = model_ref or DEMO_MODEL
    profile = profile_name or (DEMO_PROFILE if model == DEMO_MODEL else None)
    # Sized for 2 cores: two threads for evaluation unless told otherwise.
    threads = int(os.environ.get("MODELSMITH_THREADS") or min(2, os.cpu_count() or 1))
    ctx.obj["repo"] = str(dest)  # every step works in the fork
    for n, (title, argv, command, params, tolerated) in enumerate(
            _steps(model, profile, threads, max_iterations, eval_only, limit), start=2):
        click.echo(f"\n{n}. {title}: modelsmith -C {dest} {' '.join(argv)}")
        try:
            ctx.invoke(command, **params)
        except SystemExit as exit_:
            if exit_.code not in (0, None, *tolerated):
                raise
            if exit_.code == EXIT_BELOW_TARGET:
                click.echo("   (below target" + (": training is for this)" if eval_only
                                                 else "; run it again to go on)"))
    click.echo(f"\nThe demo fork stays at {dest}; try `modelsmith -C {dest} --help`.")


def _steps(model: str, profile: str | None, threads: int, max_iterations: int,
           eval_only: bool, limit: int) -> list[tuple[str, list[str], Any, dict, tuple]]:
    """Each step: title, the command line a user would type, the command and its
    parameters, the exit codes that do not stop the demo."""
    from .evaluation import eval_cmd
    from .fleet import log, status, verify
    from .iterate import iterate
    from .specs import validate

    if eval_only:
        work = ("evaluating the model",
                ["eval", "rtb-quality", "--model", model, "--threads", str(threads),
                 "--batch-size", "32", "--limit", str(limit)],
                eval_cmd, {"specialist": "rtb-quality", "model_ref": model,
                           "threads": threads, "batch_size": 32, "limit": limit})
    else:
        work = (f"the iterate loop on rtb-quality from {model}",
                ["iterate", "rtb-quality", "--model", model, "--threads", str(threads),
                 "--max-iterations", str(max_iterations),
                 *(["--profile", profile] if profile else [])],
                iterate, {"specialist": "rtb-quality", "model_ref": model,
                          "threads": threads, "max_iterations": max_iterations,
                          "profile_name": profile})
    log_limit = {} if eval_only else {"limit": 12}
    return [
        ("validating the declarative files", ["validate"], validate, {}, ()),
        (*work, (EXIT_BELOW_TARGET,)),
        ("the event log", ["log", "rtb-quality", *([] if eval_only else ["-n", "12"])], log,
         {"specialist": "rtb-quality", **log_limit}, ()),
        ("the fleet as the event log folds it", ["status"], status, {}, ()),
        ("verifying the event log", ["verify"], verify, {}, ()),
    ]
