"""Failures to validated training data on the demo suite: extraction from a real evaluation,
augmentation (variants, the suite's generator, a teacher, replay), validation (schema,
reference answers, the leakage guard, duplicates) and the dataset file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import sys
import time
from collections import Counter

import pytest

from modelsmith.evaluation.runner import runs_from_jsonl, runs_to_jsonl
from modelsmith.evaluation.service import evaluate
from modelsmith.events.types import DatasetBuilt, FailuresExtracted
from modelsmith.specs import Scenario, SuiteTraining, load_repository
from modelsmith.training.augment import augment
from modelsmith.training.dataset import (
    DataError,
    TrainingRow,
    dataset_hash,
    read_dataset,
    write_dataset,
)
from modelsmith.training.extraction import Failure, extract_failures, failed_scenario_ids
from modelsmith.training.generator import load_generator
from modelsmith.training.similarity import normalise, text_tokens
from modelsmith.training.validation import REMOVAL_REASONS, validate_rows
from test_eval_service import PolicyBackend

NAME = "rtb-quality"


@pytest.fixture
def repo(demo_repo):
    return load_repository(demo_repo)


@pytest.fixture
def spec(repo):
    return repo.specialists[NAME]


@pytest.fixture
def suite(repo, spec):
    return repo.suite_for(spec)


def with_training(suite, **training):
    """The suite with another ``training:`` block (where rows may come from)."""
    spec = suite.suite.spec
    return dataclasses.replace(suite, suite=suite.suite.model_copy(update={
        "spec": spec.model_copy(update={"training": SuiteTraining(**training)})}))


def opted_in(suite):
    """The suite as one that trains on its own core inputs (training.use_eval_inputs)."""
    return with_training(suite, use_eval_inputs=True)


@pytest.fixture
def opted(suite):
    return opted_in(suite)


@pytest.fixture
def runs(repo):
    backend = PolicyBackend(error_rate=0.3)
    return evaluate(repo, NAME, backend, model_ref="noisy", store=None).runs


def teacher(text: str, n: int) -> list[str]:
    """A stand-in teacher model: rephrasings that keep every value of the bid."""
    return [f"Please screen this bid request: {text}", f"{text} (from the exchange)"][:n]


def row(spec, row_id: str, text: str, expected: str, scenario_id: str,
        source: str = "teacher") -> TrainingRow:
    return TrainingRow(row_id, spec.spec.task.render(text), text, expected, source, scenario_id)


def move_field(text: str, index: int) -> str:
    """The bid request with one ``key=value`` field moved to the end."""
    fields = text.split(" ")
    fields.append(fields.pop(index))
    return " ".join(fields)


# --------------------------------------------------------------------------- failures


def test_failures_are_the_failed_core_runs_of_an_evaluation(runs):
    failures = extract_failures(runs)
    wrong = {(r.id, r.variant) for r in runs if r.split == "core" and not r.passed}
    assert {(f.id, f.variant) for f in failures} == wrong and len(failures) == len(wrong)
    assert any(r.split == "heldout" and not r.passed for r in runs)
    assert not {f.id for f in failures} & {r.id for r in runs if r.split == "heldout"}
    assert any(f.variant is not None for f in failures)
    first = failures[0]
    assert first.outputs and first.score == 0.0 and first.reasons[0].startswith("label: ")
    assert "expected" in first.reasons[0]
    ids = failed_scenario_ids(failures)
    assert len(ids) == len(set(ids)) == len({f.id for f in failures})
    assert FailuresExtracted(eval_event="e1", scenario_ids=ids).summary().startswith(str(len(ids)))
    # The same failures come back from the evaluation's recorded evidence.
    assert extract_failures(runs_from_jsonl(runs_to_jsonl(runs))) == failures


# --------------------------------------------------------------------------- augmentation


def test_augmentation_counts_rows_per_source(runs, opted, spec):
    suite = opted
    failures = extract_failures(runs)
    failed = failed_scenario_ids(failures)
    scenarios = {s.id: s for s in suite.scenarios}
    rows = augment(failures, suite, spec, passing=runs, generator=load_generator(suite),
                   per_failure=4, teacher=teacher, replay_share=0.3, seed=7)
    counts = Counter(r.source for r in rows)
    assert counts["failure"] == len(failed)
    assert counts["variant"] == sum(len(scenarios[sid].variants) for sid in failed)
    assert counts["generator"] == 4 * len(failed)
    assert counts["teacher"] == 2 * len(failed)
    assert [r.id for r in rows if r.source == "failure"] == failed
    assert len({r.id for r in rows}) == len(rows)
    assert all(r.prompt == spec.spec.task.render(r.input) for r in rows)
    assert all(scenarios[r.scenario_id].split == "core" for r in rows)
    heldout = {normalise(s.input) for s in suite.heldout}
    assert not any(normalise(r.input) in heldout for r in rows)
    for r in rows:
        if r.source in ("failure", "variant", "teacher", "replay"):
            assert r.expected == scenarios[r.scenario_id].expected
    generated = [r for r in rows if r.source == "generator"]
    assert generated[0].id.endswith("-near1") and generated[0].scenario_id in failed
    # near() changes one field and labels by the policy: some rows flip the label.
    assert any(r.expected != scenarios[r.scenario_id].expected for r in generated)
    first = rows[0]
    assert first.completion == " " + first.expected and first.prompt.endswith("Verdict:")
    assert first.to_dict()["completion"] == first.completion


def test_replay_makes_up_the_requested_share_of_passing_scenarios(runs, opted, spec):
    suite = opted
    failures = extract_failures(runs)
    failed = set(failed_scenario_ids(failures))
    rows = augment(failures, suite, spec, passing=runs, replay_share=0.3, seed=3)
    replay = [r for r in rows if r.source == "replay"]
    assert abs(len(replay) / len(rows) - 0.3) < 0.02
    passed = {r.id for r in runs if r.split == "core" and r.variant is None and r.passed}
    assert {r.scenario_id for r in replay} <= passed - failed
    assert all(r.id == f"{r.scenario_id}-pass" for r in replay)
    assert not [r for r in augment(failures, suite, spec, passing=runs, replay_share=0.0)
                if r.source == "replay"]
    assert not [r for r in augment(failures, suite, spec, replay_share=0.5)
                if r.source == "replay"]  # nothing passing given: nothing to replay
    # Few passing scenarios: all of them, no more.
    few = [r for r in runs if r.id in sorted(passed - failed)[:5] and r.variant is None]
    small = augment(failures, suite, spec, passing=few, replay_share=0.5)
    assert sum(r.source == "replay" for r in small) == 5
    with pytest.raises(ValueError, match="replay_share"):
        augment(failures, suite, spec, replay_share=1.0)


def test_augmentation_refuses_held_out_and_unknown_scenarios(runs, suite, spec):
    failure = extract_failures(runs)[0]
    heldout = dataclasses.replace(failure, id=suite.heldout[0].id)
    with pytest.raises(DataError, match="held-out"):
        augment([heldout], suite, spec)
    with pytest.raises(DataError, match="not in suite"):
        augment([dataclasses.replace(failure, id="gone-1")], suite, spec)


def test_the_demo_suites_generator_loads_and_makes_labelled_neighbours(suite):
    near = load_generator(suite)
    assert callable(near) and near.__name__ == "near"
    assert sys.modules[near.__module__].Bid.__module__ == near.__module__  # dataclasses work
    source = suite.core[0].model_dump(mode="json", exclude_none=True)
    made = near(source, 4, 0)
    assert len(made) == 4 and all(m["expected"] in ("ACCEPT", "REJECT") for m in made)
    assert near(source, 4, 0) == made and near(source, 4, 1) != made
    no_generator = dataclasses.replace(suite, suite=suite.suite.model_copy(update={
        "spec": suite.suite.spec.model_copy(update={"generator": None})}))
    assert load_generator(no_generator) is None


@pytest.mark.parametrize("source, match", [
    ("def near(row, n, seed:\n    return []\n", "failed to load: SyntaxError"),
    ("raise RuntimeError('no policy file')\n", "RuntimeError: no policy file"),
    ("def other(row, n, seed):\n    return []\n", "defines no function 'near'"),
])
def test_a_broken_generator_file_is_a_data_error_naming_it(demo_repo, source, match):
    (demo_repo / "evals" / NAME / "generate.py").write_text(source)
    suite = load_repository(demo_repo).suites[NAME]
    with pytest.raises(DataError, match=match) as caught:
        load_generator(suite)
    assert "evals/rtb-quality/generate.py" in str(caught.value)


def test_a_generator_or_teacher_that_fails_is_a_data_error(runs, suite, spec):
    failures = extract_failures(runs)[:1]

    def crashing(row, n, seed):
        raise KeyError("ctr")

    with pytest.raises(DataError, match=r"crashing.*scenario .*KeyError"):
        augment(failures, suite, spec, generator=crashing)
    with pytest.raises(DataError, match="needs a non-empty 'input'"):
        augment(failures, suite, spec, generator=lambda row, n, seed: [{"id": "x"}])
    with pytest.raises(DataError, match="must return a list"):
        augment(failures, suite, spec, generator=lambda row, n, seed: "ACCEPT")

    def offline(text, n):
        raise ConnectionError("teacher endpoint unreachable")

    with pytest.raises(DataError, match=r"teacher failed .*unreachable"):
        augment(failures, suite, spec, teacher=offline)


# --------------------------------------------------------------------------- validation


def test_leakage_guard_drops_every_held_out_near_duplicate_and_counts_them(suite, spec):
    """The issue's acceptance test: a dataset seeded with held-out near-duplicates loses
    them all, the count is reported, and ordinary rows survive."""
    core = suite.core[:60]
    ordinary = [row(spec, s.id, s.input, s.expected, s.id, "failure") for s in core]
    # JSON variants are left out: they normalise to their own input (exact duplicates).
    ordinary += [row(spec, f"{s.id}-v{i}", v, s.expected, s.id, "variant")
                 for s in core for i, v in enumerate(s.variants, 1) if not v.startswith("{")]
    anchor = core[0].id  # leaked rows pretend to be a teacher's rephrasing of a core row
    seeded = []
    for h in suite.heldout[:20]:
        copies = {
            "copy": h.input,
            "case": h.input.upper(),
            "spaces": "  " + h.input.replace(" ", " \t ") + "\n",
            "reordered": move_field(h.input, 1),  # ctr=... moved to the end
            "trailing-word": h.input + " please",
        }
        seeded += [row(spec, f"leak-{h.id}-{kind}", text, h.expected, anchor)
                   for kind, text in copies.items()]
    seeded.append(row(spec, "from-heldout", suite.heldout[0].input + " x",
                      suite.heldout[0].expected, suite.heldout[0].id))
    rng = random.Random(0)
    mixed = ordinary + seeded
    rng.shuffle(mixed)

    report = validate_rows(mixed, suite, spec)

    assert report.removed["leakage"] == len(seeded) == 101
    assert not [r for r in report.kept if r.id.startswith(("leak-", "from-heldout"))]
    assert sorted(r.id for r in report.kept) == sorted(r.id for r in ordinary)
    leaked = {d.id: d.detail for d in report.dropped if d.reason == "leakage"}
    assert suite.heldout[3].id in leaked[f"leak-{suite.heldout[3].id}-reordered"]
    assert "held-out scenario" in leaked["from-heldout"]
    assert report.to_dict()["removed"]["leakage"] == 101


def test_another_bid_near_a_held_out_one_is_not_leakage(suite, spec):
    """One value changed is another request (the demo's generator makes such rows), while a
    rewording that keeps every value (prose, JSON, fields in another order) leaks."""
    policy = sys.modules[load_generator(suite).__module__]  # the suite's generate.py
    anchor = suite.core[0].id
    changed, reworded = [], []
    for h in suite.heldout:
        bid = policy.parse(h.input)
        other = dataclasses.replace(bid, geo="JP" if bid.geo != "JP" else "US")
        pricier = dataclasses.replace(bid, floor=round(bid.floor + 0.01, 2))
        for k, b in enumerate((other, pricier)):
            changed.append(row(spec, f"{h.id}-c{k}", policy.render(b),
                               policy.policy_label(b), anchor))
        reworded += [row(spec, f"{h.id}-r{style}", policy.render(bid, style), h.expected,
                         anchor) for style in (1, 2, 3)]
    report = validate_rows(changed + reworded, suite, spec)
    assert report.removed["leakage"] == len(reworded)
    assert {r.id for r in report.kept} == {r.id for r in changed}


def test_the_demo_suite_loses_no_genuine_rows_and_validates_fast(opted, spec):
    """Every core input, variant and generated neighbour against the 100 held-out inputs:
    no leakage, no near-duplicate among different bids; only exact duplicates go (JSON
    variants normalise to their canonical input; near() sometimes repeats a row)."""
    suite = opted
    # As if a model had failed every core scenario.
    failed_all = [Failure(s.id, None, s.input, s.expected, [" ?"], 0.0, []) for s in suite.core]
    rows = augment(failed_all, suite, spec, generator=load_generator(suite), per_failure=5,
                   replay_share=0.0)
    assert len(rows) > 2000
    start = time.perf_counter()
    report = validate_rows(rows, suite, spec)
    assert time.perf_counter() - start < 60  # a hang guard, not a speed check
    assert report.removed["leakage"] == 0 and report.removed["near_duplicate"] == 0
    assert report.removed["invalid"] == report.removed["reference_fails"] == 0
    assert report.sources["failure"] == len(suite.core)
    json_variants = sum(v.startswith("{") for s in suite.core for v in s.variants)
    assert report.removed["exact_duplicate"] >= json_variants
    assert sum(report.balance.values()) == len(report.kept)
    assert set(report.balance) == {"ACCEPT", "REJECT"} and min(report.balance.values()) > 0


def test_exact_and_near_duplicates_keep_the_first(suite, spec):
    s = suite.core[0]
    long = (f"{s.input} was sent by the exchange at noon and flagged by the monitoring job "
            "for a manual review by the trust and safety team")
    rows = [
        row(spec, "a", s.input, s.expected, s.id, "failure"),
        row(spec, "a-case", s.input.upper() + " !", s.expected, s.id),
        row(spec, "b", long, s.expected, s.id),
        row(spec, "b-near", long.replace("noon", "midnight"), s.expected, s.id),
        row(spec, "c", suite.core[1].input, suite.core[1].expected, suite.core[1].id),
    ]
    report = validate_rows(rows, suite, spec)
    assert [r.id for r in report.kept] == ["a", "b", "c"]
    assert report.removed["exact_duplicate"] == 1 and report.removed["near_duplicate"] == 1
    details = {d.id: d.detail for d in report.dropped}
    assert "'a'" in details["a-case"] and "'b'" in details["b-near"]
    # A stricter threshold keeps the near-duplicate.
    assert len(validate_rows(rows, suite, spec, near_dup_threshold=0.95).kept) == 4


def test_invalid_rows_and_failing_reference_answers_are_counted(suite, spec):
    s = suite.core[0]
    strict = Scenario.model_validate({
        "id": "strict-1", "input": "domain=news.example ctr=9.9% floor=$1.00 format=video "
        "device=ctv geo=US", "expected": "ACCEPT",
        "rubric": [{"kind": "exact", "value": "ACCEPT, definitely"}]})
    suite.scenarios.append(strict)
    good = row(spec, "good", s.input, s.expected, s.id, "failure")
    rows = [
        good,
        row(spec, "not-a-label", s.input + " x", "MAYBE", s.id),
        row(spec, "empty-input", " ", s.expected, s.id),
        dataclasses.replace(good, id="bad-prompt", prompt="Bid: " + s.input),
        row(spec, "unknown", s.input + " y", s.expected, "nope"),
        row(spec, "bad-source", s.input + " z", s.expected, s.id, source="web"),
        row(spec, "good", s.input + " again", s.expected, s.id),  # the same id twice
        row(spec, "strict", strict.input, "ACCEPT", strict.id),
        row(spec, "strict-json", strict.input + " now", {"a": 1}, strict.id),
    ]
    report = validate_rows(rows, suite, spec)
    assert [r.id for r in report.kept] == ["good"]
    assert report.removed["invalid"] == 7 and report.removed["reference_fails"] == 1
    reasons = {d.id: d.detail for d in report.dropped}
    assert "not a label" in reasons["not-a-label"] and "duplicate id" in reasons["good"]
    assert reasons["strict"].startswith("exact: ")
    assert set(report.removed) == set(REMOVAL_REASONS)


def test_the_same_seed_gives_the_same_dataset(runs, suite, spec):
    failures = extract_failures(runs)

    def build(seed: int) -> list[TrainingRow]:
        rows = augment(failures, suite, spec, passing=runs, generator=load_generator(suite),
                       teacher=teacher, seed=seed)
        return validate_rows(rows, suite, spec).kept

    first, again, other = build(5), build(5), build(6)
    assert first == again and dataset_hash(first) == dataset_hash(again)
    assert dataset_hash(first) != dataset_hash(other)


# --------------------------------------------------------------------------- files


def test_a_dataset_file_round_trips_and_its_hash_is_the_files(tmp_path, runs, opted, spec):
    suite = opted
    rows = augment(extract_failures(runs), suite, spec, passing=runs)
    report = validate_rows(rows, suite, spec)
    path = write_dataset(report.kept, tmp_path / "data" / "train.jsonl")
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == dataset_hash(report.kept)
    assert read_dataset(path) == report.kept
    line = data.decode().splitlines()[0]
    assert list(json.loads(line)) == sorted(json.loads(line))
    assert json.loads(line)["completion"] in (" ACCEPT", " REJECT")
    event = DatasetBuilt(dataset_hash=dataset_hash(report.kept), path=str(path),
                         **{k: v for k, v in report.to_dict().items()
                            if k in ("rows", "sources", "removed", "balance")})
    assert event.rows == len(report.kept) == report.total - len(report.dropped)
    path.write_text(line + "\n{not json}\n")
    with pytest.raises(DataError, match=r"train\.jsonl:2: not a training row"):
        read_dataset(path)


def test_text_normalisation_keeps_numbers_whole():
    assert text_tokens("CTR 1.0%  floor=$03.40, news.example") == [
        "ctr", "1", "floor", "3.4", "news", "example"]
    assert normalise('{"Domain": "A.example"}') == normalise("domain=a.example")
    prompt_with_newline = TrainingRow("x", "Verdict:\n", "i", "ACCEPT", "failure", "s")
    assert prompt_with_newline.completion == "ACCEPT"
    assert TrainingRow("y", "Q:", "i", {"k": 1}, "failure", "s").completion == ' {"k": 1}'
