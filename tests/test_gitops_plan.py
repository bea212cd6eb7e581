"""``plan``: a pure function from desired state, the folded log and the policy to actions,
each gate decided from logged evidence with its numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from modelsmith.events.projection import FleetState
from modelsmith.events.types import (
    CandidateRegistered,
    EvalCompleted,
    Event,
    Lineage,
    MetricsObserved,
    Promoted,
    PromotionRejected,
)
from modelsmith.gitops.plan import Approval, Desired, HeldoutResult, plan
from modelsmith.specs.models import PolicySpec

SUITE = "suite-hash-now"
POLICY = PolicySpec.model_validate({
    "gates": {"composite": {"sustained": 3}, "heldout": {"max_regression": 0.02}},
    "stages": [
        {"name": "shadow", "min_requests": 50, "floors": {"format_rate": 0.95}},
        {"name": "canary", "min_requests": 200, "traffic": 0.1,
         "floors": {"score_mean": 0.85}},
        {"name": "production", "approval": True, "approvers": ["alice", "bob"]},
    ],
    "rollback": {"metric": "score_mean", "threshold": 0.8, "window": 200},
})


class Log:
    """Events for one specialist, folded as the log would fold them."""

    def __init__(self) -> None:
        self.fleet = FleetState()
        self.at = datetime(2026, 11, 1, tzinfo=UTC)
        self.seq = 0

    def add(self, payload) -> Event:
        self.seq += 1
        self.at += timedelta(minutes=1)
        event = Event.new(payload, actor="test", at=self.at).recorded("rtb", self.seq,
                                                                      self.seq)
        self.fleet.apply(event)
        return event

    def candidate(self, version, *scores, suite=SUITE, parent=None):
        """``version`` trained from ``parent``; with several ``scores`` (oldest first), the
        versions before it along its lineage (``<version>.1``, ...) are registered and
        evaluated first: the composite gate counts one evaluation per version."""
        for i, score in enumerate(scores[:-1], start=1):
            ancestor = f"{version}.{i}"
            self.add(CandidateRegistered(version=ancestor, lineage=Lineage(
                base_model="m", parent=parent)))
            self.evaluate(ancestor, score, suite)
            parent = ancestor
        self.add(CandidateRegistered(version=version, lineage=Lineage(base_model="m",
                                                                      parent=parent)))
        for score in scores[-1:]:
            self.evaluate(version, score, suite)

    def evaluate(self, version, score, suite=SUITE, run_id=None):
        return self.add(EvalCompleted(version=version, model=version, suite="rtb",
                                      suite_hash=suite, run_id=run_id or f"r{self.seq}",
                                      composite=score, heldout=score))

    def observe(self, version, stage, requests, **metrics):
        self.add(MetricsObserved(version=version, stage=stage, window_start=self.at,
                                 window_end=self.at, requests=requests, metrics=metrics))


def desired(**release) -> dict[str, Desired]:
    canary = release.get("canary")
    return {"rtb": Desired(release=release, traffic={"canary": 0.1} if canary else {},
                           target=0.9, suite_hash=SUITE, policy=POLICY)}


def gates(action):
    return {g.name: g.passed for g in action.gates}


def test_a_version_with_its_evidence_is_promoted_to_shadow():
    log = Log()
    log.candidate("v1", 0.91, 0.93, 0.92)
    (action,) = plan(desired(shadow="v1"), log.fleet)
    assert (action.kind, action.stage, action.version, action.previous) == (
        "promote", "shadow", "v1", None)
    assert gates(action) == {"review": True, "suite": True, "composite": True,
                            "overfitting": True, "heldout": True, "order": True}
    assert plan(desired(), log.fleet) == []  # nothing desired, nothing held


def test_a_failing_gate_is_rejected_with_numbers_once():
    log = Log()
    log.candidate("v1", 0.95, 0.85, 0.95)
    (action,) = plan(desired(shadow="v1"), log.fleet)
    assert action.kind == "reject" and gates(action)["composite"] is False
    composite = next(g for g in action.gates if g.name == "composite")
    assert composite.detail == ("2 of the 3 consecutive versions needed along v1's lineage "
                                "at >= 0.9: v1 0.950, v1.2 0.850, v1.1 0.950")
    assert composite.numbers["lowest"] == 0.85
    log.add(PromotionRejected(version="v1", stage="shadow", gate="composite",
                              reason=composite.detail))
    assert plan(desired(shadow="v1"), log.fleet) == []  # already recorded
    log.evaluate("v1", 0.97)  # new evidence: decided again, on the new numbers
    (again,) = plan(desired(shadow="v1"), log.fleet)
    assert again.kind == "reject" and "v1 0.970, v1.2 0.850" in again.reason
    # Re-evaluating the same weights adds nothing; two more trained versions do.
    log.evaluate("v1", 0.96)
    assert plan(desired(shadow="v1"), log.fleet)[0].kind == "reject"
    log.candidate("v2", 0.96, parent="v1")
    log.candidate("v3", 0.95, parent="v2")
    (promote,) = plan(desired(shadow="v3"), log.fleet)
    assert promote.kind == "promote", promote.reason
    composite = next(g for g in promote.gates if g.name == "composite")
    assert composite.detail == ("3 consecutive versions along v3's lineage at >= 0.9: "
                                "v3 0.950, v2 0.960, v1 0.960")


def test_a_repeated_or_relabelled_evaluation_never_counts():
    """An EvalCompleted appended again (same run) counts once; one relabelled from another
    version (its run already counted, or weights that are not the version's) not at all."""
    log = Log()
    log.add(CandidateRegistered(version="v1", lineage=Lineage(base_model="m",
                                                              weights_hash="w1")))
    good = EvalCompleted(version="v1", model="v1", suite="rtb", suite_hash=SUITE,
                         run_id="run-1", composite=0.95, heldout=0.95, weights_hash="w1")
    log.add(good)
    log.add(CandidateRegistered(version="v2", lineage=Lineage(base_model="m", parent="v1",
                                                              weights_hash="w2")))
    log.add(good.model_copy(update={"version": "v2", "model": "v2"}))  # relabelled
    log.add(CandidateRegistered(version="v3", lineage=Lineage(base_model="m", parent="v2",
                                                              weights_hash="w3")))
    own = EvalCompleted(version="v3", model="v3", suite="rtb", suite_hash=SUITE,
                        run_id="run-3", composite=0.95, heldout=0.95, weights_hash="w3")
    log.add(own)
    log.add(own)  # appended twice
    log.add(own.model_copy(update={"run_id": "run-4", "weights_hash": "w1"}))
    (action,) = plan(desired(shadow="v3"), log.fleet)
    assert action.kind == "reject"
    composite = next(g for g in action.gates if g.name == "composite")
    assert composite.passed is False and composite.numbers["evaluations"] == 1
    assert "its run run-1 was already counted" in composite.detail
    assert "its run run-3 was already counted" in composite.detail
    assert "it measured weights w1, not the w3 v3's lineage registered" in composite.detail


def test_a_changed_suite_asks_for_an_evaluation_first():
    log = Log()
    log.candidate("v1", 0.95, 0.95, 0.95, suite="suite-hash-before")
    (action,) = plan(desired(shadow="v1"), log.fleet)
    assert action.kind == "evaluate" and "no evaluation on the current suite" in action.reason
    (unknown,) = plan(desired(shadow="v9"), log.fleet)
    assert unknown.kind == "reject" and unknown.gates[0].name == "version"


def test_stages_go_in_order_with_traffic_and_floors_observed():
    log = Log()
    log.candidate("v1", 0.95, 0.95, 0.95)
    (action,) = plan(desired(canary="v1"), log.fleet)
    assert action.kind == "reject" and "never held shadow" in action.reason
    log.add(Promoted(version="v1", stage="shadow"))
    log.observe("v1", "shadow", 30, format_rate=0.99)
    (action,) = plan(desired(shadow="v1", canary="v1"), log.fleet)
    assert action.kind == "reject" and action.reason.endswith(
        "30 requests observed in shadow, needs 50")
    log.observe("v1", "shadow", 30, format_rate=0.90)
    (action,) = plan(desired(shadow="v1", canary="v1"), log.fleet)
    assert gates(action)["traffic"] and not gates(action)["floors"]
    log.observe("v1", "shadow", 10, format_rate=0.97)
    (action,) = plan(desired(canary="v1"), log.fleet)
    assert (action.kind, action.traffic) == ("promote", 0.1)


def test_production_needs_an_approval_and_held_out_parity():
    log = Log()
    log.candidate("v1", 0.95, 0.95, 0.95)
    log.candidate("v2", 0.96, 0.96, 0.96)
    for version in ("v1", "v2"):
        log.add(Promoted(version=version, stage="canary", traffic=0.1))
        log.observe(version, "canary", 250, score_mean=0.9)
    log.add(Promoted(version="v1", stage="production"))
    asked = []

    def heldout(specialist, candidate_eval, baseline_eval):
        asked.append((candidate_eval, baseline_eval))
        return HeldoutResult(-0.05, -0.09, -0.01, 100, 0.85, 0.90)

    (action,) = plan(desired(production="v2", canary="v2"), log.fleet, heldout=heldout)
    assert action.kind == "reject" and gates(action) == {
        "review": True, "suite": True, "composite": True, "overfitting": True,
        "heldout": False, "order": True, "traffic": True, "floors": True, "approval": False}
    assert "-0.050 (95% CI [-0.090, -0.010], n=100)" in action.reason
    v1, v2 = log.fleet.specialists["rtb"].candidates["v1"], \
        log.fleet.specialists["rtb"].candidates["v2"]
    assert asked == [(v2.evals[-1].event_id, v1.evals[-1].event_id)]

    def approved_by(*who):
        return lambda *_: Approval("github", "#7", "carol", who)

    level = lambda *_: HeldoutResult(0.0, -0.02, 0.02, 100, 0.9, 0.9)  # noqa: E731
    (action,) = plan(desired(production="v2", canary="v2"), log.fleet, heldout=level,
                     approval=approved_by("mallory"))
    assert action.kind == "reject" and "approved by nobody (needs 1 of alice, bob)" in \
        action.reason
    (action,) = plan(desired(production="v2", canary="v2"), log.fleet, heldout=level,
                     approval=approved_by("bob", "mallory"))
    assert action.kind == "promote" and action.previous == "v1"
    assert action.approval == Approval("github", "#7", "carol", ("bob", "mallory"))


def test_a_metrics_breach_rolls_back_to_the_previous_holder():
    log = Log()
    log.candidate("v1", 0.95, 0.95, 0.95)
    log.candidate("v2", 0.96, 0.96, 0.96)
    log.add(Promoted(version="v1", stage="production"))
    log.add(Promoted(version="v2", stage="production", previous="v1"))
    log.observe("v2", "production", 150, score_mean=0.7)
    assert plan(desired(production="v2"), log.fleet) == []  # window not filled yet
    log.observe("v2", "production", 100, score_mean=0.7)
    (action,) = plan(desired(production="v2"), log.fleet)
    assert (action.kind, action.version, action.previous) == ("rollback", "v1", "v2")
    assert action.reason == "score_mean 0.700 < 0.8 over 250 requests of v2 in production"
    (demote,) = plan(desired(), log.fleet)
    assert (demote.kind, demote.stage, demote.previous) == ("demote", "production", "v2")


def test_modelsmith_plan_prints_the_gates_and_their_numbers(demo_repo):
    import json

    from click.testing import CliRunner

    from evaluations import FAIR, GOOD, evaluated
    from modelsmith.cli import cli
    from modelsmith.events.gitstore import GitEventStore

    store = GitEventStore(demo_repo)
    registered = Event.new(CandidateRegistered(
        version="v1", lineage=Lineage(base_model="tiny-test")), actor="test")
    store.append("rtb-quality", [registered, evaluated(demo_repo, "v1", GOOD),
                                 evaluated(demo_repo, "v1", FAIR)], 0)
    spec = demo_repo / "specialists" / "rtb-quality.yaml"
    spec.write_text(spec.read_text().replace("  shadow: null", "  shadow: v1"))
    result = CliRunner().invoke(cli, ["-C", str(demo_repo), "plan"])
    assert result.exit_code == 0, result.output
    assert "  ! reject shadow: - -> v1" in result.output
    assert ("FAIL composite: 1 of the 3 consecutive versions needed along v1's lineage at "
            ">= 0.9 (dev composite): v1 0.913; the lineage has only 1 trained version(s)"
            in result.output)
    assert result.output.rstrip().endswith(
        "Plan: 0 promote, 0 demote, 0 rollback, 1 reject, 0 evaluate.")
    agents = json.loads(CliRunner().invoke(cli, ["-C", str(demo_repo), "plan", "--json"]).output)
    (action,) = agents["actions"]
    assert action["kind"] == "reject" and next(
        g for g in action["gates"] if g["name"] == "composite")["numbers"]["lowest"] == 0.913


def test_a_first_version_leaves_shadow_by_its_bootstrap_rule():
    """Nothing in production or canary: under ``bootstrap: replay`` the shadow's replayed
    answers are its traffic and the Promoted records it; under ``approval`` an approved
    change stands in for traffic; ``off`` waits for traffic that cannot come."""
    log = Log()
    log.candidate("v1", 0.95, 0.95, 0.95)
    log.add(Promoted(version="v1", stage="shadow"))
    log.add(MetricsObserved(version="v1", stage="shadow", window_start=log.at,
                            window_end=log.at, requests=60, bootstrap=60,
                            metrics={"format_rate": 1.0}))
    (action,) = plan(desired(canary="v1"), log.fleet)
    assert action.kind == "promote" and action.bootstrap["rule"] == "replay"
    assert action.bootstrap["requests"] == 60
    traffic = next(g for g in action.gates if g.name == "traffic")
    assert "60 replayed while bootstrapping" in traffic.detail
    from modelsmith.gitops.reconcile import event_for

    assert event_for(action).bootstrap.rule == "replay"

    waived = {"rtb": Desired(release={"canary": "v2"}, traffic={"canary": 0.1}, target=0.9,
                             suite_hash=SUITE,
                             policy=POLICY.model_copy(update={"bootstrap": "approval"}))}
    log.candidate("v2", 0.95, 0.95, 0.95)
    log.add(Promoted(version="v2", stage="shadow"))
    (rejected,) = plan(waived, log.fleet)
    assert gates(rejected)["traffic"] and not gates(rejected)["approval"]
    approved = Approval("local", "abc", "dana", ("dana",))
    (promoted,) = plan(waived, log.fleet, approval=lambda *_: approved)
    assert promoted.kind == "promote" and promoted.bootstrap["rule"] == "approval"
    assert promoted.approval == approved

    off = {"rtb": Desired(release={"canary": "v2"}, traffic={"canary": 0.1}, target=0.9,
                          suite_hash=SUITE, policy=POLICY.model_copy(update={"bootstrap": "off"}))}
    (waiting,) = plan(off, log.fleet)
    assert waiting.kind == "reject" and not gates(waiting)["traffic"]


def test_a_canary_rolled_back_under_its_predecessor_in_production_is_emptied():
    log = Log()
    log.candidate("v1", 0.95, 0.95, 0.95)
    log.candidate("v2", 0.95, 0.95, 0.95)
    log.add(Promoted(version="v1", stage="canary", traffic=0.1))
    log.add(Promoted(version="v1", stage="production"))
    log.add(Promoted(version="v2", stage="canary", traffic=0.5))
    log.observe("v2", "canary", 250, score_mean=0.1)
    (action,) = plan(desired(production="v1", canary="v2"), log.fleet)
    assert (action.kind, action.stage, action.version, action.previous) == (
        "rollback", "canary", None, "v2")
    state = log.fleet.specialists["rtb"]
    assert state.holder("production").version == "v1"
