"""The traffic split, from the event log: production answers, the canary its share of
request keys (within 2 % over 10,000 keys, stable per key), the shadow is mirrored; a
promotion or rollback in the log moves the split without a restart; with nothing in
production or canary, the shadow answers referenced requests only under ``bootstrap:
replay``, and every other request is told why not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelsmith.events.gitstore import GitEventStore
from modelsmith.events.types import Event, Promoted, RolledBack
from modelsmith.serving.split import Assignment, NoVersion, Stages, TrafficSplit, bucket


def promote(store, version, stage, traffic=None, previous=None):
    event = Event.new(Promoted(version=version, stage=stage, traffic=traffic,
                               previous=previous), actor="test")
    store.append("rtb-quality", [event], store.last_seq("rtb-quality"))


def test_canary_share_is_within_two_percent_and_stable(demo_repo):
    store = GitEventStore(demo_repo)
    promote(store, "v1", "production")
    promote(store, "v2", "canary", traffic=0.1)
    promote(store, "v3", "shadow")
    split = TrafficSplit(store)
    keys = [f"request-{i}" for i in range(10_000)]
    served = [split.assign("rtb-quality", key) for key in keys]
    share = sum(a.version == "v2" for a in served) / len(keys)
    assert abs(share - 0.1) <= 0.02, share
    assert {a.version for a in served} == {"v1", "v2"}  # the shadow never answers
    assert all(a.shadow == "v3" for a in served)
    again = TrafficSplit(GitEventStore(demo_repo))
    assert [again.assign("rtb-quality", k).version for k in keys[:500]] == [
        a.version for a in served[:500]]
    # The bucket is the same in another process (no per-process hash seed).
    other = subprocess.run([sys.executable, "-c", "from modelsmith.serving.split import "
                            "bucket; print(bucket('request-7'))"], capture_output=True,
                           text=True, check=True)
    assert int(other.stdout) == bucket("request-7")


def test_the_split_follows_the_log_without_a_restart(demo_repo):
    store = GitEventStore(demo_repo)
    split = TrafficSplit(store)
    with pytest.raises(NoVersion):
        split.assign("rtb-quality", "k")
    promote(store, "v1", "production")
    promote(store, "v2", "production", previous="v1")
    assert split.assign("rtb-quality", "k").version == "v2"
    store.append("rtb-quality", [Event.new(RolledBack(
        stage="production", from_version="v2", to_version="v1", reason="breach"),
        actor="reconcile")], store.last_seq("rtb-quality"))
    assert split.assign("rtb-quality", "k").version == "v1"
    reloads = split.reloads
    split.assign("rtb-quality", "k")
    assert split.reloads == reloads  # the tip did not move: no refold


def test_a_shadow_alone_answers_referenced_requests_only_under_bootstrap_replay():
    alone = Stages(production=None, canary=None, traffic=0.0, shadow="v3")
    assert alone.assign("rtb-quality", "k", referenced=True, bootstrap="replay") == \
        Assignment("rtb-quality", "v3", "shadow", None, bootstrap=True)
    with pytest.raises(NoVersion) as unreferenced:
        alone.assign("rtb-quality", "k", bootstrap="replay")
    assert str(unreferenced.value) == (
        "rtb-quality has no version in production or canary; its shadow v3 answers only "
        "replayed requests with a reference while bootstrapping (policy bootstrap: replay)")
    with pytest.raises(NoVersion, match=r"no bootstrap traffic \(policy bootstrap: "
                                        r"approval\): its first canary promotion needs an "
                                        r"approved change"):
        alone.assign("rtb-quality", "k", referenced=True, bootstrap="approval")
    with pytest.raises(NoVersion, match=r"answers nothing while bootstrapping \(policy "
                                        r"bootstrap: off\).*set the policy's bootstrap to "
                                        r"replay"):
        alone.assign("rtb-quality", "k", referenced=True, bootstrap="off")
    with pytest.raises(NoVersion, match="bootstrap: off"):  # the split's default
        alone.assign("rtb-quality", "k", referenced=True)
    nothing = Stages(production=None, canary=None, traffic=0.0, shadow=None)
    with pytest.raises(NoVersion, match="nor one in shadow: promote a candidate to shadow"):
        nothing.assign("rtb-quality", "k", referenced=True, bootstrap="replay")


def test_bootstrap_ends_once_a_version_holds_canary_or_production(demo_repo):
    store = GitEventStore(demo_repo)
    promote(store, "v1", "shadow")
    split = TrafficSplit(store)
    first = split.assign("rtb-quality", "k", referenced=True, bootstrap="replay")
    assert (first.version, first.stage, first.shadow, first.bootstrap) == \
        ("v1", "shadow", None, True)
    promote(store, "v1", "canary", traffic=0.1)
    promote(store, "v2", "shadow")
    keys = [f"request-{i}" for i in range(200)]
    served = [split.assign("rtb-quality", k, referenced=True, bootstrap="replay")
              for k in keys]
    # The canary answers everything (nothing in production), the new shadow is mirrored.
    assert {(a.version, a.stage, a.shadow, a.bootstrap) for a in served} == \
        {("v1", "canary", "v2", False)}
    promote(store, "v1", "production")
    again = split.assign("rtb-quality", "k", referenced=True, bootstrap="replay")
    assert (again.version, again.stage, again.bootstrap) == ("v1", "production", False)
