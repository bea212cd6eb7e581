"""Evaluations as `evaluate` records them -- results and report as evidence, the composite
recomputed from them -- without running a model: every n-th scenario fails. The gates
believe an evaluation only when its evidence bears its numbers out."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from modelsmith.evaluation.composite import compute_report, decision_of
from modelsmith.evaluation.results import ScenarioRun
from modelsmith.evaluation.runner import runs_to_jsonl
from modelsmith.evaluation.service import REPORT, RESULTS
from modelsmith.events.types import EvalCompleted, Event
from modelsmith.specs import load_repository

#: Composite of a run where every n-th scenario fails (rtb-quality's suite).
GOOD, FAIR, POOR = 20, 10, 5  # composite 0.9543, 0.9104, 0.8136; dev 0.9522, 0.913, 0.826


def evaluated(root: Path, version: str, fail_every: int = GOOD,
              actor: str = "test") -> Event:
    repo = load_repository(root)
    suite = repo.suite_for(repo.specialists["rtb-quality"])
    runs = []
    for i, sc in enumerate(suite.scenarios):
        ok = not (fail_every and i % fail_every == 0)
        for variant, text in [(None, sc.input), *enumerate(sc.variants)]:
            runs.append(ScenarioRun(id=sc.id, split=sc.split, variant=variant,
                                    tags=list(sc.tags), input=text, expected=sc.expected,
                                    outputs=["x"], score=float(ok), passed=ok,
                                    format_ok=True, latency_ms=10.0, completion_tokens=1))
    report = compute_report(runs, suite.suite, n_resamples=200)
    summary = report.to_dict()
    metric, value, n = decision_of(report, 30)
    payload = EvalCompleted(version=version, model=version, suite=suite.name,
                            suite_hash=suite.suite_hash, run_id=uuid.uuid4().hex[:12],
                            composite=summary["composite"], heldout=summary["heldout"],
                            decision_metric=metric, decision=round(value, 6), decision_n=n)
    evidence = {RESULTS: runs_to_jsonl(runs),
                REPORT: json.dumps(summary, sort_keys=True).encode()}
    return Event.new(payload, actor=actor, evidence=evidence)


def lineage(root: Path, version: str, runs: tuple[int, ...] = (GOOD, GOOD, GOOD),
            actor: str = "test", **fields) -> list[Event]:
    """``version`` registered and evaluated as the last of ``len(runs)`` trained versions
    along one lineage (the composite gate counts one evaluation per version): the ones
    before it are ``<version>0<i>`` (v1 descends from v102, from v101), each evaluated with
    its ``runs`` entry, oldest first; ``fields`` go into ``version``'s lineage."""
    from modelsmith.events.types import CandidateRegistered, Lineage

    events, parent = [], None
    for i, fail_every in enumerate(runs[:-1], start=1):
        ancestor = f"{version}0{i}"
        events.append(Event.new(CandidateRegistered(version=ancestor, lineage=Lineage(
            base_model="tiny-test", parent=parent)), actor=actor))
        events.append(evaluated(root, ancestor, fail_every, actor))
        parent = ancestor
    events.append(Event.new(CandidateRegistered(version=version, lineage=Lineage(
        **{"base_model": "tiny-test", "parent": parent, **fields})), actor=actor))
    events.append(evaluated(root, version, runs[-1], actor))
    return events


def canary_fork(repo: Path) -> Path:
    """The demo files in ``repo`` committed as a fork on ``main`` with v1 in canary (after
    shadow, with traffic in both) and a lineage of three evaluated versions: v1's
    production proposal passes every gate but the approval."""
    from datetime import UTC, datetime

    from conftest import git
    from modelsmith.events.gitstore import GitEventStore
    from modelsmith.events.types import MetricsObserved, Promoted

    spec = repo / "specialists" / "rtb-quality.yaml"
    spec.write_text(spec.read_text().replace(
        "  canary: null", "  canary:\n    version: v1\n    traffic: 0.1"))
    git(repo, "checkout", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the fork")
    at = datetime(2026, 11, 20, tzinfo=UTC)
    evaluations = lineage(repo, "v1", dataset_hash="d" * 64, run_id="run1")
    payloads = [Promoted(version="v1", stage="shadow"),
                MetricsObserved(version="v1", stage="shadow", window_start=at,
                                window_end=at, requests=80, metrics={"format_rate": 0.99}),
                Promoted(version="v1", stage="canary", traffic=0.1),
                MetricsObserved(version="v1", stage="canary", window_start=at,
                                window_end=at, requests=250, metrics={"score_mean": 0.91})]
    GitEventStore(repo).append(
        "rtb-quality", [*evaluations, *(Event.new(p, actor="test") for p in payloads)], 0)
    return repo
