"""Training data: failed scenarios become augmented, validated rows.

The pipeline is three pure steps, deterministic for a seed:

1. :func:`extract_failures` — the failed *core* runs of an evaluation (own inputs and
   variants; held-out runs never become training data).
2. :func:`augment` — each failed scenario gives its own input, the suite's variants of it,
   rows from the suite's generator (``spec.generator``, loaded by :func:`load_generator`)
   and optional teacher rephrasings; passing core scenarios are mixed in (replay) so the
   model does not forget what already works.
3. :func:`validate_rows` — schema, reference answer scores 1.0 under the scenario's rubric,
   leakage guard against every held-out input, exact and near-duplicate removal, class
   balance. Every removal is counted by reason.

Text comparison (:func:`normalise`, :func:`text_tokens`): NFKC, case-folded, split into
word tokens; punctuation and whitespace only separate tokens. Every number is one token,
canonicalised (``1.0%`` and ``1%`` -> ``1``, ``$3.40`` -> ``3.4``), so a changed value is a
changed token rather than a changed character. Word n-grams are padded at both ends, so a
word changed at the start or the end of a text weighs as much as one in the middle: in the
demo suite's 14-token bid requests one changed field gives a trigram Jaccard of 0.68 —
another bid, kept — while a case or punctuation change is an exact duplicate.

Near-duplicates among training rows are textual only (padded n-gram Jaccard): deliberate
rephrasings (variants, teacher rows) stay, because they teach robustness. The leakage guard
is stricter, because a held-out input in any wording voids the held-out gate. A row leaks
when, against one held-out input (or held-out variant), it is

- the same normalised text;
- n-gram Jaccard >= threshold; or n-gram containment (shared n-grams over those of the
  shorter text) >= threshold, when the shorter text is a passage of a clearly longer one
  (at most threshold times its n-grams: at equal lengths one changed word still leaves
  ~80% shared);
- a *restatement*: the same numbers (as a multiset), every informative word of one text
  present in the other, in any order, and lengths within a factor of two. Informative
  words are those not in more than half of the suite's scenario texts (field names such as
  ``domain`` or ``ctr`` are structural). This catches reordered fields, added words and
  prose rewordings that keep every value; a bid with any value changed is another bid.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import random
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelsmith.errors import ModelsmithError
from modelsmith.evaluation.criteria import FLOAT_EPS, Judge, ScoringContext
from modelsmith.evaluation.results import ScenarioRun
from modelsmith.evaluation.scoring import output_labels, rubric_for, score_output
from modelsmith.specs import LoadedSuite, Scenario, Specialist

#: Where a training row came from.
SOURCES: tuple[str, ...] = ("failure", "variant", "generator", "teacher", "replay")
#: Why validation drops a row, in the order the checks run.
REMOVAL_REASONS: tuple[str, ...] = (
    "invalid",
    "reference_fails",
    "leakage",
    "exact_duplicate",
    "near_duplicate",
)
#: A restatement's texts differ in length by at most this factor.
RESTATE_MIN_LENGTH_RATIO = 0.5
#: Words in more than this share of a suite's scenario texts are structural (field names).
STRUCTURAL_DF = 0.5
#: Below this many scenario texts no word is called structural: too few to tell.
STRUCTURAL_MIN_TEXTS = 20

Generator = Callable[..., Any]
"""A suite's generator: ``(scenario: dict, n: int, seed: int) -> list[scenario dict]``."""
Teacher = Callable[[str, int], list[str]]
"""``(text, n) -> up to n rephrasings of text`` (the label is kept)."""


class DataError(ModelsmithError):
    """Training data cannot be built (the message names the file or scenario at fault)."""


# --------------------------------------------------------------------------- failures


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


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class TrainingRow:
    """One training example: the prompt the model sees and the answer the rubric wants.

    ``scenario_id`` names the suite scenario the row derives from: its rubric scores the
    row (in validation and as the GRPO reward).
    """

    id: str
    prompt: str
    input: str
    expected: Any
    source: str
    scenario_id: str

    @property
    def answer(self) -> str:
        """The reference answer as text: a label or string as is, anything else as JSON."""
        if isinstance(self.expected, str):
            return self.expected
        return json.dumps(self.expected, ensure_ascii=False)

    @property
    def completion(self) -> str:
        """The answer as the model should write it after the prompt: a prompt that does not
        end in whitespace (``...Verdict:``) is followed by a space, so a label is its own
        word-initial token (`` ACCEPT``), as the tokenizer saw it in pre-training."""
        if not self.prompt or self.prompt[-1].isspace():
            return self.answer
        return " " + self.answer

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "completion": self.completion}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingRow:
        """The row back from :meth:`to_dict` (``completion`` is derived, so ignored)."""
        return cls(**{name: data[name] for name in _ROW_FIELDS})


