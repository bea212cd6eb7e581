"""A clone continues the shared event log instead of starting a second one.

Real git: a bare origin holding a fork and its log, ``git clone`` of it (which makes no
local ``modelsmith/events``). Commands that read or append the log first bring origin's in:
the local branch is created at origin's tip, or fast-forwarded to it; diverged logs are left
alone and named; offline, the local log is used with one warning; with no origin nothing
runs at all."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import clone, git, published
from evaluations import evaluated
from modelsmith.app import Modelsmith
from modelsmith.cli import cli
from modelsmith.events.gitstore import EVENTS_REF, GitEventStore, parse_trailers
from modelsmith.events.types import CandidateRegistered, Event, Lineage, MetricsObserved

STREAM = "rtb-quality"
SHARED = 3  # events origin's log starts with


def observed(actor: str) -> Event:
    now = datetime.now(UTC)
    return Event.new(MetricsObserved(version="v1", stage="shadow", window_start=now,
                                     window_end=now, requests=1,
                                     metrics={"format_rate": 1.0}), actor=actor)


@pytest.fixture
def origin(demo_repo, tmp_path, monkeypatch):
    """A bare origin holding the fork on ``main`` and a log of three events."""
    monkeypatch.delenv("MODELSMITH_NO_FETCH", raising=False)
    git(demo_repo, "checkout", "-q", "-b", "main")
    git(demo_repo, "add", "-A")
    git(demo_repo, "commit", "-q", "-m", "the fork")
    registered = Event.new(CandidateRegistered(
        version="v1", lineage=Lineage(base_model="tiny-test")), actor="test")
    GitEventStore(demo_repo).append(STREAM, [registered, observed("a"), observed("b")], 0)
    bare = tmp_path / "origin.git"
    return published(demo_repo, bare)


def local_tip(repo: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "-q", EVENTS_REF],
                          capture_output=True, text=True)
    return done.stdout.strip() or None


def modelsmith(repo: Path, *args: str):
    """The CLI in-process; the result has ``stdout`` and ``stderr`` apart."""
    result = CliRunner().invoke(cli, ["-C", str(repo), *args])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def status(repo: Path, *args: str) -> tuple[dict, list[str]]:
    result = modelsmith(repo, *args, "status", "--json")
    return json.loads(result.stdout), result.stderr.splitlines()


@pytest.fixture
def fetches(monkeypatch):
    """Every ``git fetch`` run from here on."""
    import modelsmith.gitops.sync as sync_module

    seen: list[list[str]] = []
    real = sync_module.subprocess.Popen  # subprocess.run starts its process through it too

    def popen(args, *rest, **kw):
        if "fetch" in args:
            seen.append(list(args))
        return real(args, *rest, **kw)

    monkeypatch.setattr(sync_module.subprocess, "Popen", popen)
    return seen


def test_a_clone_shows_the_shared_log(origin, tmp_path):
    mine = clone(origin, tmp_path / "mine")
    assert local_tip(mine) is None  # what `git clone` leaves
    data, notes = status(mine)
    assert data["events"] == SHARED
    assert notes == [f"event log: modelsmith/events created from origin's ({SHARED} events)"]
    assert local_tip(mine) == local_tip(origin)
    assert data["origin"] == {"state": "created", "local": local_tip(origin),
                              "remote": local_tip(origin), "new_events": SHARED,
                              "offline": None}
    # In step now: a second read says nothing.
    again, notes = status(mine)
    assert (again["events"], again["origin"]["state"], notes) == (SHARED, "same", [])


def test_an_event_appended_in_a_clone_continues_the_shared_log(origin, tmp_path):
    mine = clone(origin, tmp_path / "mine")
    shared_tip = local_tip(origin)
    with Modelsmith.open(mine) as app:  # what `modelsmith eval` records through
        store = app.store
        (recorded,) = store.append(STREAM, [evaluated(mine, "v1")], store.last_seq(STREAM))
    assert (recorded.seq, recorded.position) == (SHARED + 1, SHARED + 1)
    commit = git(mine, "log", "-1", "--format=%B", EVENTS_REF).rstrip("\n")
    assert parse_trailers(commit)["Previous"] == shared_tip
    # Shared: origin's log is one linear log with contiguous seqs, nothing forked.
    assert "event log pushed to origin" in modelsmith(mine, "sync").stdout
    reader = clone(origin, tmp_path / "reader")
    assert status(reader)[0]["events"] == SHARED + 1
    assert [e.seq for e in GitEventStore(reader).read(STREAM)] == [1, 2, 3, 4]
    assert "ok" in modelsmith(reader, "verify").stdout.lower()


def test_a_clone_whose_origin_gained_events_fast_forwards(origin, tmp_path):
    mine = clone(origin, tmp_path / "mine")
    status(mine)
    upstream = GitEventStore(origin)  # someone else pushed two events
    upstream.append(STREAM, [observed("c"), observed("d")], SHARED)
    data, notes = status(mine)
    assert data["events"] == SHARED + 2
    assert notes == ["event log: fast-forwarded to origin's (2 new events)"]
    assert local_tip(mine) == upstream.tip()


def test_diverged_logs_are_named_and_nothing_is_lost(origin, tmp_path):
    a, b = clone(origin, tmp_path / "a"), clone(origin, tmp_path / "b")
    status(a), status(b)
    with Modelsmith.open(a) as app:
        app.store.append(STREAM, [observed("from-a")], SHARED)
    modelsmith(a, "sync")
    store_b = GitEventStore(b)
    store_b.append(STREAM, [observed("from-b")], SHARED)
    before = store_b.tip()
    data, notes = status(b)
    assert notes == [
        "warning: the local event log and origin's diverged (1 event only here, 1 only on "
        "origin): run `modelsmith reconcile --push` (or `modelsmith sync`) to replay yours "
        "onto origin's; until then this command sees only the local log"]
    assert data["events"] == SHARED + 1 and local_tip(b) == before  # left as it was
    assert data["origin"]["state"] == "diverged"
    # The sync the message names replays b's event onto origin's: both are kept.
    assert "replayed 1 local event(s)" in modelsmith(b, "sync").stdout
    actors = [e.actor for e in GitEventStore(origin).read(STREAM)][SHARED:]
    assert actors == ["from-a", "from-b"]
    assert status(a)[0]["events"] == SHARED + 2


def test_offline_the_local_log_is_used_with_one_warning(origin, tmp_path):
    mine = clone(origin, tmp_path / "mine")
    status(mine)
    shutil.rmtree(origin)
    data, notes = status(mine)
    assert data["events"] == SHARED and data["origin"]["offline"]
    (note,) = notes
    assert note.startswith("warning: could not fetch the event log from origin (")
    assert note.endswith("working from the local copy (set MODELSMITH_NO_FETCH=1 to skip "
                         "the fetch)")
    # A fresh clone's own copy of origin's log still counts while offline.
    assert local_tip(mine) is not None


def test_without_origin_nothing_runs(demo_repo, fetches):
    GitEventStore(demo_repo).append(STREAM, [observed("a")], 0)
    data, notes = status(demo_repo)
    assert (data["events"], data["origin"], notes, fetches) == (1, None, [], [])


def test_no_fetch_uses_what_the_clone_already_knows(origin, tmp_path, fetches, monkeypatch):
    mine = clone(origin, tmp_path / "mine")
    GitEventStore(origin).append(STREAM, [observed("c")], SHARED)  # after the clone
    monkeypatch.setenv("MODELSMITH_NO_FETCH", "1")
    data, notes = status(mine)
    assert fetches == [] and data["events"] == SHARED  # origin's tip as cloned
    assert notes == [f"event log: modelsmith/events created from origin's ({SHARED} events)"]
    monkeypatch.delenv("MODELSMITH_NO_FETCH")
    assert status(mine, "--no-fetch")[0]["events"] == SHARED and fetches == []
    assert status(mine)[0]["events"] == SHARED + 1 and len(fetches) == 1


def test_reconcile_push_fetches_once(origin, tmp_path, fetches):
    mine = clone(origin, tmp_path / "mine")
    out = json.loads(modelsmith(mine, "reconcile", "--push", "--json").stdout)
    assert out["sync"]["pushed"] is False and local_tip(mine) == local_tip(origin)
    assert len(fetches) == 2  # the sync before deciding and the one after, no third


def test_an_origin_that_never_answers_costs_the_timeout_once(origin, tmp_path, silent_port,
                                                             monkeypatch):
    import time

    mine = clone(origin, tmp_path / "mine")
    status(mine)
    git(mine, "remote", "set-url", "origin", f"http://127.0.0.1:{silent_port}/team.git")
    monkeypatch.setenv("MODELSMITH_FETCH_TIMEOUT", "1")
    start = time.monotonic()
    data, notes = status(mine)
    assert time.monotonic() - start < 10
    assert data["events"] == SHARED
    assert notes == ["warning: could not fetch the event log from origin (no answer in 1 s); "
                     "working from the local copy (set MODELSMITH_NO_FETCH=1 to skip the "
                     "fetch)"]
