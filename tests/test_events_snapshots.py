"""State snapshots in the event log: exact round trip, cold fold == full fold, and every
snapshot that does not match its log is ignored on reads and named by ``verify``."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pygit2
import pytest

from modelsmith.events import Event
from modelsmith.events import snapshot as snap
from modelsmith.events.gitstore import EVENTS_REF, GitEventStore
from modelsmith.events.projection import FleetState, fleet_status, fold
from modelsmith.events.types import (
    CandidateRegistered,
    EvalCompleted,
    Lineage,
    MetricsObserved,
    Promoted,
    PromotionRejected,
    RolledBack,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from events import make_events

EVERY = 30
TOTAL, STREAMS = 1500, 15


def _append_all(store: GitEventStore, batches) -> None:
    seqs: dict[str, int] = {}
    for stream, events in batches:
        seqs[stream] = store.append(stream, events, seqs.get(stream, 0))[-1].seq


def _full(store: GitEventStore) -> FleetState:
    state = FleetState()
    for event in store.read():
        state.apply(event)
    return state


def _same(a: FleetState, b: FleetState) -> None:
    assert list(a.specialists) == list(b.specialists)
    assert (a.position, a.last_event_id) == (b.position, b.last_event_id)
    for name, s in a.specialists.items():
        assert s == b.specialists[name]
        assert snap.encode_specialist(s) == snap.encode_specialist(b.specialists[name])
        assert [x.since.isoformat() for x in s.history] == \
            [x.since.isoformat() for x in b.specialists[name].history]


def _rich_events() -> list[tuple[str, list[Event]]]:
    """Every kind of state the fold keeps, with odd values: offsets, None, NaN-free
    floats of every size, rollbacks, rejections, model evaluations, an invalid payload."""
    paris = timezone(timedelta(hours=2))
    t0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=paris)
    lin = Lineage(base_model="b", parent=None, dataset_hash="d", duration_s=1e-300,
                  trainer_versions={"trl": "0.1"}, seen=["a", "b"])
    a = [
        Event.new(CandidateRegistered(version="v1", lineage=lin), actor="loop", at=t0),
        Event.new(EvalCompleted(version="v1", model="v1", suite="s", suite_hash="h",
                                run_id="r1", composite=0.1 + 0.2, heldout=None,
                                decision=1.7976931348623157e308, decision_metric="dev",
                                weights_hash="w", limit=3), actor="loop", at=t0),
        Event.new(EvalCompleted(model="base", suite="s", suite_hash="h", run_id="r0",
                                composite=5e-324), actor="human", at=t0,
                  cause="pr#1"),
        Event.new(Promoted(version="v1", stage="canary", traffic=0.25), actor="reconciler",
                  at=t0 + timedelta(seconds=1), cause="c" * 40),
        Event.new(MetricsObserved(version="v1", stage="canary", window_start=t0,
                                  window_end=t0, requests=7, bootstrap=2,
                                  metrics={"score_mean": -0.0, "p": 3.0}), actor="r"),
        Event.new(PromotionRejected(version="v1", stage="production", gate="g",
                                    reason="too low ünïcode"), actor="reconciler"),
        Event.new(RolledBack(stage="canary", from_version="v1", reason="metric",
                             metric="score_mean", value=0.1, threshold=0.2), actor="r"),
        Event.new(Promoted(version="v1", stage="production"), actor="reconciler",
                  at=datetime(2026, 3, 2, tzinfo=UTC)),
    ]
    return [("alpha", a[:4]), ("beta", [a[2].model_copy(update={"id": "b" * 32})]),
            ("alpha", a[4:])]


# ------------------------------------------------------------------ round trip


def test_round_trip_is_exact_for_every_kind_of_state(tmp_path):
    store = GitEventStore(pygit2.init_repository(str(tmp_path / "r")), snapshot_every=0)
    _append_all(store, _rich_events())
    state = _full(store)
    # an event whose payload no longer fits its schema (counted, never fatal)
    bad = Event.new(Promoted(version="v2", stage="shadow"), actor="x")
    bad = bad.model_copy(update={"data": {"version": "v2", "stage": "shadow", "junk": 1}})
    state.apply(bad.recorded("beta", 2, state.position + 1))
    assert state.specialists["beta"].invalid == 1
    for name, s in state.specialists.items():
        back = snap.decode_specialist(snap.encode_specialist(s), name)
        assert back == s
        assert snap.encode_specialist(back) == snap.encode_specialist(s)
        # stages hold the very assignment objects of the history, as the fold's do
        for stage, held in back.stages.items():
            assert any(held is h for h in back.history), stage
        assert [h.since.utcoffset() for h in back.history] == \
            [h.since.utcoffset() for h in s.history]
        assert back.to_dict() == s.to_dict()
        assert list(back.candidates) == list(s.candidates)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_round_trip_over_a_random_synthetic_log(tmp_path, seed):
    """Property-style: the bench's generator with random sizes, folded, then each
    stream's state encoded and decoded, and the decoded state folded further."""
    rng = random.Random(seed)
    total, streams = rng.randint(50, 400), rng.randint(1, 12)
    batches = make_events(total, streams, seed=seed)
    state = FleetState()
    for position, event in enumerate((e for _, b in batches for e in b), start=1):
        state.apply(event.recorded(event.stream or "x", 1, position))
        if rng.random() < 0.05:  # a snapshot here, then folding goes on from the copy
            copy = FleetState(position=state.position, last_event_id=state.last_event_id)
            for name, s in state.specialists.items():
                copy.specialists[name] = snap.decode_specialist(snap.encode_specialist(s),
                                                                name)
            _same(copy, state)
            state = copy