_ROW_FIELDS = ("id", "prompt", "input", "expected", "source", "scenario_id")


# --------------------------------------------------------------------------- generator


def load_generator(suite: LoadedSuite) -> Generator | None:
    """The suite's ``spec.generator`` (``file.py:function`` inside the suite folder), or
    None when the suite declares none. Raises :class:`DataError` naming the file."""
    declared = suite.suite.spec.generator
    if declared is None:
        return None
    file_name, _, function = declared.rpartition(":")
    directory = Path(suite.directory)
    path = directory / file_name
    shown = f"{directory.parent.name}/{directory.name}/{file_name}"  # evals/<suite>/<file>
    try:
        inside = path.resolve().is_relative_to(directory.resolve())
    except (OSError, RuntimeError) as exc:
        raise DataError(f"{shown}: cannot resolve the generator file: {exc}") from exc
    if not inside:
        raise DataError(f"{shown}: the generator file must be inside the suite folder")
    if not path.is_file():
        raise DataError(f"{shown}: generator file not found (spec.generator: {declared})")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    safe = re.sub(r"\W", "_", suite.name)
    name = f"_modelsmith_generator_{safe}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DataError(f"{shown}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses (and pickling) look their module up by name.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise DataError(f"{shown}: the generator module failed to load: "
                        f"{type(exc).__name__}: {exc}") from exc
    fn = getattr(module, function, None)
    if not callable(fn):
        raise DataError(f"{shown}: defines no function {function!r} (spec.generator: {declared})")
    return fn


def _describe(fn: Callable[..., Any]) -> str:
    code = getattr(fn, "__code__", None)
    where = Path(code.co_filename).name if code is not None else type(fn).__name__
    return f"{where}:{getattr(fn, '__name__', 'generator')}"


