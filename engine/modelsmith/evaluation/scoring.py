"""Scoring an output against a rubric: the one scorer behind evals, the GRPO reward and
live monitoring."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelsmith.specs.models import LabelOutput
from modelsmith.specs.rubric import Criterion

from .criteria import (
    FLOAT_EPS,
    ScoringContext,
    as_text,
    extract_label,
    parse_json_output,
    run_criterion,
    schema_error,
    schema_validator,
)
from .results import CriterionResult, ScenarioScore


def output_labels(contract: Any) -> list[str] | None:
    """The labels an output contract allows (label tasks), else None."""
    return list(contract.labels) if isinstance(contract, LabelOutput) else None


def score_output(
    rubric: Sequence[Criterion],
    output: str,
    ctx: ScoringContext,
    pass_threshold: float,
    output_contract: Any = None,
) -> ScenarioScore:
    """Score one output: the weighted mean of its criteria.

    ``passed`` means every ``required`` criterion scored a full 1.0 (partial credit on a
    required criterion is a fail) and the score reaches ``pass_threshold`` (within float
    noise). ``format_ok`` says whether the output honours ``output_contract``.
    """
    text = as_text(output)
    results: list[CriterionResult] = []
    total = weights = 0.0
    required_ok = True
    for spec in rubric:
        score, reason = run_criterion(spec, text, ctx)
        results.append(CriterionResult(spec.kind, score, reason, spec.weight, spec.required))
        total += score * spec.weight
        weights += spec.weight
        if spec.required and score < 1.0:
            required_ok = False
    mean = min(total / weights, 1.0) if weights > 0 else 0.0
    passed = bool(results) and required_ok and mean >= pass_threshold - FLOAT_EPS
    return ScenarioScore(mean, passed, format_ok(text, output_contract), tuple(results))


def format_ok(output: str, output_contract: Any = None) -> bool:
    """Whether ``output`` honours the contract: a label contract wants one of its labels as
    the first word (case-insensitive), a JSON contract a JSON document (valid per its schema
    when one is given), free text (or no contract) anything non-blank."""
    text = as_text(output)
    kind = getattr(output_contract, "kind", None)
    if kind == "label":
        got = extract_label(text).casefold()
        return bool(got) and any(got == label.casefold() for label in output_contract.labels)
    if kind == "json":
        ok, value, _ = parse_json_output(text)
        if not ok:
            return False
        schema = output_contract.schema_
        if schema is None:
            return True
        validator = schema_validator(schema)
        return validator is not None and schema_error(validator, value) is None
    return bool(text.strip())


def rubric_for(scenario: Any, suite: Any) -> list[Criterion]:
    """The scenario's own rubric if it has one, else the suite's default rubric.

    ``suite`` is an ``EvalSuite`` or a loaded suite wrapping one (``.suite``).
    """
    if scenario.rubric:
        return list(scenario.rubric)
    document = getattr(suite, "suite", suite)
    return list(document.spec.rubric)
