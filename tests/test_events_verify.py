"""`verify` walks the git log and names the commit where it went wrong."""

from __future__ import annotations

import json
import shutil

import pygit2
import pytest

from modelsmith.events import Event
from modelsmith.events.gitstore import EVENTS_REF, GitEventStore, format_message, parse_event
from modelsmith.events.types import EvalCompleted


def _ev(i: int) -> Event:
    return Event.new(
        EvalCompleted(model="m", suite="s", suite_hash="h", run_id=f"r{i}", composite=i / 10,
                      version="v1"),
        actor="loop",
    )


@pytest.fixture
def log(tmp_path):
    repo = pygit2.init_repository(str(tmp_path / "repo"))
    store = GitEventStore(repo)
    for i in range(8):
        store.append("rtb", [_ev(i)], i)
    return repo, store


def _chain(repo: pygit2.Repository) -> list[pygit2.Commit]:
    commits = []
    c = repo[repo.references[EVENTS_REF].target]
    while True:
        commits.append(c)
        if not c.parents:
            return commits[::-1]
        c = c.parents[0]


def _recommit(repo, commit, parent, message=None):
    return repo.create_commit(None, commit.author, commit.committer, message or commit.message,
                              commit.tree_id, [parent] if parent else [])


def _rewrite_from(repo, index: int, edit) -> list[str]:
    """Rewrite commit ``index`` with ``edit`` applied to its event, replaying the rest on top
    the way `git rebase`/`filter-branch` would (messages kept as they were)."""
    chain = _chain(repo)
    parent = chain[index - 1].id if index else None
    new_ids = []
    for i, commit in enumerate(chain[index:], start=index):
        message = commit.message
        if i == index:
            body = json.loads(message.split("\n\n")[1])
            edit(body)
            parts = message.split("\n\n")
            parts[1] = json.dumps(body, sort_keys=True, separators=(",", ":"))
            message = "\n\n".join(parts)
        parent = _recommit(repo, commit, parent, message)
        new_ids.append(str(parent))
    repo.references.create(EVENTS_REF, parent, force=True)
    return new_ids


def test_clean_log_verifies(log):
    _, store = log
    report = store.verify()
    assert report.ok and report.events == 8


def test_rewritten_history_is_caught_and_the_commit_named(log):
    repo, _store = log
    def bump(body):
        body["data"]["composite"] = 0.99
    new_ids = _rewrite_from(repo, 3, bump)
    report = GitEventStore(repo).verify()
    assert not report.ok
    named = {p.where for p in report.problems}
    # The first commit after the rewritten one records a parent that is no longer there.
    assert new_ids[1] in named
    assert any("history was rewritten" in p.message for p in report.problems)


def test_rewrite_is_caught_without_a_reflog(log, tmp_path):
    repo, _ = log
    _rewrite_from(repo, 2, lambda body: body["data"].update(composite=0.0))
    shutil.rmtree(tmp_path / "repo" / ".git" / "logs", ignore_errors=True)  # as in a fresh clone
    report = GitEventStore(pygit2.Repository(str(tmp_path / "repo"))).verify()
    assert not report.ok
    assert any("records previous event commit" in p.message for p in report.problems)


def test_rewrite_with_forged_trailers_is_caught_by_the_reflog_and_the_anchor(log, tmp_path):
    repo, store = log
    assert store.verify().ok  # remembers the verified tip
    chain = _chain(repo)
    last = chain[-1]
    event = parse_event(last.message)
    forged = event.model_copy(update={"data": {**event.data, "composite": 1.0}})
    message = format_message(forged, str(chain[-2].id))
    new = _recommit(repo, last, chain[-2].id, message)
    repo.references.create(EVENTS_REF, new, force=True)
    report = GitEventStore(repo).verify()
    assert not report.ok
    wheres = {p.where for p in report.problems}
    assert str(new) in wheres  # the reflog shows a forced update to this commit
    assert str(last.id) in wheres  # the verified tip is gone from the log
    shutil.rmtree(tmp_path / "repo" / ".git" / "logs")
    report = GitEventStore(pygit2.Repository(str(tmp_path / "repo"))).verify()
    assert [p.where for p in report.problems] == [str(last.id)]


def test_a_commit_that_is_not_an_event_is_named(log):
    repo, _store = log
    tip = repo.references[EVENTS_REF].target
    sig = pygit2.Signature("x", "x@example.com")
    tree = repo.TreeBuilder().write()
    bad = repo.create_commit(EVENTS_REF, sig, sig, "just a note\n", tree, [tip])
    report = GitEventStore(repo).verify()
    assert [p.where for p in report.problems] == [str(bad)]
    assert "not an event commit" in report.problems[0].message


def test_seq_gaps_duplicate_ids_and_bad_payloads_are_named(log):
    repo, _store = log
    chain = _chain(repo)
    tip = chain[-1]
    dup = parse_event(chain[0].message).model_copy(update={"seq": 10})
    c1 = repo.create_commit(None, tip.author, tip.committer,
                            format_message(dup, str(tip.id)), tip.tree_id, [tip.id])
    broken = _ev(9).recorded("rtb", 11, 0).model_copy(update={"data": {"composite": "high"}})
    c2 = repo.create_commit(None, tip.author, tip.committer,
                            format_message(broken, str(c1)), tip.tree_id, [c1])
    repo.references[EVENTS_REF].set_target(c2)
    report = GitEventStore(repo).verify()
    by_commit = {}
    for p in report.problems:
        by_commit.setdefault(p.where, []).append(p.message)
    assert any("already recorded" in m for m in by_commit[str(c1)])
    assert any("jumps from seq 8 to 10" in m for m in by_commit[str(c1)])
    assert any("data." in m for m in by_commit[str(c2)])


def test_merge_commits_are_rejected(log):
    repo, _store = log
    chain = _chain(repo)
    tip = chain[-1]
    side = _recommit(repo, chain[1], chain[0].id, "side\n")
    merged = _ev(42).recorded("rtb", 9, 0)
    m = repo.create_commit(None, tip.author, tip.committer,
                           format_message(merged, str(tip.id)), tip.tree_id, [tip.id, side])
    repo.references[EVENTS_REF].set_target(m)
    report = GitEventStore(repo).verify()
    assert any(p.where == str(m) and "merge" in p.message for p in report.problems)


def test_verify_events_names_duplicates_gaps_and_bad_payloads():
    from modelsmith.events.verify import verify_events

    a = _ev(1).recorded("rtb", 1, 1)
    gap = _ev(2).recorded("rtb", 3, 2)
    dup = a.model_copy(update={"seq": 4, "position": 3})
    bad = _ev(3).recorded("rtb", 5, 4).model_copy(update={"data": {"composite": "x"}})
    report = verify_events([a, gap, dup, bad])
    messages = [(p.position, p.message) for p in report.problems]
    assert (2, "stream 'rtb' jumps from seq 1 to 3") in messages
    assert any(pos == 3 and "already recorded" in m for pos, m in messages)
    assert any(pos == 4 and "data." in m for pos, m in messages)
    assert not report.ok and report.events == 4
