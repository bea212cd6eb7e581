"""Folding the log into fleet state, and the tip-keyed cache that keeps `status` fast."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pygit2
import pytest

from modelsmith.events import Event, MemoryEventStore
from modelsmith.events.gitstore import EVENTS_REF, GitEventStore
from modelsmith.events.projection import fold
from modelsmith.events.types import (
    CandidateRegistered,
    EvalCompleted,
    Lineage,
    MetricsObserved,
    Promoted,
    PromotionRejected,
    RolledBack,
    TrainingStarted,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _story(store, stream: str = "rtb") -> None:
    """v1 reaches production, v2 goes canary then production, then is rolled back to v1."""
    steps = [
        CandidateRegistered(version="v1", lineage=Lineage(base_model="smollm2-135m")),
        EvalCompleted(version="v1", model="v1", suite="rtb", suite_hash="h1", run_id="e1",
                      composite=0.91, heldout=0.9),
        Promoted(version="v1", stage="production"),
        CandidateRegistered(version="v2", lineage=Lineage(base_model="smollm2-135m",
                                                          parent="v1")),
        EvalCompleted(version="v2", model="v2", suite="rtb", suite_hash="h1", run_id="e2",
                      composite=0.95),
        PromotionRejected(version="v2", stage="production", gate="stage-order",
                          reason="canary first"),
        Promoted(version="v2", stage="canary", traffic=0.1, previous=None),
        MetricsObserved(version="v2", stage="canary", window_start=_at(10), window_end=_at(11),
                        requests=300, metrics={"score_mean": 0.97}),
        Promoted(version="v2", stage="production", previous="v1"),
        RolledBack(stage="production", from_version="v2", to_version="v1",
                   reason="score_mean 0.70 < 0.80", metric="score_mean", value=0.7,
                   threshold=0.8),
        TrainingStarted(run_id="t3", method="grpo", profile="cpu", host="local"),
    ]
    for i, payload in enumerate(steps):
        event = Event.new(payload, actor="human:ana" if i in (2, 8) else "reconciler",
                          cause=f"pr#{i}" if i in (2, 8) else None, at=_at(i))
        store.append(stream, [event], store.last_seq(stream))


def test_fold_gives_current_stages_and_full_history():
    store = MemoryEventStore()
    _story(store)
    fleet = fold(store)
    s = fleet.specialists["rtb"]
    assert {k: v.version for k, v in s.stages.items()} == {"production": "v1"}
    assert [(a.stage, a.version, a.ended_by) for a in s.history] == [
        ("production", "v1", "Promoted"),
        ("canary", "v2", "Promoted"),
        ("production", "v2", "RolledBack"),
        ("production", "v1", None),
    ]
    first = s.history[0]
    assert (first.since, first.until, first.actor, first.cause) == (_at(2), _at(8), "human:ana",
                                                                   "pr#2")
    assert [c.latest().composite for c in s.candidates.values()] == [0.91, 0.95]
    assert s.rejections[0]["gate"] == "stage-order"
    assert s.metrics["v2@canary"]["requests"] == 300
    assert fleet.position == 11 and s.last_seq == 11
    assert fleet.to_dict()["specialists"][0]["production"]["version"] == "v1"


def test_bootstrap_answers_are_summed_beside_the_requests_of_their_key():
    """A shadow's windows while bootstrapping say how many of their requests were replayed
    answers; the fold keeps both sums, and a window without any leaves ``bootstrap`` out of
    the event."""
    store = MemoryEventStore()
    windows = [MetricsObserved(version="v1", stage="shadow", window_start=_at(i),
                               window_end=_at(i + 1), requests=requests, bootstrap=boot,
                               metrics={"format_rate": 1.0, "rubric_score": score})
               for i, (requests, boot, score) in enumerate([(30, 30, 0.8), (25, 20, 0.9)])]
    plain = MetricsObserved(version="v1", stage="canary", window_start=_at(5),
                            window_end=_at(6), requests=10)
    events = [Event.new(w, actor="serve", at=_at(i)) for i, w in enumerate([*windows, plain])]
    assert "bootstrap" not in events[2].data and events[0].data["bootstrap"] == 30
    assert events[0].payload().summary() == "v1@shadow 30 requests (30 bootstrap)"
    store.append("rtb", events, 0)
    s = fold(store).specialists["rtb"]
    assert s.metrics["v1@shadow"] == {"requests": 55, "bootstrap": 50,
                                      "last": {"format_rate": 1.0, "rubric_score": 0.9},
                                      "at": _at(1).isoformat()}
    assert s.metrics["v1@canary"]["bootstrap"] == 0
    with pytest.raises(ValueError, match=r"bootstrap \(3\) exceeds requests \(2\)"):
        MetricsObserved(version="v1", stage="shadow", window_start=_at(0),
                        window_end=_at(1), requests=2, bootstrap=3)


def test_invalid_payloads_are_counted_not_fatal():
    store = MemoryEventStore()
    _story(store)
    fleet = fold(store)
    bogus = Event(id="x" * 10, type="Promoted", stream="rtb", seq=12, at=_at(20), actor="x",
                  data={"stage": "moon"}, position=12)
    fleet.apply(bogus)
    assert fleet.specialists["rtb"].invalid == 1


class CountingStore(MemoryEventStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read(self, stream=None, after=None):
        self.reads += 1
        return super().read(stream, after)


def test_cache_skips_replay_when_the_tip_is_unchanged_and_catches_up_incrementally(tmp_path):
    store = CountingStore()
    _story(store)
    cache = tmp_path / "fleet.pickle"
    cold = fold(store, cache)
    assert store.reads == 1
    warm = fold(store, cache)
    assert store.reads == 1  # no replay at all
    assert warm.to_dict() == cold.to_dict()
    store.append("other", [Event.new(Promoted(version="v9", stage="shadow"), actor="x")], 0)
    caught_up = fold(store, cache)
    assert caught_up.position == 12 and "other" in caught_up.specialists
    assert caught_up.specialists["rtb"].history[0].version == "v1"


def test_a_corrupt_cache_is_ignored(tmp_path):
    store = MemoryEventStore()
    _story(store)
    cache = tmp_path / "fleet.pickle"
    cache.write_bytes(b"\x80not a pickle")
    assert fold(store, cache).position == 11


@pytest.fixture
def git_store(tmp_path):
    return GitEventStore(pygit2.init_repository(str(tmp_path / "repo")))


def test_git_cache_refolds_when_history_was_rewritten(tmp_path, git_store):
    _story(git_store)
    cache = tmp_path / "fleet.pickle"
    assert fold(git_store, cache).specialists["rtb"].stages["production"].version == "v1"
    repo = git_store.repo
    # Drop the last three events (rollback, training, metrics) by moving the branch back.
    tip = repo[repo.references[EVENTS_REF].target]
    back = tip.parents[0].parents[0]
    repo.references.create(EVENTS_REF, back.id, force=True)
    fleet = fold(GitEventStore(repo), cache)
    assert fleet.position == 9
    assert fleet.specialists["rtb"].stages["production"].version == "v2"


def test_fold_matches_between_stores(git_store):
    mem = MemoryEventStore()
    _story(mem)
    _story(git_store)
    a, b = fold(mem).to_dict(), fold(git_store).to_dict()
    a.pop("tip"), b.pop("tip")
    assert a == b
