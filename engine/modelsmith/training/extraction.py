"""Failures: the failed *core* runs of an evaluation, its own inputs and variants.

Held-out runs never become training material; they are what the held-out gate measures.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from modelsmith.evaluation.results import ScenarioRun


@dataclass(frozen=True)
class Failure:
    """One failed core run: a scenario's own input (``variant`` None) or one variant."""

    id: str
    variant: int | None
    input: str
    expected: Any
    outputs: list[str]
    score: float
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def extract_failures(runs: Sequence[ScenarioRun]) -> list[Failure]:
    """The failed core runs, in run order; held-out runs are never training material."""
    failures = []
    for run in runs:
        if run.split != "core" or run.passed:
            continue
        missed = [c for c in run.criteria if c.score < 1.0] or list(run.criteria)
        failures.append(Failure(
            id=run.id,
            variant=run.variant,
            input=run.input,
            expected=run.expected,
            outputs=list(run.outputs),
            score=run.score,
            reasons=[f"{c.kind}: {c.reason}" for c in missed],
        ))
    return failures


def failed_scenario_ids(failures: Iterable[Failure]) -> list[str]:
    """The scenario ids of ``failures``, each once, in order (``FailuresExtracted``)."""
    return list(dict.fromkeys(f.id for f in failures))
