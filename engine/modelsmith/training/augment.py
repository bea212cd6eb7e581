"""Augmentation: each failed scenario becomes several training rows, plus replay rows.

Each failed scenario gives its own input, the suite's variants of it, rows from the suite's
generator (:mod:`.generator`) and optional teacher rephrasings; passing core scenarios are
mixed in (replay) so the model does not forget what already works. Deterministic for a
seed (unless a teacher samples).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from modelsmith.evaluation.results import ScenarioRun
from modelsmith.specs import LoadedSuite, Scenario, Specialist

from .dataset import DataError, TrainingRow
from .extraction import Failure, failed_scenario_ids
from .generator import Generator, generate

Teacher = Callable[[str, int], list[str]]
"""``(text, n) -> up to n rephrasings of text`` (the label is kept)."""


class _Rows:
    """Rows in the order they are added, each id made unique (``<id>-2``, ``<id>-3``...)."""

    def __init__(self, task: Any) -> None:
        self.task = task
        self.rows: list[TrainingRow] = []
        self.used: set[str] = set()

    def add(self, row_id: str, text: str, expected: Any, source: str, scenario_id: str) -> None:
        unique, k = row_id, 1
        while unique in self.used:
            k += 1
            unique = f"{row_id}-{k}"
        self.used.add(unique)
        self.rows.append(TrainingRow(unique, self.task.render(text), text, expected, source,
                                     scenario_id))


def augment(
    failures: Sequence[Failure],
    suite: LoadedSuite,
    specialist: Specialist,
    *,
    passing: Sequence[ScenarioRun] = (),
    generator: Generator | None = None,
    per_failure: int = 4,
    replay_share: float = 0.3,
    teacher: Teacher | None = None,
    seed: int = 0,
) -> list[TrainingRow]:
    """Training rows for the failed scenarios, then replay rows.

    Per failed scenario, in order: its own input (``failure``), each of its variants
    (``variant``), ``per_failure`` rows from ``generator`` (labelled by it) and up to
    ``per_failure`` teacher rephrasings of its input (the label kept). Then passing core
    scenarios of ``passing`` (runs of an evaluation: own input passed, not failed anywhere)
    are sampled so that they make up about ``replay_share`` of the result.
    """
    if not 0.0 <= replay_share < 1.0:
        raise ValueError(f"replay_share must be in [0, 1), got {replay_share}")
    if per_failure < 0:
        raise ValueError(f"per_failure must be >= 0, got {per_failure}")
    scenarios = {s.id: s for s in suite.scenarios}
    rows = _Rows(specialist.spec.task)
    failed = failed_scenario_ids(failures)
    for sid in failed:
        sc = _failed_scenario(sid, scenarios, suite)
        rows.add(sid, sc.input, sc.expected, "failure", sid)
        for i, text in enumerate(sc.variants, 1):
            rows.add(f"{sid}-v{i}", text, sc.expected, "variant", sid)
        if generator is not None and per_failure > 0:
            _add_generated(rows, generator, sc, scenarios, per_failure, seed)
        if teacher is not None and per_failure > 0:
            for k, text in enumerate(_rephrasings(teacher, sc, per_failure), 1):
                rows.add(f"{sid}-t{k}", text, sc.expected, "teacher", sid)
    if replay_share > 0 and rows.rows:
        wanted = round(replay_share * len(rows.rows) / (1.0 - replay_share))
        for sid in _replayed(passing, failed, scenarios, wanted, seed):
            sc = scenarios[sid]
            rows.add(f"{sid}-pass", sc.input, sc.expected, "replay", sid)
    return rows.rows


def _failed_scenario(sid: str, scenarios: dict[str, Scenario], suite: LoadedSuite) -> Scenario:
    """The suite's scenario ``sid``: it must still exist and be a core scenario."""
    sc = scenarios.get(sid)
    if sc is None:
        raise DataError(f"failed scenario {sid!r} is not in suite {suite.name!r} "
                        "(the suite changed since the evaluation? evaluate again)")
    if sc.split != "core":
        raise DataError(f"scenario {sid!r} is held-out: it never becomes training data")
    return sc


def _add_generated(rows: _Rows, generator: Generator, sc: Scenario,
                   scenarios: dict[str, Scenario], per_failure: int, seed: int) -> None:
    for k, item in enumerate(generate(generator, sc, per_failure, seed), 1):
        given = item.get("id")
        # The generator's own id ("<id>-near3") unless it would pass for a scenario.
        own = isinstance(given, str) and given and given not in scenarios
        rows.add(given if own else f"{sc.id}-gen{k}", item["input"], item["expected"],
                 "generator", sc.id)


def _rephrasings(teacher: Teacher, sc: Scenario, per_failure: int) -> list[str]:
    """Up to ``per_failure`` non-blank teacher rewrites of the scenario's input."""
    try:
        return [t for t in teacher(sc.input, per_failure)
                if isinstance(t, str) and t.strip()][:per_failure]
    except Exception as exc:
        raise DataError(f"the teacher failed for scenario {sc.id!r}: "
                        f"{type(exc).__name__}: {exc}") from exc


def _replayed(passing: Sequence[ScenarioRun], failed: list[str],
              scenarios: dict[str, Scenario], wanted: int, seed: int) -> list[str]:
    """Up to ``wanted`` passing core scenario ids, sampled for ``seed``."""
    # A scenario whose own input or any variant failed is not replayed.
    excluded = set(failed) | {run.id for run in passing if not run.passed}
    eligible = list(dict.fromkeys(
        run.id for run in passing
        if run.split == "core" and run.variant is None and run.id not in excluded
        and run.id in scenarios and scenarios[run.id].split == "core"
    ))
    rng = random.Random(f"replay:{seed}")
    return rng.sample(eligible, min(wanted, len(eligible)))
