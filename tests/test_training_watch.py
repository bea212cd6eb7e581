"""The reward-hacking watch: reward up while held-out down is recorded as a warning."""

from __future__ import annotations

import pytest

from modelsmith.evaluation.runner import EvalSettings
from modelsmith.evaluation.service import evaluate
from modelsmith.events import Event
from modelsmith.events.gitstore import GitEventStore
from modelsmith.events.store import append_observation
from modelsmith.events.types import (
    CandidateRegistered,
    FailuresExtracted,
    Lineage,
    TrainingCompleted,
    TrainingStarted,
)
from modelsmith.specs import load_repository
from modelsmith.training.watch import reward_hacking_check
from test_eval_service import PolicyBackend

SPEC = "rtb-quality"


@pytest.fixture
def logged(demo_repo):
    """A base evaluation, then a training run on its failures that registered v1."""
    repo, store = load_repository(demo_repo), GitEventStore(demo_repo)
    settings = EvalSettings(limit=100)
    base = evaluate(repo, SPEC, PolicyBackend(error_rate=0.1), model_ref="tiny-test",
                    store=store, settings=settings).event

    def train(run_id: str, version: str, start: float, end: float) -> None:
        for payload in (
            FailuresExtracted(eval_event=base.id, scenario_ids=["rtb-0001"]),
            TrainingStarted(run_id=run_id, method="grpo", profile="cpu-tiny", host="local"),
            TrainingCompleted(run_id=run_id, method="grpo", host="local", duration_s=1.0,
                              metrics={"reward_start": start, "reward_end": end}),
            CandidateRegistered(version=version,
                                lineage=Lineage(base_model="tiny-test", run_id=run_id)),
        ):
            append_observation(store, SPEC, [Event.new(payload, actor="loop")])

    return repo, store, settings, train


def _evaluate(logged, version, error_rate):
    repo, store, settings, _ = logged
    check = reward_hacking_check(store, SPEC, version)
    assert check is not None
    return evaluate(repo, SPEC, PolicyBackend(error_rate=error_rate, seed=7), model_ref=version,
                    version=version, store=store, settings=settings, checks=[check])


def test_reward_up_and_heldout_down_is_recorded(logged):
    logged[3]("r1", "v1", 0.2, 0.9)
    outcome = _evaluate(logged, "v1", error_rate=0.6)
    (warning,) = outcome.warnings
    assert "reward rose 0.200 -> 0.900" in warning and "held-out fell" in warning
    assert outcome.event.data["warnings"] == [warning]
    assert "1 warning" in outcome.event.summary()


def test_no_warning_when_heldout_holds_or_reward_did_not_rise(logged):
    logged[3]("r1", "v1", 0.2, 0.9)
    assert _evaluate(logged, "v1", error_rate=0.0).warnings == []
    logged[3]("r2", "v2", 0.9, 0.2)
    assert _evaluate(logged, "v2", error_rate=0.6).warnings == []


def test_no_check_without_a_training_run(logged):
    _, store, _, _ = logged
    assert reward_hacking_check(store, SPEC, "v7") is None
