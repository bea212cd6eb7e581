"""Validation: keep the rows fit to train on, count every removal by reason.

Checks, in order: schema; the reference answer scores 1.0 under the row's rubric (its own,
its scenario's or the suite's: ``TrainingRow.rubric_from``); the leakage guard
(:mod:`.leakage`) against every dev and held-out input and variant, and against every core
one unless the suite opts in to training on them (``training.use_eval_inputs``); exact and
near-duplicate removal (:mod:`.similarity`); then the kept rows' class balance and sources
are counted, and the core scenarios they came from or restate (contamination accounting).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from modelsmith.evaluation.criteria import FLOAT_EPS, Judge, ScoringContext
from modelsmith.evaluation.scoring import output_labels, rubric_for, score_output
from modelsmith.specs import LoadedSuite, Scenario, Specialist

from .dataset import EVAL_SOURCES, SOURCES, TrainingRow
from .leakage import LeakageIndex, split_texts, structural_words
from .similarity import GramRanks, TextFeatures, jaccard, text_features

#: Why validation drops a row, in the order the checks run.
REMOVAL_REASONS: tuple[str, ...] = (
    "invalid",
    "reference_fails",
    "leakage",
    "exact_duplicate",
    "near_duplicate",
)


@dataclass(frozen=True)
class DroppedRow:
    id: str
    reason: str  # one of REMOVAL_REASONS
    detail: str


@dataclass
class ValidationReport:
    """What survived validation, and why the rest did not."""

    kept: list[TrainingRow]
    removed: dict[str, int]
    balance: dict[str, int]  # label -> kept rows (label tasks; else empty)
    sources: dict[str, int]  # source -> kept rows
    dropped: list[DroppedRow] = field(default_factory=list)
    # Core scenarios the kept rows came from (eval sources) or restate, sorted; and of
    # those, the ones only the leakage matcher found.
    scenarios: list[str] = field(default_factory=list)
    restated: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.kept) + len(self.dropped)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": len(self.kept),
            "total": self.total,
            "removed": dict(self.removed),
            "balance": dict(self.balance),
            "sources": dict(self.sources),
            "scenarios": list(self.scenarios),
            "restated": list(self.restated),
            "dropped": [asdict(d) for d in self.dropped],
        }


def validate_rows(
    rows: Sequence[TrainingRow],
    suite: LoadedSuite,
    specialist: Specialist,
    *,
    near_dup_threshold: float = 0.8,
    ngram: int = 3,
    judge: Judge | None = None,
) -> ValidationReport:
    """Keep the rows fit to train on, in order; count the others by reason.

    Checks, in order: schema (``invalid``); the row's completion scores 1.0 under its
    scenario's rubric and honours the output contract (``reference_fails``); no held-out
    input in any wording (``leakage``); exact duplicates after
    :func:`~modelsmith.training.similarity.normalise` and near-duplicates (padded word
    ``ngram`` Jaccard >= ``near_dup_threshold``) of an earlier kept row
    (``exact_duplicate``, ``near_duplicate``: the first is kept).
    """
    if not 0.0 < near_dup_threshold <= 1.0:
        raise ValueError(f"near_dup_threshold must be in (0, 1], got {near_dup_threshold}")
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram}")
    labels = output_labels(specialist.spec.task.output)
    dropped: list[DroppedRow] = []
    checked = _rows_with_passing_references(rows, suite, specialist, labels, judge, dropped)
    kept, restated = _distinct_rows_without_leaks(checked, suite, near_dup_threshold, ngram,
                                                  dropped)
    return _report(kept, dropped, labels, restated)


def _schema_problem(row: Any, task: Any, labels: list[str] | None,
                    scenarios: Mapping[str, Scenario]) -> str | None:
    if not isinstance(row, TrainingRow):
        return f"not a TrainingRow: {type(row).__name__}"
    if not isinstance(row.id, str) or not row.id:
        return "empty id"
    if row.source not in SOURCES:
        return f"unknown source {row.source!r}"
    if not isinstance(row.input, str) or not row.input.strip():
        return "empty input"
    if not isinstance(row.prompt, str) or not row.prompt.strip():
        return "empty prompt"
    if row.prompt != task.render(row.input):
        return "prompt is not the task's prompt template applied to the input"
    if row.expected is None or (isinstance(row.expected, str) and not row.expected.strip()):
        return "empty expected"
    if labels is not None and row.expected not in labels:
        return f"expected {row.expected!r} is not a label ({', '.join(labels)})"
    if row.scenario_id not in scenarios:
        return f"unknown scenario {row.scenario_id!r}"
    return None


def _rows_with_passing_references(
    rows: Sequence[TrainingRow], suite: LoadedSuite, specialist: Specialist,
    labels: list[str] | None, judge: Judge | None, dropped: list[DroppedRow],
) -> list[TrainingRow]:
    """The rows of a valid schema and a unique id whose reference answer passes its
    scenario's rubric; the others go to ``dropped`` (``invalid``, ``leakage`` for a row of
    a held-out scenario, ``reference_fails``)."""
    task = specialist.spec.task
    scenarios = {s.id: s for s in suite.scenarios}
    checked: list[TrainingRow] = []
    seen_ids: set[str] = set()
    for row in rows:
        problem = _schema_problem(row, task, labels, scenarios)
        if problem is None and row.id in seen_ids:
            problem = "duplicate id"
        if problem is not None:
            dropped.append(DroppedRow(str(getattr(row, "id", "?")), "invalid", problem))
            continue
        seen_ids.add(row.id)
        failed = _reference_problem(row, scenarios[row.scenario_id], suite, task.output,
                                    labels, judge)
        if failed is not None:
            dropped.append(DroppedRow(row.id, *failed))
            continue
        checked.append(row)
    return checked


def row_rubric(row: TrainingRow, scenario: Scenario, suite: LoadedSuite) -> list[Any]:
    """The criteria that score ``row`` (see ``TrainingRow.rubric_from``)."""
    from pydantic import TypeAdapter

    from modelsmith.specs.rubric import Criterion

    match row.rubric_from:
        case "own":
            return TypeAdapter(list[Criterion]).validate_python(row.rubric)
        case "scenario":
            return rubric_for(scenario, suite)
    return list(suite.suite.spec.rubric)


def _reference_problem(row: TrainingRow, scenario: Scenario, suite: LoadedSuite,
                       contract: Any, labels: list[str] | None,
                       judge: Judge | None) -> tuple[str, str] | None:
    """``(reason, detail)`` when the row's scenario is dev or held-out, or its completion
    does not score 1.0 within the output contract under its rubric; None when it does."""
    from pydantic import ValidationError

    if scenario.split in ("dev", "heldout"):
        split = "held-out" if scenario.split == "heldout" else scenario.split
        return "leakage", f"derived from {split} scenario {scenario.id!r}"
    if row.source in EVAL_SOURCES and scenario.split != "core":
        return "invalid", f"a {row.source} row of non-core scenario {scenario.id!r}"
    try:
        rubric = row_rubric(row, scenario, suite)
    except ValidationError as exc:
        first = exc.errors()[0]
        return "invalid", (f"its own rubric is invalid at "
                           f"{'.'.join(map(str, first['loc'])) or 'rubric'}: {first['msg']}")
    ctx = ScoringContext(expected=row.expected, labels=labels, judge=judge)
    scored = score_output(rubric, row.completion, ctx,
                          suite.suite.spec.pass_threshold, contract)
    if scored.score < 1.0 - FLOAT_EPS or not scored.format_ok:
        why = next((f"{c.kind}: {c.reason}" for c in scored.criteria if c.score < 1.0),
                   "the answer breaks the output contract")
        return "reference_fails", why
    return None


class _KeptTexts:
    """The texts of the rows kept so far, indexed for exact and near-duplicate lookups."""

    def __init__(self, ranks: GramRanks, threshold: float) -> None:
        self.ranks, self.threshold = ranks, threshold
        self.ids: list[str] = []
        self.texts: list[TextFeatures] = []
        self.exact: dict[str, str] = {}
        self.prefixes: dict[str, list[int]] = {}

    def duplicate(self, text: TextFeatures) -> tuple[str, str] | None:
        """``(reason, detail)`` when ``text`` duplicates a kept text, else None."""
        first = self.exact.get(text.key)
        if first is not None:
            return "exact_duplicate", f"same text as {first!r}"
        prefix = self.ranks.prefix(text.grams, self.threshold)
        candidates = sorted({i for g in prefix for i in self.prefixes.get(g, ())})
        near = next((i for i in candidates
                     if jaccard(text.grams, self.texts[i].grams)
                     >= self.threshold - FLOAT_EPS), None)
        if near is None:
            return None
        score = jaccard(text.grams, self.texts[near].grams)
        return "near_duplicate", f"n-gram Jaccard {score:.2f} with {self.ids[near]!r}"

    def add(self, row_id: str, text: TextFeatures) -> None:
        self.exact[text.key] = row_id
        for g in self.ranks.prefix(text.grams, self.threshold):
            self.prefixes.setdefault(g, []).append(len(self.ids))
        self.ids.append(row_id)
        self.texts.append(text)


def _distinct_rows_without_leaks(
    checked: list[TrainingRow], suite: LoadedSuite, threshold: float, ngram: int,
    dropped: list[DroppedRow],
) -> tuple[list[TrainingRow], dict[str, str]]:
    """``checked`` less the rows that leak an evaluated input and the duplicates of an
    earlier kept row (those go to ``dropped``); with the core scenarios kept rows restate
    (only when the suite trains on its own core inputs: else such rows leak)."""
    texts = [text_features(row.input, ngram) for row in checked]
    use_eval = suite.suite.spec.training.use_eval_inputs
    guarded = split_texts(suite, ("dev", "heldout") if use_eval else
                          ("core", "dev", "heldout"), ngram)
    core = split_texts(suite, ("core",), ngram) if use_eval else []
    splits = {sc.id: sc.split for sc in suite.scenarios}
    ranks = GramRanks([t.grams for t in texts] + [t.grams for _, t in guarded + core])
    word_df: Counter[str] = Counter()
    for t in texts + [t for _, t in guarded + core]:
        word_df.update(t.words)
    structural = structural_words(suite)
    leaks = LeakageIndex(guarded, threshold, structural, ranks, word_df)
    restates = LeakageIndex(core, threshold, structural, ranks, word_df) if core else None
    seen = _KeptTexts(ranks, threshold)
    kept: list[TrainingRow] = []
    restated: dict[str, str] = {}
    for row, text in zip(checked, texts, strict=True):
        # An eval row is its scenario's own text (or a rewording): that is no leak of it.
        leak = leaks.match(text) if row.source not in EVAL_SOURCES or use_eval else \
            _other_leak(leaks, text, row.scenario_id)
        if leak is not None:
            dropped.append(DroppedRow(row.id, "leakage",
                                      f"{splits.get(leak[0], 'core')} {leak[0]!r}: {leak[1]}"))
            continue
        duplicate = seen.duplicate(text)
        if duplicate is not None:
            dropped.append(DroppedRow(row.id, *duplicate))
            continue
        seen.add(row.id, text)
        kept.append(row)
        if restates is not None:
            hit = restates.match(text)
            if hit is not None and hit[0] != row.scenario_id:
                restated.setdefault(hit[0], row.id)
    return kept, restated


def _other_leak(leaks: LeakageIndex, text: TextFeatures,
                own: str) -> tuple[str, str] | None:
    """A leak of ``text`` into a scenario other than its own (teacher rows reword their
    own core scenario; they still must not match another one)."""
    hit = leaks.match(text)
    return None if hit is None or hit[0] == own else hit


def _report(kept: list[TrainingRow], dropped: list[DroppedRow],
            labels: list[str] | None, restated: dict[str, str]) -> ValidationReport:
    removed = dict.fromkeys(REMOVAL_REASONS, 0)
    for row in dropped:
        removed[row.reason] += 1
    balance: dict[str, int] = {}
    if labels is not None:
        counts = Counter(row.expected for row in kept)
        balance = {label: counts.get(label, 0) for label in labels}
    sources = Counter(row.source for row in kept)
    return ValidationReport(
        kept=kept,
        removed=removed,
        balance=balance,
        sources={s: sources[s] for s in SOURCES if sources[s]},
        dropped=dropped,
        scenarios=sorted({r.scenario_id for r in kept if r.source in EVAL_SOURCES}
                         | set(restated)),
        restated=sorted(restated),
    )
