"""Reference answers checked against their rubric: every scenario's ``expected``, answered as
the model would answer it, must score 1.0 under the scenario's rubric and honour the output
contract of each specialist the suite measures.

A reference that fails its own rubric is a broken suite (a ``json_field`` path the expected
object lacks, a label outside the rubric's labels, a regex the answer does not match): no
model could ever pass that scenario, and training would drop every row derived from it.
``modelsmith validate`` reports these problems like any other spec issue.
"""

from __future__ import annotations

import json
from typing import Any

from modelsmith.specs import LoadedSuite, Repository, Scenario, SpecIssue
from modelsmith.specs.context import LoadContext
from modelsmith.specs.rubric import Criterion, JsonFieldCriterion, LengthCriterion, RegexCriterion
from modelsmith.specs.suites import SUITE_FILE

from .criteria import FLOAT_EPS, ScoringContext, run_criterion, safe_text
from .scoring import format_ok, output_labels, rubric_for


def reference_answer(expected: Any) -> str:
    """The expected value as the model should answer it: a string as is, anything else as
    canonical JSON text (keys sorted, so an answer never depends on the order a dict was
    built or read back in). Training rows, the eval's token budget and validate use it."""
    if isinstance(expected, str):
        return expected
    return json.dumps(expected, ensure_ascii=False, sort_keys=True)


def reference_problems(repo: Repository) -> list[SpecIssue]:
    """Every scenario whose reference answer scores below 1.0 under its rubric, or breaks the
    output contract of a specialist measured by its suite, as an issue at the scenario's
    file and line (field ``expected``) naming the criterion; sorted by file and line, at most
    as many per file as the loaders report.

    Criteria that cannot be checked offline are skipped: ``judge``, and the ``max_tokens``
    bound of ``length`` (there is no tokenizer here; ``max_chars`` is still checked).
    """
    ctx = LoadContext(repo.root)
    for name in sorted(repo.suites):
        suite = repo.suites[name]
        contracts = [(s, spec.spec.task.output) for s, spec in sorted(repo.specialists.items())
                     if spec.spec.evals == name]
        suite_file = ctx.rel(suite.directory / SUITE_FILE)
        with ctx.guard(suite_file):
            for scenario in suite.scenarios:
                ctx.extend(_scenario_problems(scenario, suite, suite_file, contracts))
    return sorted(ctx.issues, key=SpecIssue.sort_key)


def _scenario_problems(scenario: Scenario, suite: LoadedSuite, suite_file: str,
                       contracts: list[tuple[str, Any]]) -> list[SpecIssue]:
    file, line = suite.scenario_sources[scenario.id]
    answer = reference_answer(scenario.expected)
    where = "rubric" if scenario.rubric else f"{suite_file} spec.rubric"
    messages: list[str] = []
    # Each specialist's labels can change how a label criterion scores; a suite no
    # specialist uses is checked with no contract at all.
    for specialist, contract in contracts or [(None, None)]:
        ctx = ScoringContext(expected=scenario.expected, labels=output_labels(contract))
        for index, spec in enumerate(rubric_for(scenario, suite)):
            offline = _offline(spec)
            if offline is None:
                continue
            score, reason = run_criterion(offline, answer, ctx)
            if score < 1.0 - FLOAT_EPS:
                messages.append(f"the reference answer scores {score:g} on {where}[{index}] "
                                f"({_describe(spec)}): {reason}")
        if specialist is not None and not format_ok(answer, contract):
            messages.append(f"the reference answer {safe_text(repr(answer), 60)} breaks the "
                            f"{contract.kind} output contract of specialist '{specialist}'")
    unique = list(dict.fromkeys(messages))
    return [SpecIssue(file, line, None, "expected", message) for message in unique]


def _offline(spec: Criterion) -> Criterion | None:
    """``spec`` as far as it can be checked without a model: ``None`` for a judge or a
    tokens-only length bound; a length bound on tokens and characters keeps the latter."""
    if spec.kind == "judge":
        return None
    if isinstance(spec, LengthCriterion) and spec.max_tokens is not None:
        if spec.max_chars is None:
            return None
        return spec.model_copy(update={"max_tokens": None})
    return spec


def _describe(spec: Criterion) -> str:
    """The criterion's kind and the parameter that tells it apart."""
    if isinstance(spec, JsonFieldCriterion):
        return f"json_field {safe_text(spec.path, 60)!r}"
    if isinstance(spec, RegexCriterion):
        return f"regex /{safe_text(spec.pattern, 60)}/"
    return spec.kind
