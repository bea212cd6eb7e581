"""One contract for every EventStore: the in-memory store and the git store both pass it."""

from __future__ import annotations

import multiprocessing
import subprocess
import threading
from pathlib import Path

import pygit2
import pytest

from modelsmith.events import (
    ConcurrencyError,
    Event,
    EventConflictError,
    InvalidEventError,
    MemoryEventStore,
    UnknownTipError,
)
from modelsmith.events.gitstore import EVENTS_REF, GitEventStore
from modelsmith.events.store import Recorder
from modelsmith.events.types import EvalCompleted, EvalStarted, Promoted


def ev(composite: float = 0.5, version: str = "v1", **kw) -> Event:
    payload = EvalCompleted(
        version=version, model="tiny-test", suite="rtb", suite_hash="abc", run_id="r1",
        composite=composite,
    )
    return Event.new(payload, actor=kw.pop("actor", "loop"), **kw)


class EventStoreContract:
    """Subclasses provide ``make_store``; every test here holds for every store."""

    def make_store(self, tmp_path: Path):
        raise NotImplementedError

    @pytest.fixture
    def store(self, tmp_path):
        return self.make_store(tmp_path)

    def test_empty_log(self, store):
        assert store.tip() is None
        assert list(store.read()) == []
        assert list(store.read("rtb")) == []
        assert store.last_seq("rtb") == 0
        assert store.get("0123456789abcdef") is None

    def test_a_replayed_step_adopts_what_it_recorded(self, store):
        first = Recorder(store, "rtb", actor="iterate/l1/1/eval", scope="iterate/l1/1/eval")
        started = first.record(EvalStarted(model="m", suite="s", suite_hash="h", run_id="r1"))
        # The step is killed and runs again: other run id, same step.
        again = Recorder(store, "rtb", actor="iterate/l1/1/eval", scope="iterate/l1/1/eval")
        assert again.recorded("EvalStarted").data["run_id"] == "r1"
        adopted = again.record(EvalStarted(model="m", suite="s", suite_hash="h", run_id="r2"))
        assert adopted.id == started.id and adopted.data["run_id"] == "r1"
        assert again.recorded("EvalCompleted") is None
        other = Recorder(store, "rtb", actor="iterate/l1/2/eval", scope="iterate/l1/2/eval")
        assert other.record(EvalStarted(model="m", suite="s", suite_hash="h",
                                        run_id="r3")).id != started.id
        by_hand = Recorder(store, "rtb", actor="cli")
        assert by_hand.recorded("EvalStarted") is None
        by_hand.record(EvalStarted(model="m", suite="s", suite_hash="h", run_id="r4"))
        by_hand.record(EvalStarted(model="m", suite="s", suite_hash="h", run_id="r4"))
        assert [e.data["run_id"] for e in store.read("rtb")] == ["r1", "r3", "r4", "r4"]

    def test_append_assigns_contiguous_seqs_and_positions(self, store):
        out = store.append("rtb", [ev(0.1), ev(0.2)], expected_seq=0)
        assert [(e.stream, e.seq, e.position) for e in out] == [("rtb", 1, 1), ("rtb", 2, 2)]
        out = store.append("fleet", [ev(0.3)], expected_seq=0)
        assert (out[0].seq, out[0].position) == (1, 3)
        out = store.append("rtb", [ev(0.4)], expected_seq=2)
        assert (out[0].seq, out[0].position) == (3, 4)
        assert store.last_seq("rtb") == 3
        assert [e.data["composite"] for e in store.read()] == [0.1, 0.2, 0.3, 0.4]
        assert [e.seq for e in store.read("rtb")] == [1, 2, 3]

    def test_moved_stream_raises_concurrency_error_and_writes_nothing(self, store):
        store.append("rtb", [ev()], 0)
        tip = store.tip()
        with pytest.raises(ConcurrencyError) as info:
            store.append("rtb", [ev()], 0)
        assert (info.value.expected, info.value.actual) == (0, 1)
        with pytest.raises(ConcurrencyError):
            store.append("rtb", [ev()], 5)
        assert store.tip() == tip
        assert len(list(store.read())) == 1

    def test_other_streams_do_not_conflict(self, store):
        store.append("a", [ev()], 0)
        store.append("b", [ev()], 0)
        store.append("a", [ev()], 1)
        assert store.last_seq("a") == 2 and store.last_seq("b") == 1

    def test_append_is_idempotent_by_event_id(self, store):
        batch = [ev(0.1), ev(0.2)]
        first = store.append("rtb", batch, 0)
        again = store.append("rtb", batch, 0)  # a retry after a crash: the stream moved
        assert [e.id for e in again] == [e.id for e in first]
        assert [e.seq for e in again] == [1, 2]
        assert len(list(store.read())) == 2

    def test_same_id_other_content_is_a_conflict(self, store):
        event = ev(0.1)
        store.append("rtb", [event], 0)
        other = ev(0.9, id=event.id)
        with pytest.raises(EventConflictError, match="other content"):
            store.append("rtb", [other], 1)

    def test_partly_recorded_batch_is_a_conflict(self, store):
        a = ev()
        store.append("rtb", [a], 0)
        with pytest.raises(EventConflictError, match="whole or not at all"):
            store.append("rtb", [a, ev()], 1)
        assert store.last_seq("rtb") == 1

    def test_invalid_input_is_rejected_before_writing(self, store):
        bad = Event(id="badbadbad1", type="Promoted", at=ev().at, actor="x",
                    data={"version": "v1", "stage": "nowhere"})
        with pytest.raises(InvalidEventError, match="stage"):
            store.append("rtb", [bad], 0)
        unknown = Event(id="badbadbad2", type="NoSuchEvent", at=ev().at, actor="x")
        with pytest.raises(InvalidEventError, match="unknown event type"):
            store.append("rtb", [unknown], 0)
        with pytest.raises(InvalidEventError, match="stream"):
            store.append("../etc", [ev()], 0)
        with pytest.raises(InvalidEventError, match="twice"):
            e = ev()
            store.append("rtb", [e, e], 0)
        with pytest.raises(InvalidEventError):
            store.append("rtb", [], 0)
        assert store.tip() is None

    def test_read_after(self, store):
        store.append("a", [ev(0.1), ev(0.2)], 0)
        store.append("b", [ev(0.3)], 0)
        store.append("a", [ev(0.4)], 2)
        assert [e.data["composite"] for e in store.read("a", after=1)] == [0.2, 0.4]
        assert [e.data["composite"] for e in store.read(after=2)] == [0.3, 0.4]
        assert list(store.read(after=4)) == []

    def test_read_since_tip(self, store):
        store.append("a", [ev(0.1)], 0)
        tip = store.tip()
        store.append("a", [ev(0.2), ev(0.3)], 1)
        assert [e.data["composite"] for e in store.read_since(tip)] == [0.2, 0.3]
        assert list(store.read_since(store.tip())) == []
        assert len(list(store.read_since(None))) == 3
        with pytest.raises(UnknownTipError):
            list(store.read_since("f" * 40))

    def test_a_written_log_verifies(self, store):
        assert store.verify().ok and store.verify().events == 0
        store.append("a", [ev(), ev()], 0)
        store.append("b", [ev()], 0)
        report = store.verify()
        assert report.ok and report.events == 3 and report.tip == store.tip()

    def test_tip_changes_with_every_append(self, store):
        tips = {store.tip()}
        for i in range(3):
            store.append("a", [ev()], i)
            tips.add(store.tip())
        assert len(tips) == 4

    def test_event_round_trips_exactly(self, store):
        payload = Promoted(version="v2", stage="canary", traffic=0.1, previous="v1")
        event = Event.new(payload, actor="human:ana", cause="pr#12")
        (rec,) = store.append("rtb", [event], 0)
        back = store.get(event.id)
        assert back == rec
        assert back.payload() == payload
        assert back.canonical_json() == rec.canonical_json()

    def test_evidence_rides_with_the_event(self, store):
        blobs = {"results.jsonl": b'{"id": "s1", "score": 1.0}\n', "report.md": b"# ok\n"}
        event = ev(evidence=blobs)
        store.append("rtb", [event], 0)
        assert store.evidence(event.id) == blobs
        assert store.get(event.id).evidence == event.evidence

    def test_threads_appending_to_one_stream(self, store):
        def writer(n: int) -> None:
            for _ in range(n):
                while True:
                    try:
                        store.append("rtb", [ev()], store.last_seq("rtb"))
                        break
                    except ConcurrencyError:
                        continue

        threads = [threading.Thread(target=writer, args=(25,)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [e.seq for e in store.read("rtb")] == list(range(1, 76))


class TestMemoryEventStore(EventStoreContract):
    def make_store(self, tmp_path):
        return MemoryEventStore()


def _git_repo(path: Path) -> pygit2.Repository:
    repo = pygit2.init_repository(str(path))
    # A normal checkout on main, so the tests can show the store never touches it.
    (path / "README.md").write_text("hello\n")
    repo.index.add("README.md")
    repo.index.write()
    sig = pygit2.Signature("t", "t@example.com")
    repo.create_commit("HEAD", sig, sig, "init", repo.index.write_tree(), [])
    return repo


def _process_writer(path: str, name: str, count: int) -> None:
    store = GitEventStore(path)
    for i in range(count):
        stream = "shared" if i % 2 == 0 else name
        event = ev(i / count, actor=name)
        while True:
            try:
                store.append(stream, [event], store.last_seq(stream))
                break
            except ConcurrencyError:
                continue


class TestGitEventStore(EventStoreContract):
    def make_store(self, tmp_path):
        return GitEventStore(_git_repo(tmp_path / "repo"))

    def test_two_processes_append_concurrently(self, tmp_path):
        path = tmp_path / "repo"
        _git_repo(path)
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_process_writer, args=(str(path), f"w{i}", 1000))
                 for i in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=240)
            assert p.exitcode == 0
        store = GitEventStore(path)
        events = list(store.read())
        assert len(events) == 2000
        assert len({e.id for e in events}) == 2000
        for stream in ("shared", "w0", "w1"):
            seqs = [e.seq for e in store.read(stream)]
            assert seqs == list(range(1, len(seqs) + 1))
        assert store.last_seq("shared") == 1000
        assert store.verify().ok

    def test_working_tree_and_head_are_untouched(self, tmp_path):
        repo = _git_repo(tmp_path / "repo")
        head = repo.head.target
        store = GitEventStore(repo)
        store.append("rtb", [ev(evidence={"r.json": b"{}"})], 0)
        assert repo.head.target == head
        assert repo.status() == {}
        assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [".git", "README.md"]

    def test_commit_reads_as_an_audit_trail(self, tmp_path):
        path = tmp_path / "repo"
        _git_repo(path)
        event = Event.new(Promoted(version="v3", stage="production"), actor="human:ana")
        GitEventStore(path).append("rtb", [event], 0)
        log = subprocess.run(
            ["git", "log", "--format=%an|%(trailers:key=Event-Id,valueonly)%s", EVENTS_REF],
            cwd=path, capture_output=True, text=True, check=True,
        ).stdout
        assert "human:ana" in log and event.id in log
        msg = subprocess.run(["git", "log", "-1", "--format=%B", EVENTS_REF], cwd=path,
                             capture_output=True, text=True, check=True).stdout
        assert msg.startswith("Promoted rtb#1 v3 -> production\n")

    def test_one_commit_per_event_with_a_per_event_tree(self, tmp_path):
        repo = _git_repo(tmp_path / "repo")
        store = GitEventStore(repo)
        store.append("rtb", [ev(evidence={"a.json": b"1"}), ev()], 0)
        tip = repo[store.tip()]
        assert len(tip.tree) == 0  # the second event has no evidence: an empty tree
        assert [e.name for e in tip.parents[0].tree] == ["a.json"]

    def test_a_new_process_sees_everything_and_recovers_from_a_bad_cache(self, tmp_path):
        path = tmp_path / "repo"
        _git_repo(path)
        first = GitEventStore(path)
        for i in range(300):  # past the save threshold: the index cache is written
            first.append("rtb", [ev()], i)
        cache = next((path / ".git" / "modelsmith").glob("index-*"))
        first.append("rtb", [ev()], 300)
        second = GitEventStore(path)
        assert second.last_seq("rtb") == 301
        cache.write_bytes(b"garbage")
        third = GitEventStore(path)
        assert third.last_seq("rtb") == 301
        assert len(list(third.read("rtb", after=299))) == 2

    def test_store_finds_the_repository_from_a_subfolder(self, tmp_path):
        path = tmp_path / "repo"
        _git_repo(path)
        (path / "sub").mkdir()
        store = GitEventStore(path / "sub")
        store.append("rtb", [ev()], 0)
        assert GitEventStore(path).last_seq("rtb") == 1
