"""``eval`` and ``compare``: measuring a model on a specialist's suite."""

from __future__ import annotations

import sys
from typing import Any

import click

from modelsmith.errors import EXIT_BELOW_TARGET

from ._base import Progress, app, console, guard, json_option, print_json, say


@click.command("eval")
@click.argument("specialist")
@click.option("--model", "model_ref", default=None, metavar="REF",
              help="A model profile, a local HF folder, a hub id, or openai:NAME "
                   "(default: the specialist's base model).")
@click.option("--backend", type=click.Choice(["transformers", "vllm"]), default=None,
              help="Local inference engine (default: transformers on CPU).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the first N core and N held-out scenarios (a quick look; gates "
                   "ignore partial evaluations).")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--reducer", type=click.Choice(["mean", "majority", "pass@k"]), default="mean",
              show_default=True, help="How repeats combine into a scenario score.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads (default: MODELSMITH_THREADS or 1).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32",
              show_default=True, help="Weights' precision for the transformers backend.")
@click.option("--min-composite", type=click.FloatRange(0, 1), default=None,
              help="Exit 3 below this composite (default: the specialist's target).")
@click.option("--no-record", is_flag=True, help="Do not append events to the log.")
@click.option("--markdown", is_flag=True, help="Print the report as Markdown (PR bodies).")
@json_option
@click.pass_context
@guard
def eval_cmd(ctx: click.Context, specialist: str, model_ref: str | None, backend: str | None,
             limit: int | None, repeats: int, reducer: str, temperature: float,
             threads: int | None, batch_size: int, dtype: str, min_composite: float | None,
             no_record: bool, markdown: bool, as_json: bool) -> None:
    """Evaluate a model on a specialist's suite; record EvalStarted/EvalCompleted.

    Exit 0 when the composite meets the target, 3 when it does not.
    """
    run = app(ctx).evaluate(specialist, model_ref, backend=backend, limit=limit,
                            repeats=repeats, reducer=reducer, temperature=temperature,
                            threads=threads, batch_size=batch_size, dtype=dtype,
                            min_composite=min_composite, record=not no_record,
                            progress=Progress, say=say)
    outcome, report = run.outcome, run.report
    if as_json:
        print_json({"specialist": specialist, "model": run.model, "target": run.target,
                    "meets": run.meets,
                    "event_id": outcome.event.id if outcome.event else None,
                    "warnings": outcome.warnings,
                    "duration_s": round(outcome.duration_s, 3), "report": report.to_dict()})
    elif markdown:
        click.echo(f"### {specialist} · `{run.model}`\n\n{report.to_markdown()}")
        for warning in outcome.warnings:
            click.echo(f"\n> **Warning:** {warning}")
    else:
        render_report(report, specialist, run.model, run.target, outcome)
    if not run.meets:
        sys.exit(EXIT_BELOW_TARGET)


def _fmt(v: float | None) -> str:
    return "-" if v is None or v != v else f"{v:.3f}"


def _ci(c: Any) -> str:
    return "" if not c or any(x is None or x != x for x in c) else f"[{c[0]:.3f}, {c[1]:.3f}]"