# ------------------------------------------------------------------ the git log


@pytest.fixture(scope="module")
def built_log(tmp_path_factory):
    """The log is built once (TOTAL events over STREAMS streams), packed, copied per test."""
    where = tmp_path_factory.mktemp("log") / "repo"
    repo = pygit2.init_repository(str(where))
    _append_all(GitEventStore(repo, snapshot_every=EVERY), make_events(TOTAL, STREAMS))
    subprocess.run(["git", "-C", str(where), "gc", "-q"], check=True)
    shutil.rmtree(where / ".git" / "modelsmith", ignore_errors=True)
    return where


@pytest.fixture(scope="module")
def expected(built_log) -> FleetState:
    """The whole fold of the built log (a forged snapshot changes no event)."""
    return _full(GitEventStore(str(built_log)))


@pytest.fixture
def log(built_log, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(built_log, copy, symlinks=True)
    return pygit2.Repository(str(copy))


def _snapshot_commits(repo) -> list[pygit2.Commit]:
    out = []
    commit = repo[repo.references[EVENTS_REF].target]
    while True:
        if snap.SNAPSHOT_TREE in commit.tree:
            out.append(commit)
        if not commit.parents:
            return out
        commit = commit.parents[0]


def test_appender_writes_snapshots_and_a_cold_fold_equals_the_full_fold(log):
    repo = log
    commits = _snapshot_commits(repo)
    assert len(commits) == TOTAL // EVERY
    store = GitEventStore(repo)
    cold = store.fold_cold()
    assert cold is not None and cold.tip == store.tip()
    assert not store._index_loaded  # no full index was built for it
    _same(cold, _full(GitEventStore(repo)))
    # evidence() never shows the snapshot; git log shows it as a trailer
    newest = commits[0]
    event_id = newest.message.split("Event-Id: ")[1].split("\n")[0]
    assert snap.SNAPSHOT_TREE not in store.evidence(event_id)
    assert f"Snapshot: {newest.tree[snap.SNAPSHOT_TREE].id}" in newest.message
    report = GitEventStore(repo).verify()
    assert report.ok, report.problems[:3]
    assert report.snapshots == len(commits)


def test_fold_and_status_use_the_snapshot_and_keep_the_warm_cache(log, tmp_path):
    repo = log
    full = _full(GitEventStore(repo))
    cache = tmp_path / "cache"
    state = fold(GitEventStore(repo), cache / "fleet.pickle")
    _same(state, full)
    assert (cache / "fleet.pickle").exists()
    assert fleet_status(GitEventStore(repo), cache)["events"] == TOTAL
    # appends after the cache: the next fold walks back to the cached tip only
    store = GitEventStore(repo, snapshot_every=EVERY)
    store.append("spec-0000", [Event.new(Promoted(version="v1", stage="shadow"),
                                         actor="t")], store.last_seq("spec-0000"))
    again = fold(GitEventStore(repo), cache / "fleet.pickle")
    _same(again, _full(GitEventStore(repo)))


def test_appends_from_a_fresh_process_continue_the_snapshots(log):
    repo = log
    for _ in range(3):  # each a fresh store, as a CI run would be
        store = GitEventStore(repo, snapshot_every=EVERY)
        _append_all_from(store, "spec-0001", 30)
    assert len(_snapshot_commits(repo)) == (TOTAL + 90) // EVERY
    _same(GitEventStore(repo).fold_cold(), _full(GitEventStore(repo)))
    assert GitEventStore(repo).verify().ok


def _append_all_from(store: GitEventStore, stream: str, count: int) -> None:
    for _ in range(count):
        store.append(stream, [Event.new(Promoted(version="v1", stage="shadow"), actor="t")],
                     store.last_seq(stream))


def test_an_old_log_without_snapshots_folds_as_before_and_gains_them(tmp_path):
    repo = pygit2.init_repository(str(tmp_path / "old"))
    _append_all(GitEventStore(repo, snapshot_every=0), make_events(600, 6))
    assert not _snapshot_commits(repo)
    store = GitEventStore(repo)
    assert store.fold_cold() is not None  # short: the whole log is within reach
    assert GitEventStore(repo, snapshot_every=100).fold_cold() is not None
    state = fold(GitEventStore(repo))
    _same(state, _full(GitEventStore(repo)))
    grown = GitEventStore(repo, snapshot_every=100)
    _append_all_from(grown, "spec-0002", 100)
    assert len(_snapshot_commits(repo)) == 1
    _same(GitEventStore(repo).fold_cold(), _full(GitEventStore(repo)))
    assert GitEventStore(repo).verify().ok


def test_a_log_too_long_for_the_walk_and_without_snapshots_is_left_to_the_full_fold(tmp_path):
    repo = pygit2.init_repository(str(tmp_path / "old"))
    _append_all(GitEventStore(repo, snapshot_every=0), make_events(2100, 10))
    assert GitEventStore(repo, snapshot_every=0).fold_cold() is None
    _same(fold(GitEventStore(repo)), _full(GitEventStore(repo)))


# ------------------------------------------------------------------ forged snapshots


def _rewrite_snapshot(repo, commit: pygit2.Commit, edit_blobs, *, fix_trailer=True) -> str:
    """Build a commit like ``commit`` whose snapshot tree is edited (name -> bytes or
    None to delete), replay the rest of the log on it and move the branch: a forged
    history. Returns the forged commit's id."""
    old_tree = repo[commit.tree[snap.SNAPSHOT_TREE].id]
    builder = repo.TreeBuilder(old_tree)
    for name, data in edit_blobs.items():
        if data is None:
            builder.remove(name)
        else:
            builder.insert(name, repo.create_blob(data), pygit2.enums.FileMode.BLOB)
    new_snap = builder.write()
    outer = repo.TreeBuilder(commit.tree)
    outer.insert(snap.SNAPSHOT_TREE, new_snap, pygit2.enums.FileMode.TREE)
    message = commit.message
    if fix_trailer:
        message = message.replace(str(old_tree.id), str(new_snap))
    forged = repo.create_commit(None, commit.author, commit.committer, message, outer.write(),
                                list(commit.parent_ids))
    chain, c = [], repo[repo.references[EVENTS_REF].target]
    while c.id != commit.id:
        chain.append(c)
        c = c.parents[0]
    parent = forged
    for c in reversed(chain):
        msg = c.message.replace(f"Previous: {commit.id}", f"Previous: {forged}")
        parent = repo.create_commit(None, c.author, c.committer, msg, c.tree_id, [parent])
    repo.references.create(EVENTS_REF, parent, force=True)
    return str(forged)


def _newest_stream_blob(commit: pygit2.Commit) -> str:
    """The first stream file of the commit's snapshot."""
    tree = commit.tree[snap.SNAPSHOT_TREE].peel(pygit2.Tree)
    return next(e.name for e in tree if not e.name.startswith("_"))


def test_a_tampered_snapshot_fails_verify_naming_its_commit(log):
    """A snapshot that is well formed and bound to its commit, but says another
    production holder: the cold read cannot tell, verify names it."""
    repo = log
    newest = _snapshot_commits(repo)[0]
    name = _newest_stream_blob(newest)
    blob = repo[newest.tree[snap.SNAPSHOT_TREE].peel(pygit2.Tree)[name].id].data
    doc = json.loads(blob)
    doc["candidates"]["event_id"] = ["f" * 32 for _ in doc["candidates"]["event_id"]]
    forged = _rewrite_snapshot(repo, newest, {name: json.dumps(doc).encode()})
    report = GitEventStore(repo).verify()
    assert not report.ok
    hits = [p for p in report.problems if p.where == forged and "snapshot" in p.message]
    assert hits and name[:-5] in hits[0].message and "candidates" in hits[0].message
    assert hits[0].position is not None and hits[0].position % EVERY == 0


def test_a_snapshot_bound_to_another_commit_is_ignored_with_one_warning(log, capsys,
                                                                         expected):
    repo = log
    newest = _snapshot_commits(repo)[0]
    meta = json.loads(repo[newest.tree[snap.SNAPSHOT_TREE].peel(pygit2.Tree)[
        snap.META_NAME].id].data)
    meta["event_id"] = "0" * 32
    forged = _rewrite_snapshot(repo, newest, {snap.META_NAME: json.dumps(meta).encode()})
    snap._warned.clear()
    assert GitEventStore(repo).fold_cold() is None
    _same(fold(GitEventStore(repo)), expected)
    fold(GitEventStore(repo))
    err = capsys.readouterr().err
    assert err.count("warning: ignoring the state snapshot") == 1
    assert forged in err and "modelsmith verify" in err and "event id" in err
    report = GitEventStore(repo).verify()
    assert any(p.where == forged and "event id" in p.message for p in report.problems)


def test_a_snapshot_whose_trailer_names_another_tree_is_ignored(log, capsys):
    repo = log
    newest = _snapshot_commits(repo)[0]
    name = _newest_stream_blob(newest)
    forged = _rewrite_snapshot(repo, newest, {name: None}, fix_trailer=False)
    snap._warned.clear()
    _same(fold(GitEventStore(repo)), _full(GitEventStore(repo)))
    assert forged in capsys.readouterr().err
    assert not GitEventStore(repo).verify().ok


def test_snapshots_off_folds_the_whole_log(log, monkeypatch, capsys):
    repo = log
    newest = _snapshot_commits(repo)[0]
    meta = json.loads(repo[newest.tree[snap.SNAPSHOT_TREE].peel(pygit2.Tree)[
        snap.META_NAME].id].data)
    meta["position"] += 1
    _rewrite_snapshot(repo, newest, {snap.META_NAME: json.dumps(meta).encode()})
    monkeypatch.setenv(snap.MODE_ENV, "off")
    snap._warned.clear()
    _same(fold(GitEventStore(repo)), _full(GitEventStore(repo)))
    assert "warning" not in capsys.readouterr().err


HOSTILE = {
    "garbage": b"\x00\xff not json",
    "empty": b"",
    "array": b"[1, 2, 3]",
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "huge int": None,  # filled in below: events as a 5,000-digit number
    "huge float": None,  # composite 1e999 (inf) where a float is due: decodes, verify fails
    "wrong type": None,  # last_seq as a string
    "missing field": None,
    "extra field": None,
    "bad time": None,
    "naive time": None,
    "bad stage index": None,
    "lineage wrong type": None,
    "short column": None,
}


def _hostile_blob(kind: str, doc: dict) -> bytes:
    if HOSTILE[kind] is not None:
        return HOSTILE[kind]
    doc = json.loads(json.dumps(doc))
    if kind == "huge int":
        return json.dumps(doc).replace(f'"events":{doc["events"]}',
                                       '"events":' + "9" * 5000).replace(
            f'"events": {doc["events"]}', '"events": ' + "9" * 5000).encode()
    if kind == "huge float":
        return json.dumps(doc).replace('"composite": [', '"composite": [1e999, ').encode() \
            if doc["candidate_evals"]["composite"] else b"{}"
    if kind == "wrong type":
        doc["last_seq"] = str(doc["last_seq"])
    elif kind == "missing field":
        del doc["history"]
    elif kind == "extra field":
        doc["pickle"] = "cos\nsystem\n"
    elif kind == "bad time":
        doc["history"]["since"][0] = "yesterday"
    elif kind == "naive time":
        doc["history"]["since"][0] = "2026-01-01T00:00:00"
    elif kind == "bad stage index":
        doc["stages"] = {"production": 10**6}
    elif kind == "lineage wrong type":
        doc["candidates"]["lineage"][0] = {"base_model": 7}
    elif kind == "short column":
        doc["history"]["version"] = doc["history"]["version"][:-1]
    return json.dumps(doc).encode()


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_stream_blob_never_crashes_and_is_reported(log, kind, capsys, expected):
    repo = log
    newest = _snapshot_commits(repo)[0]
    name = _newest_stream_blob(newest)
    tree = newest.tree[snap.SNAPSHOT_TREE].peel(pygit2.Tree)
    doc = json.loads(repo[tree[name].id].data)
    forged = _rewrite_snapshot(repo, newest, {name: _hostile_blob(kind, doc)})
    snap._warned.clear()
    _same(fold(GitEventStore(repo)), expected)  # ignored (or, for inf, caught by verify)
    err = capsys.readouterr().err
    if kind != "huge float":
        assert forged in err and "modelsmith verify" in err
    report = GitEventStore(repo).verify()
    assert any(p.where == forged for p in report.problems), report.problems[:3]


@pytest.mark.parametrize("meta", [
    {"format": 2}, {"format": "1"}, {"format": True}, [], "x", None,
    {"format": 1, "projection": 6, "position": -1},
    {"format": 1, "projection": 6, "position": 10**400},
])
def test_hostile_meta_never_crashes(meta, log, capsys, expected):
    repo = log
    newest = _snapshot_commits(repo)[0]
    huge = b'{"format":1,"projection":6,"position":' + b"9" * 5000 + b"}"
    blob = huge if isinstance(meta, dict) and meta.get("position") == 10**400 \
        else json.dumps(meta).encode()
    forged = _rewrite_snapshot(repo, newest, {snap.META_NAME: blob})
    snap._warned.clear()
    _same(fold(GitEventStore(repo)), expected)
    assert forged in capsys.readouterr().err
    report = GitEventStore(repo).verify()
    assert any(p.where == forged and "snapshot" in p.message for p in report.problems)


def test_bad_interval_setting_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(snap.EVERY_ENV, "often")
    with pytest.raises(snap.SnapshotError, match="MODELSMITH_SNAPSHOT_EVERY"):
        GitEventStore(pygit2.init_repository(str(tmp_path / "r")))
    monkeypatch.setenv(snap.EVERY_ENV, "25")
    assert GitEventStore(str(tmp_path / "r")).snapshot_every == 25


def test_modelsmith_verify_names_a_tampered_snapshot_and_exits_non_zero(log, monkeypatch):
    from click.testing import CliRunner

    from modelsmith.cli import cli

    monkeypatch.setenv("MODELSMITH_NO_FETCH", "1")
    repo = log
    root = Path(repo.path).parent
    clean = CliRunner().invoke(cli, ["-C", str(root), "verify"], catch_exceptions=False)
    assert clean.exit_code == 0 and f"{TOTAL // EVERY} state snapshots match" in clean.output
    newest = _snapshot_commits(repo)[0]
    name = _newest_stream_blob(newest)
    doc = json.loads(repo[newest.tree[snap.SNAPSHOT_TREE].peel(pygit2.Tree)[name].id].data)
    doc["history"]["version"] = ["v999"] * len(doc["history"]["version"])
    forged = _rewrite_snapshot(repo, newest, {name: json.dumps(doc).encode()})
    result = CliRunner().invoke(cli, ["-C", str(root), "verify"], catch_exceptions=False)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert forged in result.output and "snapshot" in result.output


def test_cold_status_reads_the_status_rows_and_decodes_only_touched_streams(log, tmp_path,
                                                                            monkeypatch):
    repo = log
    store = GitEventStore(repo, snapshot_every=EVERY)
    _append_all_from(store, "spec-0003", 7)  # a tail after the newest snapshot
    expected = _full(GitEventStore(repo)).to_dict()
    decoded: list[str] = []
    real = snap.decode_specialist
    monkeypatch.setattr(snap, "decode_specialist",
                        lambda data, name: decoded.append(name) or real(data, name))
    summary = fleet_status(GitEventStore(repo), tmp_path / "fresh")
    assert decoded == ["spec-0003"]
    assert summary["events"] == expected["events"] == TOTAL + 7
    assert summary["specialists"] == expected["specialists"]
    assert summary["tip"] == GitEventStore(repo).tip()


@pytest.mark.parametrize("edit", ["garbage", "short", "wrong type", "does not add up",
                                  "disagrees with state"])
def test_hostile_status_rows_are_ignored_and_fail_verify(log, tmp_path, edit, capsys):
    repo = log
    store = GitEventStore(repo, snapshot_every=EVERY)
    _append_all_from(store, "spec-0004", 2)
    newest = _snapshot_commits(repo)[0]
    tree = newest.tree[snap.SNAPSHOT_TREE].peel(pygit2.Tree)
    rows = json.loads(repo[tree[snap.STATUS_NAME].id].data)
    index = next(i for i, r in enumerate(rows) if r["name"] == "spec-0004")
    if edit == "garbage":
        blob = b"\xff{"
    else:
        if edit == "short":
            rows = rows[:-1]
        elif edit == "wrong type":
            rows[0]["candidates"] = "many"
        elif edit == "does not add up":
            rows[0]["events"] += 1
            rows[0]["last_seq"] += 1
        else:  # the row of a stream the tail touches, against its own state
            rows[index]["rejections"] += 5
        blob = json.dumps(rows).encode()
    forged = _rewrite_snapshot(repo, newest, {snap.STATUS_NAME: blob})
    snap._warned.clear()
    summary = fleet_status(GitEventStore(repo), tmp_path / "fresh")
    assert summary["specialists"] == _full(GitEventStore(repo)).to_dict()["specialists"]
    assert forged in capsys.readouterr().err
    report = GitEventStore(repo).verify()
    assert any(p.where == forged and "status" in p.message for p in report.problems)
