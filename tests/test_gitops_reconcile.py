"""``reconcile`` on a real git event log: it appends what the plan says, once; a second run
appends nothing; a metrics breach rolls back in one run; reconcilers racing on one change
record one decision."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from evaluations import GOOD, POOR, evaluated, lineage
from modelsmith.cli import cli
from modelsmith.events.gitstore import GitEventStore
from modelsmith.events.types import (
    CandidateRegistered,
    EvalCompleted,
    Event,
    Lineage,
    MetricsObserved,
    Promoted,
)
from modelsmith.specs import load_repository

SPEC = "specialists/rtb-quality.yaml"


@pytest.fixture
def fork(demo_repo):
    store = GitEventStore(demo_repo)
    events = []
    for version, runs in (("v1", (GOOD, GOOD, GOOD)), ("v2", (GOOD, POOR, GOOD))):
        events += lineage(demo_repo, version, runs)
    store.append("rtb-quality", events, 0)
    return demo_repo


def release(repo, **stages):
    path = repo / SPEC
    text = path.read_text()
    for stage, version in stages.items():
        text = text.replace(f"  {stage}: null", f"  {stage}: {version}")
    path.write_text(text)


def run(repo, *args):
    result = CliRunner().invoke(cli, ["-C", str(repo), *args])
    assert result.exit_code == 0, result.output
    return result.output


def kinds(repo):
    return [(e.type, e.data.get("version") or e.data.get("from_version"), e.data.get("stage"))
            for e in GitEventStore(repo).read("rtb-quality") if e.actor == "reconcile"]


def test_reconcile_promotes_once_and_then_has_nothing_to_do(fork):
    release(fork, shadow="v1")
    assert run(fork, "reconcile").startswith("Promoted rtb-quality shadow: - -> v1")
    assert run(fork, "reconcile") == ("nothing to do: the event log matches every "
                                      "specialist's release\n")
    assert kinds(fork) == [("Promoted", "v1", "shadow")]
    (row,) = json.loads(run(fork, "status", "--json"))["specialists"]
    assert row["shadow"]["version"] == "v1" and row["desired"]["shadow"] == "v1"


def test_a_failing_version_is_rejected_once_with_its_numbers(fork):
    release(fork, shadow="v2")
    output = run(fork, "reconcile")
    assert output.startswith("PromotionRejected rtb-quality shadow: - -> v2")
    assert run(fork, "reconcile").startswith("nothing to do")
    (rejected,) = [e for e in GitEventStore(fork).read("rtb-quality")
                   if e.type == "PromotionRejected"]
    assert rejected.data["gate"] == "composite"
    assert rejected.data["reason"] == (
        "2 of the 3 consecutive versions needed along v2's lineage at >= 0.9 (dev composite): "
        "v2 0.952, v202 0.826, v201 0.952")
    assert rejected.data["numbers"]["lowest"] == 0.826


def test_a_metrics_breach_rolls_back_in_one_reconcile(fork):
    store = GitEventStore(fork)
    at = datetime(2026, 11, 20, tzinfo=UTC)
    events = [Promoted(version="v1", stage="production"),
              Promoted(version="v2", stage="production", previous="v1"),
              MetricsObserved(version="v2", stage="production", window_start=at,
                              window_end=at, requests=400, metrics={"score_mean": 0.61})]
    store.append("rtb-quality", [Event.new(p, actor="serve") for p in events],
                 store.last_seq("rtb-quality"))
    release(fork, production="v2")
    before = datetime.now(UTC)
    output = run(fork, "reconcile")
    assert ("RolledBack rtb-quality production: v2 -> v1 (score_mean 0.610 < 0.8 over 400 "
            "requests of v2 in production)") in output
    # This fork has no commit yet, so no forge to propose the matching release on.
    assert "release not proposed: the repository has no commit to branch from" in output
    assert run(fork, "reconcile").startswith("nothing to do")  # release still says v2
    (rolled,) = [e for e in store.read("rtb-quality") if e.type == "RolledBack"]
    assert (rolled.data["metric"], rolled.data["value"], rolled.data["threshold"]) == (
        "score_mean", 0.61, 0.8)
    history = json.loads(run(fork, "history", "rtb-quality", "--json"))
    ended = [h for h in history["assignments"] if h["version"] == "v2"]
    assert ended[-1]["ended_by"] == "RolledBack"
    then = json.loads(run(fork, "status", "--at", before.isoformat(), "--json"))
    assert then["specialists"][0]["production"]["version"] == "v2"  # before the breach


def test_racing_reconcilers_record_one_decision(fork):
    release(fork, shadow="v1")
    procs = [subprocess.Popen([sys.executable, "-m", "modelsmith", "-C", str(fork),
                               "reconcile", "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1] for r in results]
    applied = [a for out, _ in results for a in json.loads(out)["applied"]]
    assert len(applied) == 1 and applied[0]["type"] == "Promoted"
    assert kinds(fork) == [("Promoted", "v1", "shadow")]


def test_a_manual_rollback_goes_back_and_status_at_shows_before(fork):
    store = GitEventStore(fork)
    store.append("rtb-quality", [Event.new(Promoted(version="v1", stage="production"),
                                           actor="test")], store.last_seq("rtb-quality"))
    before = datetime.now(UTC)
    store.append("rtb-quality", [Event.new(Promoted(version="v2", stage="production",
                                                    previous="v1"), actor="test")],
                 store.last_seq("rtb-quality"))
    release(fork, production="v2")
    output = run(fork, "rollback", "rtb-quality", "--reason", "pager at 3am")
    assert "RolledBack rtb-quality production: v2 -> v1" in output
    (rolled,) = [e for e in store.read("rtb-quality") if e.type == "RolledBack"]
    assert rolled.data["reason"] == "manual rollback: pager at 3am"
    # Release still names v2: reconcile does not promote it again.
    assert run(fork, "reconcile").startswith("nothing to do")
    now = json.loads(run(fork, "status", "--json"))["specialists"][0]
    assert now["production"]["version"] == "v1"
    then = json.loads(run(fork, "status", "--at", before.isoformat(), "--json"))
    assert then["specialists"][0]["production"]["version"] == "v1"
    assert then["events"] == len(list(store.read())) - 2
    later = json.loads(run(fork, "status", "--at", "modelsmith/events", "--json"))
    assert later["events"] == len(list(store.read()))
    bad = CliRunner().invoke(cli, ["-C", str(fork), "status", "--at", "yesterday-ish"])
    assert bad.exit_code == 1 and "neither a date/time" in bad.output
    again = CliRunner().invoke(cli, ["-C", str(fork), "rollback", "rtb-quality", "--to", "v9"])
    assert again.exit_code == 1 and "no candidate v9" in again.output


def test_reconcile_watch_acts_again_when_the_release_changes(fork):
    import os
    import time

    proc = subprocess.Popen([sys.executable, "-m", "modelsmith", "-C", str(fork), "reconcile",
                             "--watch"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("nothing to do")
        time.sleep(0.5)  # the watcher is up
        release(fork, shadow="v1")
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines.append(proc.stdout.readline())
            if lines[-1].startswith("Promoted"):
                break
        assert any(line.startswith("-- changed: rtb-quality.yaml") for line in lines), lines
        assert lines[-1].startswith("Promoted rtb-quality shadow: - -> v1")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert kinds(fork) == [("Promoted", "v1", "shadow")]


def test_reconcile_evaluate_runs_the_evaluation_the_plan_waits_for(demo_repo, tmp_path,
                                                                  monkeypatch):
    """v1's evaluations ran on an older suite: the plan asks for one on the current suite;
    `reconcile --evaluate` runs it (the tiny model stands in for v1's weights), then
    decides on it."""
    import shutil

    from modelsmith.artifacts.models import resolve_model

    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    repo = load_repository(demo_repo)
    tiny = resolve_model("tiny-test", repo.clusters, progress=lambda _m: None).path
    shutil.copytree(tiny, demo_repo / "models" / "rtb-quality" / "v1")
    old = evaluated(demo_repo, "v1")
    stale = Event.new(EvalCompleted(**{**old.data, "suite_hash": "an-older-suite"}),
                      actor="test", evidence=dict(old.blobs))
    registered = Event.new(CandidateRegistered(
        version="v1", lineage=Lineage(base_model="tiny-test")), actor="test")
    GitEventStore(demo_repo).append("rtb-quality", [registered, stale], 0)
    release(demo_repo, shadow="v1")
    assert "pending rtb-quality shadow: v1 has no evaluation on the current suite" in \
        run(demo_repo, "reconcile")
    output = run(demo_repo, "reconcile", "--evaluate")
    assert "evaluating rtb-quality v1 on the current suite" in output
    evals = [e for e in GitEventStore(demo_repo).read("rtb-quality")
             if e.type == "EvalCompleted" and e.data["suite_hash"] == repo.suite_for(
                 repo.specialists["rtb-quality"]).suite_hash]
    assert len(evals) == 1 and evals[0].data["version"] == "v1"
    # One evaluation of the three the gate needs: decided, and rejected with the numbers.
    assert "PromotionRejected rtb-quality shadow: - -> v1" in output


def test_the_only_shadow_rolled_back_by_hand_leaves_the_stage_empty(fork):
    store = GitEventStore(fork)
    store.append("rtb-quality", [Event.new(Promoted(version="v1", stage="shadow"),
                                           actor="test")], store.last_seq("rtb-quality"))
    output = run(fork, "rollback", "rtb-quality", "--stage", "shadow", "--reason", "wrong one")
    assert "RolledBack rtb-quality shadow: v1 -> -" in output
    (rolled,) = [e for e in store.read("rtb-quality") if e.type == "RolledBack"]
    assert rolled.data["to_version"] is None and "left empty" in rolled.data["reason"]
    assert json.loads(run(fork, "status", "--json"))["specialists"][0]["shadow"] is None
    # Production with nothing before it still needs a version named.
    store.append("rtb-quality", [Event.new(Promoted(version="v2", stage="production"),
                                           actor="test")], store.last_seq("rtb-quality"))
    refused = CliRunner().invoke(cli, ["-C", str(fork), "rollback", "rtb-quality"])
    assert refused.exit_code == 1 and "name one with --to" in refused.output
