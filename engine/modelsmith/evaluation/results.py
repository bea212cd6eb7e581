"""Result records of an evaluation: per criterion, per scenario run, and the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from modelsmith.errors import ModelsmithError

Split = Literal["core", "dev", "heldout"]


class EvalError(ModelsmithError):
    """An evaluation cannot run or cannot be found (the message says what to do)."""


@dataclass(frozen=True)
class CriterionResult:
    kind: str
    score: float  # in [0, 1]
    reason: str
    weight: float
    required: bool


@dataclass(frozen=True)
class ScenarioScore:
    """A scored output: weighted mean of criteria; pass = all required pass and score >=
    the suite's pass threshold."""

    score: float
    passed: bool
    format_ok: bool  # the output honours the specialist's output contract
    criteria: tuple[CriterionResult, ...]


@dataclass
class ScenarioRun:
    """One scenario input (its own or a variant) run through the model and scored."""

    id: str
    split: Split
    variant: int | None  # None: the scenario's own input; i: its variants[i]
    tags: list[str]
    input: str
    expected: Any
    outputs: list[str]  # one per repeat
    score: float  # after the repeat reducer
    passed: bool
    format_ok: bool
    latency_ms: float  # wall time of the batched call that answered it
    completion_tokens: int
    criteria: list[CriterionResult] = field(default_factory=list)  # of the first repeat
    # Wall time of this input answered alone, one request per call: what a request served
    # alone waits. Measured on a sample of core inputs (the latency probe); None elsewhere.
    alone_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
