"""The iterate loop on the tiny model, honest end to end: a suite with a labelled pool and
no generator reaches its target from pool rows alone and no core, dev or held-out input
enters any dataset (read back from the log's DatasetBuilt evidence); a suite nothing can
learn (random core labels) is caught overfitting and never proposed."""

from __future__ import annotations

import pytest

from modelsmith.app import Modelsmith
from modelsmith.events.gitstore import GitEventStore
from modelsmith.iterate.loop import IterateLoop, LoopOptions
from modelsmith.specs import load_repository
from modelsmith.training.dataset import read_dataset
from modelsmith.training.similarity import normalise
from suites import rewrite_suite

NAME = "rtb-quality"
OPTIONS = {"model": "tiny-test", "profile": "cpu-tiny-demo", "eval_threads": 2}


@pytest.fixture
def fork(train_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", str(tmp_path / "remote"))
    return train_repo


def typed(repo, kind):
    return [e for e in GitEventStore(repo).read(NAME) if e.type == kind]


def test_a_pool_suite_reaches_its_target_from_pool_rows_alone(fork):
    rewrite_suite(fork, pool=1500, rows_per_failure=12, target=0.8, sustained=2)
    result = IterateLoop(Modelsmith.open(fork).loop_parts(), NAME,
                         LoopOptions(**OPTIONS, max_iterations=4)).run()
    assert result.reason == "target", result.message
    assert "dev composite >= 0.8 for 2 consecutive iterations" in result.message
    assert all(r.decision_metric == "dev" and r.new_rows for r in result.iterations)

    suite = load_repository(fork).suites[NAME]
    evaluated = {normalise(t) for s in suite.evaluated for t in (s.input, *s.variants)}
    pool = {s.id for s in suite.train}
    built = typed(fork, "DatasetBuilt")
    assert len(built) == len(result.iterations) >= 2
    for event in built:
        data = event.data
        assert data["sources"] == {"pool": data["rows"]} and data["scenarios"] == []
        rows = read_dataset(fork / data["path"])
        assert len(rows) == data["rows"] and {r.id for r in rows} <= pool
        assert not [r for r in rows if normalise(r.input) in evaluated]
    assert built[0].data["new_rows"] == built[0].data["rows"]
    assert all(e.data["new_rows"] > 0 for e in built)  # every iteration adds rows
    registered = typed(fork, "CandidateRegistered")
    assert all(e.data["lineage"]["seen"] == [] for e in registered)
    final = typed(fork, "EvalCompleted")[-1].data
    assert final["seen"] == 0 and final["unseen_n"] == 60 and final["decision_metric"] == "dev"
    assert final["heldout"] >= 0.8 and not typed(fork, "OverfittingDetected")
    assert [e.data["version"] for e in typed(fork, "PromotionProposed")] == [result.candidate]
    # Its lineage names the chain back to the pretrained model, not only the parent.
    lineage = Modelsmith.open(fork).lineage(NAME, result.candidate)
    assert lineage["chain"][0] == result.candidate and lineage["base"] == "tiny-test"
    assert lineage["chain"] == [r.candidate for r in reversed(result.iterations)] + ["tiny-test"]


def test_a_suite_nothing_can_learn_is_caught_overfitting_and_never_proposed(fork):
    rewrite_suite(fork, random_labels=True, use_eval_inputs=True, target=0.8)
    result = IterateLoop(Modelsmith.open(fork).loop_parts(), NAME,
                         LoopOptions(**OPTIONS, max_iterations=2)).run()
    assert result.reason != "target" and not typed(fork, "PromotionProposed")
    flagged = typed(fork, "OverfittingDetected")
    assert flagged and flagged[0].data["version"] == "v1"
    assert flagged[0].data["metric"] == "dev"
    assert flagged[0].data["composite"] - flagged[0].data["decision"] > 0.05
    assert result.iterations[0].overfitting
    # The candidate trained on the suite's own inputs, and its lineage says which.
    seen = typed(fork, "CandidateRegistered")[0].data["lineage"]["seen"]
    evaluation = next(e.data for e in typed(fork, "EvalCompleted") if e.data["version"] == "v1")
    assert seen and evaluation["seen"] == len(seen)
    assert evaluation["unseen_n"] == 60 - len(seen)
    built = typed(fork, "DatasetBuilt")[0].data
    assert built["scenarios"] == seen and "failure" in built["sources"]
