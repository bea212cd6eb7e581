"""The whole journey, as `modelsmith demo` takes it: a fork of the defaults, the zero-shot
evaluation, the loop and its proposal, a reviewer merging on the local forge, reconcile,
a real `serve` over HTTP on 127.0.0.1 fed by the real replay client (the first version
bootstraps on replayed traffic), canary, production, a later version rated badly in canary
and rolled back automatically -- every step's output the next one's input, and the fork's
working tree clean at the end.

The tiny model and the fast profile stand in for the real ones; the fork's target and
floors are lowered to what a few training steps reach (the gates and their order are the
defaults')."""

from __future__ import annotations

import subprocess

import pytest

from conftest import approved_change
from modelsmith.app import Modelsmith
from modelsmith.cli.demo import Journey
from modelsmith.events.gitstore import GitEventStore


def git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def fork(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))
    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", str(tmp_path / "remote"))
    monkeypatch.setenv("MODELSMITH_NO_FETCH", "1")
    root = tmp_path / "fork"
    Modelsmith.fork(Modelsmith.defaults(tmp_path), root)
    spec = root / "specialists" / "rtb-quality.yaml"
    spec.write_text(spec.read_text().replace("composite: 0.9", "composite: 0.01")
                    .replace("sustained: 3", "sustained: 1"))
    policy = root / "policies" / "promotion.yaml"
    policy.write_text(policy.read_text()
                      .replace("max_regression: 0.02", "max_regression: 1.0\n      floor: 0.0")
                      .replace("format_rate: 0.95", "format_rate: 0.0")
                      .replace("score_mean: 0.85", "score_mean: 0.0"))
    # A change to a policy and a specialist's target: reviewed, as the review gate asks.
    approved_change(root, "a target a few training steps reach")
    return root


def test_the_journey_from_yaml_to_production_and_a_rolled_back_canary(fork, capsys):
    Journey(fork, threads=1).whole("tiny-test", "cpu-tiny", 2, "rollback", False, None)
    printed = capsys.readouterr().out
    events = list(GitEventStore(fork).read("rtb-quality"))
    steps = [(e.type, e.data.get("version") or e.data.get("from_version"), e.data.get("stage"))
             for e in events if e.type in ("Promoted", "RolledBack", "PromotionProposed")]
    assert steps == [
        ("PromotionProposed", "v1", "shadow"),
        ("Promoted", "v1", "shadow"),
        ("Promoted", "v1", "canary"),
        ("Promoted", "v1", "production"),
        ("PromotionProposed", "v2", "shadow"),
        ("Promoted", "v2", "shadow"),
        ("Promoted", "v2", "canary"),
        ("RolledBack", "v2", "canary"),
    ], steps
    kinds = [e.type for e in events]
    assert kinds[:2] == ["EvalStarted", "EvalCompleted"]  # the zero-shot run, reused by the loop
    promoted = [e for e in events if e.type == "Promoted"]
    # The first version left shadow on replayed traffic (nothing in production to mirror).
    assert promoted[1].data["bootstrap"]["rule"] == "replay"
    assert promoted[1].data["bootstrap"]["requests"] >= 50
    assert promoted[0].data.get("bootstrap") is None and promoted[3].data.get("bootstrap") is None
    assert promoted[2].data["approval"]["approvers"] == ["Dana Reviewer <dana@example.invalid>"]
    rolled = next(e for e in events if e.type == "RolledBack")
    assert rolled.actor == "reconcile" and rolled.data["to_version"] is None
    assert rolled.data["metric"] == "score_mean" and rolled.data["value"] < 0.8
    # Production is where the rollback left it; the release matches the log; tree clean.
    state = Modelsmith.open(fork, fetch=False).fleet().specialists["rtb-quality"]
    assert state.holder("production").version == "v1" and state.holder("canary") is None
    assert git(fork, "status", "--porcelain") == ""
    assert "canary: null" in (fork / "specialists" / "rtb-quality.yaml").read_text()
    assert "ok:" in printed and "verifying the event log" in printed
    # The canary's share shows in the replay's counts: both versions answered.
    assert "v2" in printed and "canary" in printed
