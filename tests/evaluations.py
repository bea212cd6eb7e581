"""Evaluations as `evaluate` records them -- results and report as evidence, the composite
recomputed from them -- without running a model: every n-th scenario fails. The gates
believe an evaluation only when its evidence bears its numbers out."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from modelsmith.evaluation.composite import compute_report, decision_of
from modelsmith.evaluation.results import CriterionResult, ScenarioRun
from modelsmith.evaluation.runner import runs_to_jsonl
from modelsmith.evaluation.service import REPORT, RESULTS
from modelsmith.events.types import EvalCompleted, Event
from modelsmith.specs import load_repository

#: Composite of a run where every n-th scenario fails (rtb-quality's suite).
GOOD, FAIR, POOR = 20, 10, 5  # composite 0.9543, 0.9104, 0.8136; dev 0.9522, 0.913, 0.826


def suite_runs(root: Path, fail_every: int = GOOD, *,
               criteria: Callable[[Any, bool], list[CriterionResult]] | None = None,
               output: Callable[[Any, bool], str] | None = None,
               specialist: str = "rtb-quality") -> tuple[list[ScenarioRun], Any]:
    """Every scenario of ``specialist``'s suite, and each of its variants, run and scored:
    every ``fail_every``-th scenario fails. ``criteria`` and ``output`` give a run's
    criterion results and output from its scenario and whether it passed (default: none,
    and "x"). Returns the runs and the suite."""
    repo = load_repository(root)
    suite = repo.suite_for(repo.specialists[specialist])
    runs = []
    for i, sc in enumerate(suite.scenarios):
        ok = not (fail_every and i % fail_every == 0)
        crit = criteria(sc, ok) if criteria else []
        text = output(sc, ok) if output else "x"
        for variant, given in [(None, sc.input), *enumerate(sc.variants)]:
            runs.append(ScenarioRun(id=sc.id, split=sc.split, variant=variant,
                                    tags=list(sc.tags), input=given, expected=sc.expected,
                                    outputs=[text], score=float(ok), passed=ok,
                                    format_ok=True, latency_ms=10.0, completion_tokens=1,
                                    criteria=list(crit)))
    return runs, suite


def recorded_event(runs: list[ScenarioRun], suite: Any, version: str | None, *,
                   actor: str = "test", at: datetime | None = None,
                   report: Any = None, **fields: Any) -> Event:
    """The ``EvalCompleted`` of ``runs`` on ``suite`` as `evaluate` records it: composite,
    held-out and decision metric computed from them, results and report as its evidence;
    ``fields`` add to (or replace) the payload's fields."""
    report = report or compute_report(runs, suite.suite, n_resamples=200)
    summary = report.to_dict()
    metric, value, n = decision_of(report, 30)
    data = {"version": version, "model": version, "suite": suite.name,
            "suite_hash": suite.suite_hash, "run_id": uuid.uuid4().hex[:12],
            "composite": summary["composite"], "heldout": summary["heldout"],
            "decision_metric": metric, "decision_n": n,
            "decision": None if value is None else round(value, 6), **fields}
    evidence = {RESULTS: runs_to_jsonl(runs),
                REPORT: json.dumps(summary, sort_keys=True, default=str).encode()}
    return Event.new(EvalCompleted(**data), actor=actor, at=at, evidence=evidence)


def evaluated(root: Path, version: str, fail_every: int = GOOD,
              actor: str = "test") -> Event:
    return recorded_event(*suite_runs(root, fail_every), version, actor=actor)


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
