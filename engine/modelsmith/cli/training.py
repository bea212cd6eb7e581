"""``train``, ``job train`` and ``repro``: candidates from failures, and rebuilt ones."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from modelsmith.errors import EXIT_FAILED

from ._base import (
    Progress,
    TrainProgress,
    app,
    guard,
    json_option,
    print_json,
    say,
    step_options,
)


@click.command()
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
@step_options
@click.option("--teacher", "teacher_ref", default=None, metavar="REF",
              help="A model that rephrases each failed input, keeping its label "
                   "(openai:NAME for an OpenAI-compatible endpoint, or any model ref).")
@json_option
@click.pass_context
@guard
def train(ctx: click.Context, specialist: str, from_eval: str | None, method: str | None,
          profile_name: str | None, model_ref: str | None, steps: int | None,
          sft_steps: int | None, teacher_ref: str | None, as_json: bool) -> None:
    """Train a candidate on an evaluation's failures; register it with its lineage.

    Progress goes to stderr, one line per optimiser step (phase, step, loss or reward,
    seconds per step, time left); --json prints the result on stdout.
    """
    repo = app(ctx)
    done = repo.train(specialist, from_eval=from_eval, method=method, profile=profile_name,
                      model=model_ref, steps=steps, sft_steps=sft_steps, teacher=teacher_ref,
                      progress=TrainProgress(), say=say)
    if done.teacher:
        say(done.teacher)
    outcome = done.outcome
    data = {"specialist": specialist, "version": outcome.version,
            "weights": str(outcome.weights.relative_to(repo.root)),
            "dataset_hash": outcome.dataset_hash, "metrics": outcome.metrics,
            "duration_s": round(outcome.duration_s, 2),
            "events": [e.id for e in outcome.events],
            "pointers": outcome.pointers.to_dict() if outcome.pointers else None}
    if as_json:
        print_json(data)
    else:
        click.echo(f"registered {specialist} {outcome.version} in {outcome.duration_s:.0f}s "
                   f"(dataset {outcome.dataset_hash[:12]}); evaluate it with "
                   f"`modelsmith eval {specialist} --model {outcome.version}`")


@click.group()
def job() -> None:
    """Work units the iterate loop hands to an executor (local, ssh, ray)."""


@job.command("train")
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@guard
def job_train(spec_file: Path) -> None:
    """Train as the job spec (JSON) says: one `progress` line per step on stdout, the
    heartbeat file touched, the weights and `<out>.result.json` written at the end."""
    from modelsmith.app import Modelsmith

    spec, summary = Modelsmith.run_job(spec_file, say=click.echo)
    click.echo(f"done {summary['steps']} steps in {summary['duration_s']:.1f}s -> {spec.out}")


@click.group()
def repro() -> None:
    """Rebuild a registered candidate from its lineage (the stages of dvc.yaml).

    data -> train -> eval, each reading the candidate's events and writing plain files
    that DVC owns; nothing is appended to the event log. `dvc repro` runs all three for
    each candidate params.yaml's `rebuild` names (`repro set SPECIALIST VERSION`).
    """


@repro.command("set")
@click.argument("specialist")
@click.argument("version")
@click.pass_context
@guard
def repro_set(ctx: click.Context, specialist: str, version: str) -> None:
    """Make `dvc repro` rebuild VERSION of SPECIALIST (params.yaml's `rebuild`)."""
    rebuild = app(ctx).repro_set(specialist, version)
    click.echo(f"params.yaml: rebuild {_named(rebuild)}; `dvc repro` rebuilds "
               f"{specialist} {version} into rebuild/{specialist}/{version}/")


@repro.command("clear")
@click.argument("specialist")
@click.pass_context
@guard
def repro_clear(ctx: click.Context, specialist: str) -> None:
    """Make `dvc repro` rebuild no version of SPECIALIST."""
    rebuild = app(ctx).repro_set(specialist, None)
    click.echo(f"params.yaml: rebuild {_named(rebuild)}")


def _named(rebuild: dict[str, str]) -> str:
    if set(rebuild) == {"specialist", "version"}:
        return f"{rebuild['specialist']} {rebuild['version']}"
    return ", ".join(f"{name} {version}" for name, version in rebuild.items()) or "nothing"


@repro.command("data")
@click.argument("specialist")
@click.argument("version")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the rebuilt dataset (JSONL).")
@json_option
@click.pass_context
@guard
def repro_data(ctx: click.Context, specialist: str, version: str, out: Path,
               as_json: bool) -> None:
    """Rebuild the dataset VERSION trained on; fail unless its hash is the recorded one."""
    result = app(ctx).repro_data(specialist, version, out, say=say)
    if as_json:
        print_json(result.to_dict())
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
@guard
def repro_train(ctx: click.Context, specialist: str, version: str, dataset: Path, out: Path,
                strict: bool, as_json: bool) -> None:
    """Train again as VERSION was trained; compare the weights' hash with the recorded one."""
    result = app(ctx).repro_train(specialist, version, dataset, out,
                                  progress=TrainProgress(), say=say)
    if as_json:
        print_json(result.to_dict())
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
@guard
def repro_eval(ctx: click.Context, specialist: str, version: str, model_dir: Path, out: Path,
               threads: int | None, batch_size: int) -> None:
    """Evaluate rebuilt weights as VERSION is prompted; write the report as metrics."""
    outcome = app(ctx).repro_eval(specialist, version, model_dir, out, threads=threads,
                                  batch_size=batch_size, progress=Progress, say=say)
    click.echo(f"{specialist} rebuilt {version}: composite {outcome.report.composite:.3f} "
               f"-> {out}")
