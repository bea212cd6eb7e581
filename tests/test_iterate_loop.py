"""The iterate loop on the tiny model: eval -> train (a job on the pool) -> re-eval ->
decide, state.json at every phase, one loop per specialist, and a crash after any phase
resumes without recording anything twice."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from modelsmith.app import Modelsmith
from modelsmith.cli import cli
from modelsmith.events.gitstore import GitEventStore
from modelsmith.iterate.loop import IterateLoop, LoopOptions
from modelsmith.iterate.state import LoopLock, StateError, StateFile

OPTIONS = {"model": "tiny-test", "profile": "cpu-tiny", "max_iterations": 2, "target": 0.99}


@pytest.fixture
def fork(train_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", str(tmp_path / "remote"))
    return train_repo


def events(repo):
    return [(e.type, e.actor.split("/", 2)[-1] if e.actor.startswith("iterate/") else e.actor,
             e.data.get("version")) for e in GitEventStore(repo).read("rtb-quality")]


def test_the_loop_runs_to_its_budget_and_says_so(fork):
    result = CliRunner().invoke(cli, ["-C", str(fork), "iterate", "rtb-quality",
                                      "--model", "tiny-test", "--profile", "cpu-tiny",
                                      "--max-iterations", "2", "--target", "0.99", "--json"])
    assert result.exit_code == 3, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    final = lines[-1]
    assert final["event"] == "result" and final["reason"] == "budget"
    assert [i["candidate"] for i in final["iterations"]] == ["v1", "v2"]
    assert "budget of 2 iterations spent" in final["message"]
    phases = [(e["iteration"], e["phase"], e["done"]) for e in lines if e["event"] == "phase"]
    assert (1, "train", True) in phases and (2, "reeval", True) in phases
    assert events(fork) == [
        ("EvalStarted", "1/eval", None), ("EvalCompleted", "1/eval", None),
        ("FailuresExtracted", "1/extract", None), ("DatasetBuilt", "1/validate", None),
        ("TrainingStarted", "1/train", None), ("TrainingCompleted", "1/train", None),
        ("CandidateRegistered", "1/train", "v1"),
        ("EvalStarted", "1/reeval", "v1"), ("EvalCompleted", "1/reeval", "v1"),
        ("FailuresExtracted", "2/extract", "v1"), ("DatasetBuilt", "2/validate", None),
        ("TrainingStarted", "2/train", None), ("TrainingCompleted", "2/train", None),
        ("CandidateRegistered", "2/train", "v2"),
        ("EvalStarted", "2/reeval", "v2"), ("EvalCompleted", "2/reeval", "v2"),
    ]
    # v2 descends from v1, and the training ran as a job on the pool's local host.
    registered = [e for e in GitEventStore(fork).read("rtb-quality")
                  if e.type == "CandidateRegistered"]
    assert registered[1].data["lineage"]["base_model"] == "v1"
    assert registered[1].data["lineage"]["host"] == "local"
    status = CliRunner().invoke(cli, ["-C", str(fork), "iterate", "rtb-quality", "--status"])
    assert "phase decide (done)" in status.output and "| 2 | v2 |" in status.output
    plot = fork / ".iterate" / "rtb-quality" / "scores.svg"
    assert final["plot"] == str(plot) and final["target"] == 0.99
    svg = plot.read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 3 and "target 0.99" in svg
    assert (fork / ".iterate" / ".gitignore").read_text().endswith("*\n")


class Crash(Exception):
    pass


@pytest.mark.parametrize("crash_at", [("eval", 1), ("train", 1), ("reeval", 1),
                                      ("decide", 1), ("train", 2)])
def test_a_crash_after_any_phase_resumes_without_duplicates(fork, crash_at):
    ws = Modelsmith.open(fork)
    options = LoopOptions(**OPTIONS)

    def crash(phase, iteration):
        if (phase, iteration) == crash_at:
            raise Crash(f"after {phase} {iteration}")

    with pytest.raises(Crash):
        IterateLoop(ws.loop_parts(), "rtb-quality", options, fail_after=crash).run()
    saved = StateFile(fork, "rtb-quality").load()
    assert (saved.phase, saved.iteration, saved.done) == (*crash_at, True)
    said: list[str] = []
    result = IterateLoop(Modelsmith.open(fork).loop_parts(), "rtb-quality", options,
                         say=said.append).run()
    assert said[0].startswith(f"resuming loop {saved.loop_id}")
    assert result.reason == "budget" and result.candidate == "v2"
    kinds = [t for t, _, _ in events(fork)]
    assert kinds.count("EvalCompleted") == 3 and kinds.count("CandidateRegistered") == 2
    assert kinds.count("TrainingStarted") == 2 and kinds.count("FailuresExtracted") == 2


def test_one_loop_per_specialist(fork):
    with LoopLock(fork, "rtb-quality"), pytest.raises(StateError, match="another iterate loop"):
        IterateLoop(Modelsmith.open(fork).loop_parts(), "rtb-quality", LoopOptions(**OPTIONS)).run()


def test_at_the_target_the_held_out_gate_proposes_promotion(fork):
    """The loop proposes what passes every gate `plan` decides before traffic: the
    specialist's target (here low enough for one tiny iteration) along the lineage, and
    held-out against the floor."""
    spec = fork / "specialists" / "rtb-quality.yaml"
    spec.write_text(spec.read_text().replace("composite: 0.9", "composite: 0.01")
                    .replace("sustained: 3", "sustained: 1"))
    policy = fork / "policies" / "promotion.yaml"
    policy.write_text(policy.read_text().replace("max_regression: 0.02",
                                                 "max_regression: 0.02\n      floor: 0.0"))
    options = LoopOptions(**{**OPTIONS, "target": None})
    result = IterateLoop(Modelsmith.open(fork).loop_parts(), "rtb-quality", options).run()
    assert result.reason == "target" and result.candidate == "v1", result.message
    assert "held-out" in result.message and "every gate before traffic passes" in result.message
    assert "vs the floor 0.0 (nothing in production" in result.message
    assert result.message.endswith("proposed v1 for shadow")
    store = GitEventStore(fork)
    proposed = [e for e in store.read("rtb-quality") if e.type == "PromotionProposed"]
    assert len(proposed) == 1 and proposed[0].data["version"] == "v1"
    assert proposed[0].data["stage"] == "shadow"
    evals = [e.id for e in store.read("rtb-quality") if e.type == "EvalCompleted"]
    assert proposed[0].data["evidence"] == [evals[1]]  # the candidate; no production
    # A second run starts a new loop (the first ended) rather than re-proposing: from the
    # ended loop's candidate, its evaluation reused; --fresh goes back to the base model.
    said: list[str] = []
    again = IterateLoop(Modelsmith.open(fork).loop_parts(), "rtb-quality", options,
                        say=said.append).run()
    assert "ended (target); starting a new one from its latest candidate v1" in said[0]
    assert again.candidate == "v2"
    registered = [e for e in store.read("rtb-quality") if e.type == "CandidateRegistered"]
    assert registered[-1].data["lineage"]["parent"] == "v1"
    assert [e.type for e in store.read("rtb-quality")].count("EvalCompleted") == len(evals) + 1
    said.clear()
    fresh = LoopOptions(**{**OPTIONS, "target": None, "max_iterations": 1, "fresh": True})
    state = IterateLoop(Modelsmith.open(fork).loop_parts(), "rtb-quality", fresh,
                        say=said.append)._start_or_resume("tiny-test")
    assert "starting a new one from tiny-test" in said[0] and state.outputs.model == "tiny-test"


def test_the_decision_rules():
    from modelsmith.iterate.loop import _decide
    from modelsmith.iterate.state import IterationRecord

    def decide(*scores, budget=9, patience=2):
        history = [IterationRecord(iteration=i, candidate=None if s is None else f"v{i}",
                                   composite=s) for i, s in enumerate(scores, start=1)]
        verdict = _decide(history, 0.9, 2, LoopOptions(max_iterations=budget,
                                                       patience=patience))
        return verdict and verdict[0]

    assert decide(0.5, 0.91, 0.92) == "target"
    assert decide(0.5, 0.91, None, 0.92) == "target"  # a discarded iteration has no score
    assert decide(0.5, 0.91) is None
    assert decide(0.5, 0.6, budget=2) == "budget"
    assert decide(0.7, 0.6, 0.705) == "no-gain"  # two iterations, less than 0.01 above 0.7
    assert decide(0.7, 0.6, 0.72) is None
    # Above the target the loop waits for it to hold, not for a gain.
    assert decide(0.95, 0.89, 0.91, 0.85, 0.92) is None
    assert decide(None, budget=1) == "budget"
