"""``iterate``: the loop from failures to a candidate that holds the target."""

from __future__ import annotations

import json
import sys

import click

from modelsmith.errors import EXIT_BELOW_TARGET

from ._base import app, guard, json_option, print_json, say, step_options


@click.command()
@click.argument("specialist")
@click.option("--max-iterations", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--hosts", default=None, metavar="A,B",
              help="Training hosts to use, in order (default: defaults.training_hosts).")
@click.option("--model", "model_ref", default=None, metavar="REF",
              help="Base model to start from (default: the specialist's base).")
@click.option("--method", type=click.Choice(["grpo", "sft", "sft+grpo"]), default=None)
@click.option("--profile", "profile_name", default=None, metavar="NAME")
@click.option("--target", type=click.FloatRange(0, 1), default=None,
              help="Decision metric to reach (default: the specialist's target.composite).")
@click.option("--sustained", type=click.IntRange(min=1), default=None,
              help="Consecutive iterations at target (default: target.sustained).")
@click.option("--patience", type=click.IntRange(min=1), default=2, show_default=True,
              help="Stop after this many iterations without a gain.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Evaluation threads (default: MODELSMITH_THREADS or 1).")
@click.option("--rehearse/--no-rehearse", default=True, show_default=True,
              help="Train on the previous iteration's dataset too, not only on the latest "
                   "failures (keeps a model from forgetting what it had learnt).")
@step_options
@click.option("--fresh", is_flag=True,
              help="After a loop that ended, start again from the base model (default: "
                   "go on from the ended loop's latest candidate).")
@click.option("--status", "show_status", is_flag=True,
              help="Show where the loop stands (state.json and its iterations); run nothing.")
@json_option
@click.pass_context
@guard
def iterate(ctx: click.Context, specialist: str, max_iterations: int, hosts: str | None,
            model_ref: str | None, method: str | None, profile_name: str | None,
            target: float | None, sustained: int | None, patience: int, threads: int | None,
            rehearse: bool, steps: int | None, sft_steps: int | None, fresh: bool,
            show_status: bool, as_json: bool) -> None:
    """Evaluate -> train on new rows for the failures -> re-evaluate, until the decision
    metric (the dev composite, else the composite over scenarios the candidate never
    trained on) holds the target (exit 0), the budget ends, gains stop or the candidates
    overfit (exit 3). Crash-safe: run it again to resume."""
    from modelsmith.iterate.loop import LoopOptions, failpoint_from_env
    from modelsmith.iterate.progress import LoopProgress
    from modelsmith.iterate.report import score_table

    if show_status:
        _show_status(app(ctx), specialist, as_json)
        return
    options = LoopOptions(max_iterations=max_iterations, model=model_ref, method=method,
                          profile=profile_name, target=target, sustained=sustained,
                          patience=patience, eval_threads=threads, rehearse=rehearse,
                          fresh=fresh,
                          overrides={k: v for k, v in (("max_steps", steps),
                                                       ("sft_steps", sft_steps)) if v},
                          hosts=[h.strip() for h in hosts.split(",")] if hosts else None)
    emit = (lambda event: click.echo(json.dumps(event, sort_keys=True))) if as_json \
        else (lambda _event: None)
    progress = LoopProgress(max_iterations=max_iterations, emit=emit, stream=sys.stderr)
    repo = app(ctx)
    result = repo.iterate(specialist, options, emit=emit, progress=progress, say=say,
                          fail_after=failpoint_from_env())
    progress.clear()
    plot = repo.plot_path(specialist)
    if as_json:
        click.echo(json.dumps({"event": "result", **result.to_dict(), "plot": str(plot)},
                              sort_keys=True))
    else:
        click.echo(f"{specialist}: {result.reason}: {result.message}")
        click.echo(score_table(result.iterations, result.target))
        click.echo(f"score history plot: {plot}")
    if result.reason != "target":
        sys.exit(EXIT_BELOW_TARGET)


def _show_status(repo, specialist: str, as_json: bool) -> None:
    state = repo.iterate_state(specialist)
    if as_json:
        print_json(state.model_dump(mode="json") if state else None)
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