def render_report(report: Any, specialist: str, ref: str, target: float, outcome: Any) -> None:
    """The evaluation as a table: composite, its parts, held-out, slices by tag."""
    from rich.table import Table

    table = Table(title=f"{specialist} · {ref} · {outcome.duration_s:.1f}s")
    for col in ("metric", "value", "95% CI", "n"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    table.add_row("composite", _fmt(report.composite), _ci(report.composite_ci), "")
    table.add_row("core", _fmt(report.core), _ci(report.core_ci), str(report.n_core))
    table.add_row("robustness", _fmt(report.robustness), _ci(report.robustness_ci),
                  str(report.n_variants))
    table.add_row("micro", _fmt(report.micro), "", "")
    for name, part in report.micro_parts.items():
        value, goal = part.get("value"), part.get("target")
        detail = (f"p{name.split('_p')[-1]} {value:.0f} ms, budget {goal:.0f}"
                  if part.get("kind") == "latency" and value is not None
                  else f"rate {_fmt(value)}, min {_fmt(goal)}")
        table.add_row(f"  {name}", _fmt(part.get("score")), detail, "")
    unseen_note = "" if report.n_unseen == report.n_core else \
        f" ({report.n_core - report.n_unseen} trained on, left out)"
    table.add_row(f"unseen composite{unseen_note}", _fmt(report.unseen), _ci(report.unseen_ci),
                  str(report.n_unseen))
    if report.n_dev:
        table.add_row("dev composite (decides)", _fmt(report.dev), _ci(report.dev_ci),
                      str(report.n_dev))
    table.add_row("held-out (not in composite)", _fmt(report.heldout), _ci(report.heldout_ci),
                  str(report.n_heldout))
    table.add_row("pass rate", _fmt(report.pass_rate), "", "")
    for tag, sl in sorted(report.slices.items()):
        table.add_row(f"  tag {tag}", _fmt(sl.get("score")), _ci(sl.get("ci")),
                      str(sl.get("n")))
    out = console()
    out.print(table)
    verdict = "meets" if report.meets(target) else "is below"
    out.print(f"composite {_fmt(report.composite)} {verdict} the target {target:.3f}")
    for warning in outcome.warnings:
        out.print(f"[bold yellow]warning:[/] {warning}")
    if outcome.event is not None:
        out.print(f"recorded EvalCompleted {outcome.event.id} "
                  f"({specialist}#{outcome.event.seq})")


@click.command()
@click.argument("specialist")
@click.argument("baseline")
@click.argument("candidate")
@click.option("--split", type=click.Choice(["core", "dev", "heldout"]), default="core",
              show_default=True,
              help="The scenarios to pair; a core comparison also shows unseen (core "
                   "scenarios neither trained on), dev and held-out.")
@click.option("--resamples", type=click.IntRange(min=100), default=2000, show_default=True)
@json_option
@click.pass_context
@guard
def compare(ctx: click.Context, specialist: str, baseline: str, candidate: str, split: str,
            resamples: int, as_json: bool) -> None:
    """Paired comparison of two recorded evaluations (event ids or model refs).

    Same scenarios, per-scenario deltas, a paired bootstrap CI of the difference, and a
    verdict: better, worse or inconclusive at 95%.
    """
    result = app(ctx).compare(specialist, baseline, candidate, split=split,
                              resamples=resamples)
    if as_json:
        print_json(result.to_dict())
        return
    r = result.result
    click.echo(f"{specialist} · {split} · {r.n} shared scenarios")
    click.echo(f"  baseline  {baseline:<20} {r.mean_a:.3f}  ({result.baseline.id[:12]})")
    click.echo(f"  candidate {candidate:<20} {r.mean_b:.3f}  ({result.candidate.id[:12]})")
    click.echo(f"  difference {r.diff:+.3f}  95% CI [{r.ci[0]:+.3f}, {r.ci[1]:+.3f}]  "
               f"wins {r.wins} / losses {r.losses} / ties {r.ties}")
    click.echo(f"  verdict: {r.verdict}")
    for name, other in result.also.items():
        click.echo(f"  {name:<9} {other.mean_a:.3f} -> {other.mean_b:.3f}  {other.diff:+.3f}  "
                   f"95% CI [{other.ci[0]:+.3f}, {other.ci[1]:+.3f}]  n={other.n}  "
                   f"{other.verdict}")
    for name in result.disagreements():
        click.echo(f"  warning: {split} says {r.verdict} but {name} says "
                   f"{result.also[name].verdict}: the candidate may have learnt the "
                   "evaluation rather than the task", err=True)
    if result.deltas:
        shown = result.deltas[:10]
        click.echo(f"  changed scenarios ({len(result.deltas)}, largest first):")
        for d in shown:
            click.echo(f"    {d['id']:<16} {d['baseline']:.3f} -> {d['candidate']:.3f} "
                       f"({d['delta']:+.3f})")
        if len(result.deltas) > len(shown):
            click.echo(f"    ... {len(result.deltas) - len(shown)} more (--json lists all)")
    if not result.same_suite:
        click.echo("  note: the two evaluations ran on different suite versions", err=True)
