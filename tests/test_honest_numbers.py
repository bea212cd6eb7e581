"""Honest numbers (DESIGN.md §5): what a candidate trained on is accounted by lineage, every
evaluation reports what it never saw (unseen, dev) beside the composite, the loop decides on
that, and training rows come from outside the evaluation (generator, pool), new every
iteration."""

from __future__ import annotations

import dataclasses
import json
import random
import re

import pytest

from modelsmith.evaluation.composite import compute_report, decision_of
from modelsmith.evaluation.service import evaluate
from modelsmith.events.gitstore import GitEventStore
from modelsmith.inference.base import Generation
from modelsmith.iterate.loop import LoopOptions, _decide, overfitting_trend
from modelsmith.iterate.report import score_table
from modelsmith.iterate.state import IterationRecord
from modelsmith.specs import Scenario, SpecError, load_repository
from modelsmith.training.augment import augment, row_seed
from modelsmith.training.dataset import DataError, TrainingRow
from modelsmith.training.extraction import Failure
from modelsmith.training.generator import load_generator
from modelsmith.training.reward import make_reward_fn, rubric_key
from modelsmith.training.validation import validate_rows
from test_eval_service import BLOCKED, PolicyBackend
from test_training_data import with_training

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




def failed_all(scenarios) -> list[Failure]:
    return [Failure(s.id, None, s.input, s.expected, [" ?"], 0.0, []) for s in scenarios]


class Memoriser(PolicyBackend):
    """Right on the inputs it 'trained on', a coin toss elsewhere: what memorising looks
    like from outside."""

    def __init__(self, known: set[str]) -> None:
        super().__init__()
        self.known = known

    def generate(self, requests, progress=None):
        out = []
        for req in requests:
            bid = req.prompt.rsplit("Bid: ", 1)[1].rsplit("\nVerdict:", 1)[0]
            domain = re.search(r"([a-z-]+\.example)", bid).group(1)
            ctr = float(re.search(r"(\d+(?:\.\d+)?)%", bid).group(1))
            label = "REJECT" if domain in BLOCKED or ctr < 0.5 else "ACCEPT"
            if bid not in self.known and random.Random(bid).random() < 0.5:
                label = "ACCEPT" if label == "REJECT" else "REJECT"
            out.append(Generation(" " + label, 2, 1.0))
        return out


# --------------------------------------------------------------------------- the report


def test_the_report_gives_the_unseen_and_dev_composites_beside_the_composite(repo, spec,
                                                                           suite):
    runs = evaluate(repo, NAME, PolicyBackend(error_rate=0.2), model_ref="p",
                    store=None).runs
    assert {r.split for r in runs} == {"core", "dev", "heldout"}  # never the pool
    nothing = compute_report(runs, suite.suite)
    assert nothing.unseen == pytest.approx(nothing.composite)
    assert nothing.n_unseen == nothing.n_core == 320 and nothing.n_dev == 100
    assert nothing.dev is not None and nothing.dev_ci[0] <= nothing.dev <= nothing.dev_ci[1]
    # Seen: the scenarios that passed (as if the training rows had been them).
    passed = {r.id for r in runs if r.split == "core" and r.variant is None and r.passed}
    report = compute_report(runs, suite.suite, seen=passed)
    assert report.n_unseen == 320 - len(passed)
    assert report.unseen < report.composite  # what is left is what it gets wrong
    assert report.composite == nothing.composite and report.dev == nothing.dev
    assert decision_of(report, 30) == ("dev", report.dev, 100)
    markdown = report.to_markdown()
    assert f"unseen composite (n={report.n_unseen}" in markdown and "dev composite" in markdown
    # Without a dev split: the unseen composite, when enough of it is left.
    no_dev = dataclasses.replace(report, n_dev=0, dev=None, dev_ci=None)
    assert decision_of(no_dev, 30) == ("unseen", report.unseen, report.n_unseen)
    assert decision_of(no_dev, 10_000) == (None, None, report.n_unseen)
    # Nothing trained on: the unseen composite is the whole core split, however small.
    small = dataclasses.replace(nothing, n_dev=0, dev=None, dev_ci=None)
    assert decision_of(small, 10_000)[0] == "unseen"


