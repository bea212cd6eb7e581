"""``reconcile --push`` with real git: a bare origin and clones of it. Eight reconcilers in
separate processes and clones act on one approved change at once: the merged log holds
exactly one ``Promoted`` and every clone's own observation (none lost); nobody
force-pushes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import clone, git, published
from evaluations import lineage
from modelsmith.events.gitstore import EVENTS_REF, GitEventStore
from modelsmith.events.types import Event
from modelsmith.gitops.sync import sync
from processes import race_reconcilers

SPEC = "specialists/rtb-quality.yaml"


@pytest.fixture
def origin(demo_repo, tmp_path):
    """A bare origin holding the fork (release.shadow: v1) and a log with v1's evidence."""
    spec = demo_repo / SPEC
    spec.write_text(spec.read_text().replace("  shadow: null", "  shadow: v1"))
    git(demo_repo, "checkout", "-q", "-b", "main")
    git(demo_repo, "add", "-A")
    git(demo_repo, "commit", "-q", "-m", "the fork, asking for v1 in shadow")
    GitEventStore(demo_repo).append("rtb-quality", lineage(demo_repo, "v1"), 0)
    bare = tmp_path / "origin.git"
    return published(demo_repo, bare)


def origin_log(origin: Path, tmp_path: Path) -> list:
    reader = clone(origin, tmp_path / "reader")
    git(reader, "fetch", "-q", "origin", f"{EVENTS_REF}:{EVENTS_REF}")
    return list(GitEventStore(reader).read("rtb-quality"))


def test_eight_reconcilers_in_eight_clones_promote_once_and_lose_nothing(origin, tmp_path):
    clones = [clone(origin, tmp_path / f"clone-{n}") for n in range(8)]
    for path in clones:  # each has the log, then records something of its own
        git(path, "fetch", "-q", "origin", f"{EVENTS_REF}:{EVENTS_REF}")
    results, _errors = race_reconcilers(clones, tmp_path)
    log = origin_log(origin, tmp_path)
    promoted = [e for e in log if e.type == "Promoted"]
    assert [e.data["stage"] for e in promoted] == ["shadow"]
    # Each reconciler reports only the decisions that stood on the shared log: one in all.
    applied = [a["event"] for r in results for a in r["applied"]]
    assert applied == [promoted[0].id], [r["sync"] for r in results]
    observed = sorted(e.actor for e in log if e.type == "MetricsObserved")
    assert observed == [f"serve-{n}" for n in range(8)]  # every clone's event arrived
    assert len({e.id for e in log}) == len(log)
    # Every clone ends in step with origin, and a second round changes nothing.
    for path in clones[:2]:
        again = subprocess.run([sys.executable, "-m", "modelsmith", "-C", str(path),
                                "reconcile", "--push", "--json"], capture_output=True,
                               text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["applied"] == []
    assert len(origin_log(origin, tmp_path / "again")) == len(log)


def test_a_decision_that_no_longer_holds_is_dropped_and_planned_again(origin, tmp_path):
    from modelsmith.events.types import PromotionRejected

    a = clone(origin, tmp_path / "a")
    b = clone(origin, tmp_path / "b")
    for path in (a, b):
        git(path, "fetch", "-q", "origin", f"{EVENTS_REF}:{EVENTS_REF}")
    # Both decide on the same stream; a pushes first.
    GitEventStore(a).append("rtb-quality", [Event.new(PromotionRejected(
        version="v1", stage="shadow", gate="approval", reason="a"), actor="a")], 6)
    assert sync(a).pushed
    pushed_by_a = GitEventStore(a).tip()
    GitEventStore(b).append("rtb-quality", [Event.new(PromotionRejected(
        version="v1", stage="shadow", gate="approval", reason="b"), actor="b")], 6)
    replanned = []
    result = sync(b, replan=lambda store: replanned.append(store.last_seq("rtb-quality")))
    assert result.pushed and len(result.dropped) == 1 and replanned == [7]
    reasons = [e.data["reason"] for e in origin_log(origin, tmp_path)
               if e.type == "PromotionRejected"]
    assert reasons == ["a"]
    # Nothing was force-pushed: what a pushed is still in origin's history.
    final = git(origin, "rev-parse", EVENTS_REF).strip()
    assert subprocess.run(["git", "-C", str(origin), "merge-base", "--is-ancestor",
                           pushed_by_a, final]).returncode == 0
