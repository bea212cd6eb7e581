"""Augmentation: each failed scenario says *where* the model is wrong; the rows come from
outside the evaluation.

Per failed core scenario: ``per_failure`` new records from the suite's generator
(:mod:`.generator`), seeded by (seed, iteration, scenario) so every iteration asks for new
ones; the ``per_failure`` rows of the suite's labelled pool (``split: train``) nearest to
it (hard-example mining; a pool row is taken once); optional teacher rephrasings. Only a
suite that opts in (``training.use_eval_inputs``) also trains on the failed scenario's own
input and variants and replays passing core scenarios -- and those then stop counting as
unseen (DESIGN.md §5). Deterministic for a seed and iteration (unless a teacher samples).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from modelsmith.evaluation.results import ScenarioRun
from modelsmith.specs import LoadedSuite, Scenario, Specialist

from .dataset import DataError, TrainingRow
from .extraction import Failure, failed_scenario_ids
from .generator import Generator, generate
from .similarity import text_tokens

Teacher = Callable[[str, int], list[str]]
"""``(text, n) -> up to n rephrasings of text`` (the label is kept)."""


class _Rows:
    """Rows in the order they are added, each id made unique (``<id>-2``, ``<id>-3``...)."""

    def __init__(self, task: Any) -> None:
        self.task = task
        self.rows: list[TrainingRow] = []
        self.used: set[str] = set()

    def add(self, row_id: str, text: str, expected: Any, source: str, scenario_id: str,
            rubric: list[dict[str, Any]] | None = None) -> None:
        unique, k = row_id, 1
        while unique in self.used:
            k += 1
            unique = f"{row_id}-{k}"
        self.used.add(unique)
        self.rows.append(TrainingRow(unique, self.task.render(text), text, expected, source,
                                     scenario_id, rubric))


def row_seed(seed: int, iteration: int, scenario_id: str) -> int:
    """The generator's seed for one failed scenario in one iteration: another iteration
    (or scenario) asks for other rows."""
    digest = hashlib.sha256(f"{seed}:{iteration}:{scenario_id}".encode()).hexdigest()
    return int(digest[:8], 16)


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
    iteration: int = 1,
    pool_taken: frozenset[str] = frozenset(),
) -> list[TrainingRow]:
    """Training rows for the failed scenarios (see the module docstring).

    Per failed scenario, in order: with ``training.use_eval_inputs`` its own input
    (``failure``) and each of its variants (``variant``); ``per_failure`` rows from
    ``generator`` (``generator``: each labelled by it, with its own rubric if it gave one);
    the ``per_failure`` nearest pool rows not in ``pool_taken`` (``pool``); up to
    ``per_failure`` teacher rephrasings of its input (``teacher``, the label kept). With
    ``use_eval_inputs``, passing core scenarios of ``passing`` (own input passed, not failed
    anywhere) are then sampled to make up about ``replay_share`` of the result.
    """
    if not 0.0 <= replay_share < 1.0:
        raise ValueError(f"replay_share must be in [0, 1), got {replay_share}")
    if per_failure < 0:
        raise ValueError(f"per_failure must be >= 0, got {per_failure}")
    scenarios = {s.id: s for s in suite.scenarios}
    use_eval = suite.suite.spec.training.use_eval_inputs
    rows = _Rows(specialist.spec.task)
    failed = failed_scenario_ids(failures)
    pool = _Pool(suite, pool_taken)
    for sid in failed:
        sc = _failed_scenario(sid, scenarios, suite)
        if use_eval:
            rows.add(sid, sc.input, sc.expected, "failure", sid)
            for i, text in enumerate(sc.variants, 1):
                rows.add(f"{sid}-v{i}", text, sc.expected, "variant", sid)
        if generator is not None and per_failure > 0:
            _add_generated(rows, generator, sc, scenarios, per_failure,
                           row_seed(seed, iteration, sid))
        for near in pool.nearest(sc.input, per_failure):
            rows.add(near.id, near.input, near.expected, "pool", near.id)
        if teacher is not None and per_failure > 0:
            for k, text in enumerate(_rephrasings(teacher, sc, per_failure), 1):
                rows.add(f"{sid}-t{k}", text, sc.expected, "teacher", sid)
    if use_eval and replay_share > 0 and rows.rows:
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
                 "generator", sc.id, item.get("rubric"))


class _Pool:
    """The suite's training pool, for picking the rows nearest a failed input: the
    IDF-weighted Jaccard of their word tokens (a rare shared value -- a domain -- says more
    than a field name every row has); each pool row is picked once."""

    def __init__(self, suite: LoadedSuite, taken: frozenset[str]) -> None:
        self.rows = [sc for sc in suite.train if sc.id not in taken]
        self.tokens = [frozenset(text_tokens(sc.input)) for sc in self.rows]
        df: dict[str, int] = {}
        for tokens in self.tokens:
            for t in tokens:
                df[t] = df.get(t, 0) + 1
        n = len(self.rows)
        self.idf = {t: math.log((n + 1) / (c + 0.5)) for t, c in df.items()}
        self.unknown = math.log(n + 2)  # a token no pool row has
        self.taken: set[str] = set()

    def _weight(self, tokens: frozenset[str]) -> float:
        return sum(self.idf.get(t, self.unknown) for t in tokens)

    def nearest(self, text: str, n: int) -> list[Scenario]:
        if n <= 0 or not self.rows:
            return []
        query = frozenset(text_tokens(text))

        def similarity(i: int) -> float:
            union = self._weight(query | self.tokens[i])
            return self._weight(query & self.tokens[i]) / union if union else 0.0

        ranked = sorted((i for i, sc in enumerate(self.rows) if sc.id not in self.taken),
                        key=lambda i: (-similarity(i), self.rows[i].id))
        picked = [self.rows[i] for i in ranked[:n]]
        self.taken.update(sc.id for sc in picked)
        return picked


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