def _generate(generator: Generator, scenario: Scenario, n: int, seed: int) -> list[dict]:
    where = _describe(generator)
    row = scenario.model_dump(mode="json", by_alias=True, exclude_none=True)
    try:
        made = generator(row, n, seed)
    except Exception as exc:
        raise DataError(f"{where}: failed for scenario {scenario.id!r}: "
                        f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(made, Sequence) or isinstance(made, str | bytes):
        raise DataError(f"{where}: must return a list of scenario dicts, got "
                        f"{type(made).__name__} for scenario {scenario.id!r}")
    out = []
    for index, item in enumerate(made):
        text = item.get("input") if isinstance(item, Mapping) else None
        if not isinstance(text, str) or not text.strip() or item.get("expected") is None:
            raise DataError(f"{where}: item {index} for scenario {scenario.id!r} needs a "
                            f"non-empty 'input' and an 'expected' value: {str(item)[:80]}")
        out.append(dict(item))
    return out


# --------------------------------------------------------------------------- augmentation


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
    task = specialist.spec.task
    scenarios = {s.id: s for s in suite.scenarios}
    rows: list[TrainingRow] = []
    used: set[str] = set()

    def add(row_id: str, text: str, expected: Any, source: str, scenario_id: str) -> None:
        unique, k = row_id, 1
        while unique in used:
            k += 1
            unique = f"{row_id}-{k}"
        used.add(unique)
        rows.append(TrainingRow(unique, task.render(text), text, expected, source, scenario_id))

    failed = failed_scenario_ids(failures)
    for sid in failed:
        sc = scenarios.get(sid)
        if sc is None:
            raise DataError(f"failed scenario {sid!r} is not in suite {suite.name!r} "
                            "(the suite changed since the evaluation? evaluate again)")
        if sc.split != "core":
            raise DataError(f"scenario {sid!r} is held-out: it never becomes training data")
        add(sid, sc.input, sc.expected, "failure", sid)
        for i, text in enumerate(sc.variants, 1):
            add(f"{sid}-v{i}", text, sc.expected, "variant", sid)
        if generator is not None and per_failure > 0:
            for k, item in enumerate(_generate(generator, sc, per_failure, seed), 1):
                given = item.get("id")
                # The generator's own id ("<id>-near3") unless it would pass for a scenario.
                own = isinstance(given, str) and given and given not in scenarios
                add(given if own else f"{sid}-gen{k}", item["input"], item["expected"],
                    "generator", sid)
        if teacher is not None and per_failure > 0:
            try:
                texts = [t for t in teacher(sc.input, per_failure)
                         if isinstance(t, str) and t.strip()][:per_failure]
            except Exception as exc:
                raise DataError(f"the teacher failed for scenario {sid!r}: "
                                f"{type(exc).__name__}: {exc}") from exc
            for k, text in enumerate(texts, 1):
                add(f"{sid}-t{k}", text, sc.expected, "teacher", sid)

    if replay_share > 0 and rows:
        # A scenario whose own input or any variant failed is not replayed.
        excluded = set(failed) | {run.id for run in passing if not run.passed}
        eligible = list(dict.fromkeys(
            run.id for run in passing
            if run.split == "core" and run.variant is None and run.id not in excluded
            and run.id in scenarios and scenarios[run.id].split == "core"
        ))
        wanted = round(replay_share * len(rows) / (1.0 - replay_share))
        rng = random.Random(f"replay:{seed}")
        for sid in rng.sample(eligible, min(wanted, len(eligible))):
            sc = scenarios[sid]
            add(f"{sid}-pass", sc.input, sc.expected, "replay", sid)
    return rows


# --------------------------------------------------------------------------- text


_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+")
_PAD_START, _PAD_END = "\x02", "\x03"


def _number(token: str) -> str:
    whole, _, frac = token.partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    return f"{whole}.{frac}" if frac else whole


def text_tokens(text: str) -> list[str]:
    """Word tokens of ``text``: NFKC, case-folded, punctuation dropped, each number one
    canonical token (``'CTR 1.0%'`` -> ``['ctr', '1']``)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return [_number(t) if t[0].isdigit() else t for t in _TOKEN.findall(folded)]


def normalise(text: str) -> str:
    """The text two exact duplicates share: its tokens joined by single spaces."""
    return " ".join(text_tokens(text))


def ngrams(tokens: Sequence[str], n: int) -> frozenset[str]:
    """Word n-grams, padded at both ends so that every token is in ``n`` of them."""
    if n <= 1:
        return frozenset(tokens)
    padded = [_PAD_START] * (n - 1) + list(tokens) + [_PAD_END] * (n - 1)
    return frozenset(" ".join(padded[i:i + n]) for i in range(len(padded) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


@dataclass(frozen=True, slots=True)
class _Text:
    key: str
    length: int
    grams: frozenset[str]
    numbers: tuple[str, ...]  # sorted: a multiset
    words: frozenset[str]


def _text(text: str, n: int) -> _Text:
    tokens = text_tokens(text)
    numbers = tuple(sorted(t for t in tokens if t[0].isdigit()))
    words = frozenset(t for t in tokens if not t[0].isdigit())
    return _Text(" ".join(tokens), len(tokens), ngrams(tokens, n), numbers, words)


def _min_overlap(size: int, threshold: float) -> int:
    return max(1, math.ceil(threshold * size - 1e-9))


class _Ranks:
    """A global order (rarest first) for prefix filtering: two sets whose overlap is at
    least ``t`` times the size of one of them, A, share an item among A's first
    ``|A| - ceil(t|A|) + 1`` items in that order."""

    def __init__(self, sets: Iterable[Iterable[str]]) -> None:
        self.freq: Counter[str] = Counter()
        for items in sets:
            self.freq.update(items)

    def prefix(self, items: frozenset[str], threshold: float) -> list[str]:
        ordered = sorted(items, key=lambda g: (self.freq[g], g))
        return ordered[: len(ordered) - _min_overlap(len(ordered), threshold) + 1]


def _structural_words(suite: LoadedSuite) -> frozenset[str]:
    texts = [text for sc in suite.scenarios for text in (sc.input, *sc.variants)]
    if len(texts) < STRUCTURAL_MIN_TEXTS:
        return frozenset()
    df: Counter[str] = Counter()
    for text in texts:
        df.update({t for t in text_tokens(text) if not t[0].isdigit()})
    return frozenset(w for w, c in df.items() if c > STRUCTURAL_DF * len(texts))


class _LeakageIndex:
    """Held-out texts indexed for the three leakage tests (see the module docstring)."""

    def __init__(self, items: list[tuple[str, _Text]], threshold: float,
                 structural: frozenset[str], ranks: _Ranks, word_df: Counter[str]) -> None:
        self.items, self.threshold, self.structural = items, threshold, structural
        self.ranks, self.word_df = ranks, word_df
        self.exact: dict[str, int] = {}
        self.grams: dict[str, list[int]] = {}
        self.prefixes: dict[str, list[int]] = {}
        self.anchors: dict[tuple[tuple[str, ...], str], list[int]] = {}
        self.words: dict[tuple[tuple[str, ...], str], list[int]] = {}
        for i, (_, text) in enumerate(items):
            self.exact.setdefault(text.key, i)
            for g in text.grams:
                self.grams.setdefault(g, []).append(i)
            for g in ranks.prefix(text.grams, threshold):
                self.prefixes.setdefault(g, []).append(i)
            self.anchors.setdefault((text.numbers, self._anchor(text)), []).append(i)
            for w in (*text.words, ""):
                self.words.setdefault((text.numbers, w), []).append(i)

    def _info(self, text: _Text) -> frozenset[str]:
        return (text.words - self.structural) or text.words

    def _anchor(self, text: _Text) -> str:
        info = self._info(text)
        return min(info, key=lambda w: (self.word_df[w], w)) if info else ""

    def _restates(self, a: _Text, b: _Text) -> bool:
        """Whether ``a`` says all that ``b`` says: same numbers, b's informative words."""
        if a.numbers != b.numbers or not (a.numbers or b.words):
            return False
        if min(a.length, b.length) < RESTATE_MIN_LENGTH_RATIO * max(a.length, b.length):
            return False
        return self._info(b) <= a.words

    def match(self, text: _Text) -> tuple[str, str] | None:
        """``(held-out id, how)`` of the first held-out text ``text`` leaks, or None."""
        hit = self.exact.get(text.key)
        if hit is not None:
            return self.items[hit][0], "identical after normalisation"
        candidates: set[int] = set()
        for g in self.ranks.prefix(text.grams, self.threshold):
            candidates.update(self.grams.get(g, ()))
        for g in text.grams:
            candidates.update(self.prefixes.get(g, ()))
        for i in sorted(candidates):
            other = self.items[i][1]
            inter = len(text.grams & other.grams)
            union = len(text.grams) + len(other.grams) - inter
            if inter >= self.threshold * union - FLOAT_EPS:
                return self.items[i][0], f"n-gram Jaccard {inter / union:.2f}"
            smaller, larger = sorted((len(text.grams), len(other.grams)))
            # Only a clearly shorter text is a passage of the other: at equal lengths one
            # changed word still leaves ~80% of the n-grams shared (that is Jaccard's case).
            if (smaller <= self.threshold * larger + FLOAT_EPS
                    and inter >= self.threshold * smaller - FLOAT_EPS):
                return self.items[i][0], f"n-gram containment {inter / smaller:.2f}"
        restated: set[int] = set()
        for w in (*text.words, ""):
            restated.update(self.anchors.get((text.numbers, w), ()))
        restated.update(self.words.get((text.numbers, self._anchor(text)), ()))
        for i in sorted(restated):
            other = self.items[i][1]
            if self._restates(text, other) or self._restates(other, text):
                return self.items[i][0], "restates it (same numbers and informative words)"
        return None


# --------------------------------------------------------------------------- validation


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
            "dropped": [asdict(d) for d in self.dropped],
        }


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
    input in any wording (``leakage``); exact duplicates after :func:`normalise` and
    near-duplicates (padded word ``ngram`` Jaccard >= ``near_dup_threshold``) of an earlier
    kept row (``exact_duplicate``, ``near_duplicate``: the first is kept).
    """
    if not 0.0 < near_dup_threshold <= 1.0:
        raise ValueError(f"near_dup_threshold must be in (0, 1], got {near_dup_threshold}")
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram}")
    task = specialist.spec.task
    contract = task.output
    labels = output_labels(contract)
    scenarios = {s.id: s for s in suite.scenarios}
    threshold = suite.suite.spec.pass_threshold
    removed = dict.fromkeys(REMOVAL_REASONS, 0)
    dropped: list[DroppedRow] = []

    def drop(row_id: str, reason: str, detail: str) -> None:
        removed[reason] += 1
        dropped.append(DroppedRow(row_id, reason, detail))

    checked: list[TrainingRow] = []
    seen_ids: set[str] = set()
    for row in rows:
        problem = _schema_problem(row, task, labels, scenarios)
        if problem is None and row.id in seen_ids:
            problem = "duplicate id"
        if problem is not None:
            drop(str(getattr(row, "id", "?")), "invalid", problem)
            continue
        seen_ids.add(row.id)
        scenario = scenarios[row.scenario_id]
        if scenario.split != "core":
            drop(row.id, "leakage", f"derived from held-out scenario {scenario.id!r}")
            continue
        ctx = ScoringContext(expected=row.expected, labels=labels, judge=judge)
        scored = score_output(rubric_for(scenario, suite), row.completion, ctx, threshold,
                              contract)
        if scored.score < 1.0 - FLOAT_EPS or not scored.format_ok:
            why = next((f"{c.kind}: {c.reason}" for c in scored.criteria if c.score < 1.0),
                       "the answer breaks the output contract")
            drop(row.id, "reference_fails", why)
            continue
        checked.append(row)

    texts = [_text(row.input, ngram) for row in checked]
    heldout = [(sc.id, _text(text, ngram)) for sc in suite.heldout
               for text in (sc.input, *sc.variants)]
    ranks = _Ranks([t.grams for t in texts] + [t.grams for _, t in heldout])
    word_df: Counter[str] = Counter()
    for t in texts + [t for _, t in heldout]:
        word_df.update(t.words)
    leaks = _LeakageIndex(heldout, near_dup_threshold, _structural_words(suite), ranks,
                          word_df)

    kept: list[TrainingRow] = []
    kept_texts: list[_Text] = []
    exact: dict[str, str] = {}
    prefixes: dict[str, list[int]] = {}
    for row, text in zip(checked, texts, strict=True):
        leak = leaks.match(text)
        if leak is not None:
            drop(row.id, "leakage", f"held-out {leak[0]!r}: {leak[1]}")
            continue
        first = exact.get(text.key)
        if first is not None:
            drop(row.id, "exact_duplicate", f"same text as {first!r}")
            continue
        prefix = ranks.prefix(text.grams, near_dup_threshold)
        candidates = sorted({i for g in prefix for i in prefixes.get(g, ())})
        near = next((i for i in candidates
                     if jaccard(text.grams, kept_texts[i].grams)
                     >= near_dup_threshold - FLOAT_EPS), None)
        if near is not None:
            score = jaccard(text.grams, kept_texts[near].grams)
            drop(row.id, "near_duplicate", f"n-gram Jaccard {score:.2f} with {kept[near].id!r}")
            continue
        exact[text.key] = row.id
        for g in prefix:
            prefixes.setdefault(g, []).append(len(kept))
        kept.append(row)
        kept_texts.append(text)

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
    )


# --------------------------------------------------------------------------- files


def dataset_jsonl(rows: Iterable[TrainingRow]) -> bytes:
    """The canonical JSONL of ``rows``: one row per line, in order, keys sorted."""
    return "".join(
        json.dumps(row.to_dict(), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        + "\n"
        for row in rows
    ).encode("utf-8")


def dataset_hash(rows: Iterable[TrainingRow]) -> str:
    """sha256 of :func:`dataset_jsonl`: the hash of the file :func:`write_dataset` writes."""
    return hashlib.sha256(dataset_jsonl(rows)).hexdigest()


def write_dataset(rows: Iterable[TrainingRow], path: Path | str) -> Path:
    """Write ``rows`` as canonical JSONL, atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dataset_jsonl(rows)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_dataset(path: Path | str) -> list[TrainingRow]:
    """Rows back from a file :func:`write_dataset` wrote; :class:`DataError` names the line
    of a bad one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the dataset: {exc}") from exc
    rows = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            rows.append(TrainingRow.from_dict(data))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{number}: not a training row: "
                            f"{type(exc).__name__}: {exc}") from exc
    return rows