def test_an_evaluation_of_a_memorising_candidate_records_it_as_overfitting(repo, demo_repo,
                                                                         suite):
    store = GitEventStore(demo_repo)
    known = {t for s in suite.core for t in (s.input, *s.variants)}
    outcome = evaluate(repo, NAME, Memoriser(known), model_ref="v1", version="v1",
                       store=store, seen={s.id for s in suite.core[:200]})
    data = outcome.event.data
    assert data["decision_metric"] == "dev" and data["dev_n"] == 100
    assert data["seen"] == 200 and data["unseen_n"] == 120
    assert data["composite"] > 0.9 and data["decision"] < 0.8
    flagged = [e for e in store.read(NAME) if e.type == "OverfittingDetected"]
    assert len(flagged) == 1
    event = flagged[0].data
    assert event["version"] == "v1" and event["eval_event"] == outcome.event.id
    assert event["margin"] == 0.05 and "trails the composite" in event["reason"]
    # An honest candidate is not flagged.
    evaluate(repo, NAME, PolicyBackend(error_rate=0.1), model_ref="v2", version="v2",
             store=store, seen=set())
    assert len([e for e in store.read(NAME) if e.type == "OverfittingDetected"]) == 1


# --------------------------------------------------------------------------- rows


def test_by_default_no_core_input_or_variant_becomes_a_training_row(suite, spec):
    failures = failed_all(suite.core[:40])
    rows = augment(failures, suite, spec, passing=[], generator=load_generator(suite),
                   seed=0, iteration=1)
    assert rows and {r.source for r in rows} == {"generator"}
    texts = {t for s in suite.core for t in (s.input, *s.variants)}
    assert not [r for r in rows if r.input in texts]
    report = validate_rows(rows, suite, spec)
    assert report.scenarios == [] and report.removed["leakage"] == 0
    # A suite that opts in trains on them, and says which scenarios it saw.
    opted = with_training(suite, use_eval_inputs=True)
    rows = augment(failures, opted, spec, passing=[], generator=load_generator(opted))
    assert {"failure", "generator"} <= {r.source for r in rows}
    assert validate_rows(rows, opted, spec).scenarios == sorted(s.id for s in suite.core[:40])


def test_every_iteration_asks_the_generator_for_new_rows(suite, spec):
    failures = failed_all(suite.core[:30])
    near = load_generator(suite)
    one = augment(failures, suite, spec, generator=near, seed=0, iteration=1)
    again = augment(failures, suite, spec, generator=near, seed=0, iteration=1)
    two = augment(failures, suite, spec, generator=near, seed=0, iteration=2)
    assert [r.input for r in one] == [r.input for r in again]  # deterministic
    fresh = {r.input for r in two} - {r.input for r in one}
    assert len(fresh) > 0.7 * len(two)
    assert row_seed(0, 1, "a") != row_seed(0, 2, "a") != row_seed(0, 1, "b")


def test_a_generator_row_is_scored_with_its_own_rubric_or_the_suites(suite, spec):
    """A strict per-scenario rubric on the failed scenario never judges a new record."""
    parent = Scenario.model_validate({
        "id": "strict-1", "input": "domain=news.example ctr=9.9% floor=$1.00 format=video "
        "device=ctv geo=US", "expected": "ACCEPT",
        "rubric": [{"kind": "exact", "value": "ACCEPT, definitely"}]})
    suite.scenarios.append(parent)

    def records(row, n, seed):
        return [{"input": "domain=games.example ctr=3.3% floor=$2.00 format=banner "
                          "device=tablet geo=JP", "expected": "ACCEPT"},
                {"input": "domain=games.example ctr=0.1% floor=$2.00 format=banner "
                          "device=tablet geo=JP", "expected": "REJECT",
                 "rubric": [{"kind": "regex", "pattern": "^ REJECT$"}]},
                {"input": "domain=games.example ctr=0.2% floor=$2.00 format=banner "
                          "device=tablet geo=JP", "expected": "REJECT",
                 "rubric": [{"kind": "exact", "value": "no"}]}][:n]

    rows = augment(failed_all([parent]), suite, spec, generator=records, per_failure=3)
    assert [r.rubric_from for r in rows] == ["suite", "own", "own"]
    report = validate_rows(rows, suite, spec)
    assert [r.id for r in report.kept] == [rows[0].id, rows[1].id]
    assert report.dropped[0].reason == "reference_fails"
    assert report.dropped[0].detail.startswith("exact:")
    # The reward scores with the same rubric (the dataset column carries it).
    reward = make_reward_fn(spec, suite)
    dicts = [r.to_dict() for r in rows]
    keys = [rubric_key(d) for d in dicts]
    assert keys[0] == "suite" and json.loads(keys[1])[0]["kind"] == "regex"
    scores = reward(completions=[" ACCEPT", " REJECT", " REJECT"],
                    expected=[d["expected"] for d in dicts],
                    scenario_id=[d["scenario_id"] for d in dicts], rubric_key=keys)
    assert scores == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("made, match", [
    ([{"input": "x y", "expected": {1, 2}}], "'expected' is not JSON"),
    ([{"input": "x y", "expected": float("nan")}], "'expected' is not JSON"),
    ([{"input": "x y", "expected": "ACCEPT", "rubric": "label"}], "'rubric' must be"),
    ([{"input": "x y", "expected": "ACCEPT", "rubric": [{"kind": "label", "f": object()}]}],
     "'rubric' is not JSON"),
])
def test_a_generator_returning_what_cannot_be_written_is_a_data_error(suite, spec, made,
                                                                    match):
    with pytest.raises(DataError, match=match):
        augment(failed_all(suite.core[:1]), suite, spec, generator=lambda r, n, s: made)


def test_a_generator_row_with_a_broken_rubric_is_counted_invalid(suite, spec):
    made = [{"input": "domain=games.example ctr=3.3% floor=$2.00 format=banner device=tablet "
                      "geo=JP", "expected": "ACCEPT", "rubric": [{"kind": "json_field"}]}]
    rows = augment(failed_all(suite.core[:1]), suite, spec, generator=lambda r, n, s: made)
    report = validate_rows(rows, suite, spec)
    assert not report.kept and report.removed["invalid"] == 1
    assert "own rubric is invalid" in report.dropped[0].detail


def test_rows_restating_a_core_dev_or_held_out_input_are_removed_and_counted(suite, spec):
    core, dev, held = suite.core[0], suite.dev[0], suite.heldout[0]
    rows = [TrainingRow(f"r{i}", spec.spec.task.render(text), text, expected, "generator",
                        core.id)
            for i, (text, expected) in enumerate([
                (core.input.upper(), core.expected), (dev.input, dev.expected),
                (held.input + " please", held.expected),
                ("domain=games.example ctr=3.3% floor=$2.00 format=banner device=tablet "
                 "geo=JP", "ACCEPT")])]
    report = validate_rows(rows, suite, spec)
    assert [r.id for r in report.kept] == ["r3"] and report.removed["leakage"] == 3
    details = [d.detail for d in report.dropped]
    assert details[0].startswith(f"core '{core.id}'") and details[1].startswith("dev ")
    assert details[2].startswith("heldout ")
    # Opted in, the core one is kept -- and accounted as restated.
    opted = with_training(suite, use_eval_inputs=True)
    report = validate_rows(rows, opted, spec)
    assert report.removed["leakage"] == 2 and report.restated == [] \
        and report.scenarios == []  # r0 restates its own scenario (its parent)
    rows[0] = dataclasses.replace(rows[0], scenario_id=suite.core[5].id)
    report = validate_rows(rows, opted, spec)
    assert report.restated == [core.id] and report.scenarios == [core.id]


# --------------------------------------------------------------------------- the pool


def _pool_suite(demo_repo, rows: list[dict]):
    path = demo_repo / "evals" / NAME / "scenarios.jsonl"
    with open(path, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return load_repository(demo_repo)


def test_pool_rows_nearest_the_failures_are_picked_once(demo_repo):
    gen = load_generator(load_repository(demo_repo).suites[NAME])
    policy = __import__(gen.__module__)  # the suite's generate.py
    rng = random.Random(5)
    pool = []
    for i in range(200):
        bid = policy.random_bid(rng)
        pool.append({"id": f"pool-{i:03d}", "input": policy.render(bid),
                     "expected": policy.policy_label(bid), "split": "train"})
    repo = _pool_suite(demo_repo, pool)
    spec = repo.specialists[NAME]
    suite = repo.suite_for(spec)
    assert len(suite.train) == 200 and not [s for s in suite.evaluated if s.split == "train"]
    target = suite.core[0]
    rows = augment(failed_all([target]), suite, spec, per_failure=4)
    assert [r.source for r in rows] == ["pool"] * 4
    values = set(target.input.split())
    shared = [len(values & set(r.input.split())) for r in rows]
    others = [len(values & set(p["input"].split())) for p in pool]
    assert min(shared) >= 1 and sum(shared) / 4 > 2 * sum(others) / len(others), shared
    again = augment(failed_all([target]), suite, spec, per_failure=4,
                    pool_taken=frozenset(r.id for r in rows))
    assert not {r.id for r in again} & {r.id for r in rows}
    assert all(r.scenario_id.startswith("pool-") for r in rows)  # scored by its own rubric


def test_a_pool_row_identical_to_a_held_out_input_is_a_spec_error(demo_repo):
    suite = load_repository(demo_repo).suites[NAME]
    held = suite.heldout[3]
    with pytest.raises(SpecError) as caught:
        _pool_suite(demo_repo, [{"id": "pool-x", "input": held.input.upper(),
                                 "expected": held.expected, "split": "train"}])
    assert f"heldout scenario '{held.id}' leaks" in str(caught.value)
    assert "train scenario 'pool-x'" in str(caught.value)


# --------------------------------------------------------------------------- deciding


def record(i: int, composite: float, decision: float | None, metric: str | None = "dev",
           new_rows: int | None = 10, overfitting: str | None = None,
           n: int = 100) -> IterationRecord:
    return IterationRecord(iteration=i, candidate=f"v{i}", composite=composite,
                           decision=decision, decision_metric=metric, decision_n=n,
                           new_rows=new_rows, overfitting=overfitting, dataset_rows=100)


def test_the_loop_decides_on_the_metric_it_never_trained_on():
    options = LoopOptions(max_iterations=9)
    high_core = [record(1, 0.95, 0.7), record(2, 0.97, 0.72)]
    assert _decide(high_core, 0.9, 2, options) is None  # composite alone proves nothing
    held = [record(1, 0.95, 0.91), record(2, 0.96, 0.92)]
    verdict = _decide(held, 0.9, 2, options)
    assert verdict[0] == "target" and verdict[1].startswith("dev composite >= 0.9 for 2")
    # No new rows: neither counts nor breaks the run; overfitting breaks it.
    assert _decide([*held[:1], record(2, 0.96, 0.95, new_rows=0)], 0.9, 2, options) is None
    assert _decide([*held, record(3, 0.97, 0.95, new_rows=0)], 0.9, 2, options)[0] == "target"
    assert _decide([*held[:1], record(2, 0.99, 0.93, overfitting="x")], 0.9, 2,
                   options) is None
    undecidable = _decide([record(1, 0.99, None, metric=None, n=4)], 0.9, 1, options, 30)
    assert undecidable[0] == "undecidable" and "split: dev" in undecidable[1]
    assert "only 4 core scenarios" in undecidable[1]


def test_the_overfitting_watch_stops_on_the_metric_falling_while_core_rises():
    assert overfitting_trend([record(1, 0.7, 0.7), record(2, 0.8, 0.8)]) is None
    why = overfitting_trend([record(1, 0.7, 0.7), record(2, 0.8, 0.65)])
    assert why and "composite rose +0.100" in why and "fell -0.050" in why
    slow = [record(1, 0.6, 0.7), record(2, 0.63, 0.67), record(3, 0.66, 0.64)]
    assert "over v1, v2, v3" in overfitting_trend(slow)
    assert overfitting_trend([record(1, 0.6, 0.7), record(2, 0.63, 0.69)]) is None


def test_the_score_table_shows_the_decision_metric_and_new_rows():
    table = score_table([record(1, 0.95, 0.91), record(2, 0.96, 0.80, new_rows=0),
                         record(3, 0.99, 0.7, overfitting="trails")], 0.9)
    lines = table.splitlines()
    assert "decision (split, n)" in lines[0] and "rows (new)" in lines[0]
    assert "| 0.910 ✓ (dev, 100) | 0.950 |" in lines[2] and "| 100 (10) |" in lines[2]
    assert "100 (none)" in lines[3] and "overfitting" in lines[4]


def test_a_forged_decision_metric_is_not_borne_out_by_its_evidence(repo, demo_repo):
    """The composite gate counts the decision metric, so the evidence check recomputes it
    (from the results and the lineage's seen scenarios) like the composite."""
    from modelsmith.events.types import EvalCompleted, Event
    from modelsmith.gitops.plan import logged_evidence

    store = GitEventStore(demo_repo)
    honest = evaluate(repo, NAME, PolicyBackend(error_rate=0.2), model_ref="v1",
                      version="v1", store=store, seen=set()).event
    check = logged_evidence(store, repo)
    assert check(NAME, honest.id) is None
    blobs = store.evidence(honest.id)
    for forged in ({"decision": 0.99}, {"decision_metric": "unseen"},
                   {"decision": None, "decision_metric": None},
                   # Dressed as an evaluation from before decision metrics existed:
                   {"decision": None, "decision_metric": None, "unseen_n": 0, "dev_n": 0,
                    "seen": 0}):
        event = Event.new(EvalCompleted(**{**honest.data, **forged}), actor="forger",
                          evidence=blobs)
        store.append(NAME, [event], store.last_seq(NAME))
        why = check(NAME, event.id)
        assert why and why.startswith("its results recompute to decision metric dev"), why
