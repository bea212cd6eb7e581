"""``verify`` holds where CI runs: in a fresh clone of a force-pushed origin.

Every merged proposal leaves ``Event-Log-Tip``/``Event-Log-Events`` trailers on main, and
``verify`` requires the log to hold that commit at that position. Each forgery below is made
with plain git (``update-ref``, ``commit-tree``, ``hash-object``, ``mktree``), in the
repository itself and in a fresh clone of a bare origin it was force-pushed to (no reflog,
no last-verified tip: only main to go by), and each is rejected naming the anchor. And a
normal ``reconcile --push`` replay is not a rewrite: eight racing clones end with one
decision, every clone's ``verify`` ok and every clone's ``--json`` saying what it pushed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pygit2
import pytest
from click.testing import CliRunner

from conftest import DEMO_PARTS, REPO_ROOT, clone, git, published
from evaluations import lineage
from modelsmith.app import Modelsmith
from modelsmith.cli import cli
from modelsmith.events.anchors import COUNT_TRAILER, TIP_TRAILER, main_anchors, parse_anchors
from modelsmith.events.gitstore import EVENTS_REF, GitEventStore
from modelsmith.events.types import Event, MetricsObserved
from processes import race_reconcilers

SPEC = "specialists/rtb-quality.yaml"
EVENTS = 6  # lineage(v1): three registrations, three evaluations (with evidence)


def _make_fork(root: Path) -> Path:
    for part in DEMO_PARTS:
        shutil.copytree(REPO_ROOT / part, root / part)
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "the fork")
    GitEventStore(root).append("rtb-quality", lineage(root, "v1"), 0)
    repo = Modelsmith.open(root, fetch=False)
    proposal = repo.forge(repo.specs()).propose("rtb-quality", "shadow", "v1",
                                                title="Promote rtb-quality v1 to shadow",
                                                body="evidence")
    repo.close()
    git(root, "merge", "--no-ff", "-q", proposal.ref, "-m",
        f"Merge {proposal.ref}\n\nApproved-by: Dana Reviewer <reviewer@example.invalid>")
    return root


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A fork whose main holds one merged proposal anchoring the whole log (6 events)."""
    return _make_fork(tmp_path_factory.mktemp("template") / "repo")


@pytest.fixture
def fork(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "repo", symlinks=True))


def verify(repo: Path):
    return CliRunner().invoke(cli, ["-C", str(repo), "verify"])


def chain(repo: Path) -> list[str]:
    out = git(repo, "rev-list", "--first-parent", "--reverse", EVENTS_REF)
    return out.split()


def tip(repo: Path) -> str:
    return git(repo, "rev-parse", EVENTS_REF).strip()


# ------------------------------------------------------------------ forgeries, plain git


def _commit(repo: Path, tree: str, parent: str | None, message: str) -> str:
    args = ["git", "-C", str(repo), "-c", "user.name=Mallory", "-c",
            "user.email=m@example.invalid", "commit-tree", tree]
    if parent:
        args += ["-p", parent]
    return subprocess.run(args, input=message, capture_output=True, text=True,
                          check=True).stdout.strip()


def _rewrite(repo: Path, position: int, edit) -> None:
    """Rewrite the event at ``position`` (1-based) with ``edit(message, tree) -> (message,
    tree)`` and every commit after it onto the new one, ``Previous:`` recomputed, as a
    careful forger would; then move the branch there."""
    commits = chain(repo)
    parent = commits[position - 2] if position > 1 else None
    for i, sha in enumerate(commits[position - 1:]):
        message = git(repo, "log", "-1", "--format=%B", sha).rstrip("\n") + "\n"
        tree = git(repo, "rev-parse", f"{sha}^{{tree}}").strip()
        if i == 0:
            message, tree = edit(message, tree)
        message = re.sub(r"^Previous: .*$", f"Previous: {parent or 'none'}", message,
                         flags=re.MULTILINE)
        parent = _commit(repo, tree, parent, message)
    git(repo, "update-ref", EVENTS_REF, parent)


def delete(repo: Path) -> None:
    git(repo, "update-ref", "-d", EVENTS_REF)


def amend_tip(repo: Path) -> None:
    _rewrite(repo, EVENTS, lambda m, t: (m.replace('"actor":"test"', '"actor":"mallory"', 1),
                                         t))


def truncate_two(repo: Path) -> None:
    git(repo, "update-ref", EVENTS_REF, chain(repo)[EVENTS - 3])


def edit_middle(repo: Path) -> None:
    _rewrite(repo, 3, lambda m, t: (m.replace('"actor":"test"', '"actor":"mallory"', 1), t))


def forge_blob(repo: Path) -> None:
    """The report of the evaluation at event 4, changed, with its digest in the event."""
    def edit(message: str, tree: str) -> tuple[str, str]:
        entries = git(repo, "ls-tree", tree).splitlines()
        name = "report.json"
        (line,) = [e for e in entries if e.endswith(f"\t{name}")]
        old = line.split()[2]
        forged = subprocess.run(["git", "-C", str(repo), "hash-object", "-w", "--stdin"],
                                input='{"composite": 0.99}', capture_output=True, text=True,
                                check=True).stdout.strip()
        listing = "".join(e.replace(old, forged) + "\n" for e in entries)
        new_tree = subprocess.run(["git", "-C", str(repo), "mktree"], input=listing,
                                  capture_output=True, text=True, check=True).stdout.strip()
        assert old in message
        return message.replace(old, forged), new_tree
    _rewrite(repo, 4, edit)


FORGERIES = {"deleted": delete, "amended-tip": amend_tip, "truncated-2": truncate_two,
             "middle-edit": edit_middle, "forged-blob": forge_blob}


def _anchor_of(repo: Path) -> str:
    (anchor,) = main_anchors(pygit2.Repository(str(repo)))
    return anchor.tip


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_each_forgery_is_rejected_in_the_repository_itself(fork, forgery):
    assert verify(fork).exit_code == 0
    anchored = _anchor_of(fork)
    FORGERIES[forgery](fork)
    result = verify(fork)
    assert result.exit_code != 0, result.output
    assert f"anchors the log at {anchored} (event {EVENTS})" in result.output


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_each_forgery_is_rejected_in_a_fresh_clone_of_a_force_pushed_origin(
        fork, tmp_path, forgery):
    bare = published(fork, tmp_path / "origin.git")
    anchored = _anchor_of(fork)
    FORGERIES[forgery](fork)
    if forgery == "deleted":
        git(fork, "push", "-q", "origin", f":{EVENTS_REF}")
    else:
        git(fork, "push", "-q", "--force", "origin", f"{EVENTS_REF}:{EVENTS_REF}")
    fresh = clone(bare, tmp_path / "ci")
    result = verify(fresh)
    assert result.exit_code != 0, result.output
    assert "main commit" in result.output
    assert f"anchors the log at {anchored} (event {EVENTS})" in result.output
    # What CI lacks: no reflog of the rewrite, no tip verified before.
    assert "forced update" not in result.output and "verified as" not in result.output
    if forgery == "deleted":
        assert "the log was deleted" in result.output


def test_an_untouched_fresh_clone_verifies_and_names_what_is_not_anchored(fork, tmp_path):
    bare = published(fork, tmp_path / "origin.git")
    fresh = clone(bare, tmp_path / "ci")
    result = verify(fresh)
    assert result.exit_code == 0, result.output
    assert f"ok: {EVENTS} events" in result.output
    assert "anchored: 1 anchor on main matches the log" in result.output
    assert "not anchored" not in result.output
    store = GitEventStore(fresh)
    now = store.last_seq("rtb-quality")
    store.append("rtb-quality", [observed("serve")], now)
    result = verify(fresh)
    assert result.exit_code == 0, result.output
    assert "1 event after the newest anchor on main is not anchored" in result.output
    report = json.loads(CliRunner().invoke(cli, ["-C", str(fresh), "verify", "--json"]).output)
    assert report["anchors"] == 1 and report["unanchored"] == 1


def test_without_anchors_verify_says_so(demo_repo):
    GitEventStore(demo_repo).append("rtb-quality", [observed("serve")], 0)
    result = verify(demo_repo)
    assert result.exit_code == 0
    assert "main names no event-log anchor yet" in result.output


def test_trailers_name_the_commit_origin_holds_too(fork, tmp_path):
    """A proposal in a clone with local-only events names the newest shared commit: a
    replay of those events must not leave main naming a commit the log never holds."""
    bare = published(fork, tmp_path / "origin.git")
    work = clone(bare, tmp_path / "work")
    repo = Modelsmith.open(work)
    shared = repo.store.tip()
    repo.store.append("rtb-quality", [observed("serve")], repo.store.last_seq("rtb-quality"))
    proposal = repo.forge(repo.specs()).propose("rtb-quality", "canary", "v1", title="t",
                                                body="b", traffic=0.1)
    repo.close()
    message = git(work, "log", "-1", "--format=%B", proposal.commit)
    assert f"{TIP_TRAILER}: {shared}\n{COUNT_TRAILER}: {EVENTS}\n" in message


def test_anchor_parsing_is_strict():
    sha = "a" * 40
    text = (f"title\n\nquoting {TIP_TRAILER}: {sha} inline\n{TIP_TRAILER}: nothex\n"
            f"{COUNT_TRAILER}: 3\n\n{TIP_TRAILER}: {sha}\n{COUNT_TRAILER}: -1\n")
    assert parse_anchors("m", text) == []
    (one,) = parse_anchors("m", f"t\n\n{TIP_TRAILER}: {sha}\n{COUNT_TRAILER}: 7\n")
    assert (one.tip, one.events) == (sha, 7)


def test_a_recorded_replay_that_lost_an_observation_is_still_a_rewrite(fork, tmp_path):
    """The replay record excuses exactly our own replay: a forced update that drops an
    observation is flagged even with a record naming it."""
    from modelsmith.events.anchors import record_replay

    store = GitEventStore(fork)
    before = store.tip()
    store.append("rtb-quality", [observed("serve")], store.last_seq("rtb-quality"))
    lost = store.tip()
    (event,) = list(store.read(after=EVENTS))
    record_replay(store.cache_dir, store.ref,
                  {"old": lost, "onto": before, "events": [event.id]})
    git(fork, "update-ref", EVENTS_REF, before)
    result = verify(fork)
    assert result.exit_code != 0
    assert f"observation {event.id} (MetricsObserved) was lost in the replay" in result.output


@pytest.mark.parametrize("line", [
    "not json", "[1, 2]", '{"old": 5, "onto": "x"}', '{"old": "%(old)s"}',
    '{"old": "%(old)s", "onto": "%(onto)s", "events": 7}',
    '{"old": "%(old)s", "onto": "%(onto)s"}',
    '{"old": "%(old)s", "onto": "%(onto)s", "events": ["someone-else"]}',
    "\x00\xff",
])
def test_hostile_replay_records_never_excuse_a_forced_update(fork, line):
    store = GitEventStore(fork)
    before = store.tip()
    store.append("rtb-quality", [observed("serve")], store.last_seq("rtb-quality"))
    after = store.tip()
    store.cache_dir.mkdir(exist_ok=True)
    (store.cache_dir / "replays-refs_heads_modelsmith_events.jsonl").write_text(
        line % {"old": after, "onto": before} + "\n", errors="surrogateescape")
    git(fork, "update-ref", EVENTS_REF, before)
    result = verify(fork)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"moved from {after} to {before}" in result.output


def observed(actor: str) -> Event:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return Event.new(MetricsObserved(version="v1", stage="shadow", window_start=now,
                                     window_end=now, requests=1,
                                     metrics={"format_rate": 1.0}), actor=actor)


# ------------------------------------------------------------------ racing reconcilers

def test_eight_racing_replays_leave_every_clone_verified_and_truthful(tmp_path):
    root = tmp_path / "fork"
    for part in DEMO_PARTS:
        shutil.copytree(REPO_ROOT / part, root / part)
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
    spec = root / SPEC
    spec.write_text(spec.read_text().replace("  shadow: null", "  shadow: v1"))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "the fork, asking for v1 in shadow")
    GitEventStore(root).append("rtb-quality", lineage(root, "v1"), 0)
    bare = published(root, tmp_path / "origin.git")
    clones = [clone(bare, tmp_path / f"clone-{n}") for n in range(8)]
    for path in clones:
        git(path, "fetch", "-q", "origin", f"{EVENTS_REF}:{EVENTS_REF}")
    results, errors = race_reconcilers(clones, tmp_path)
    own = [err.strip().splitlines()[0] for err in errors]

    reader = clone(bare, tmp_path / "reader")
    git(reader, "fetch", "-q", "origin", f"{EVENTS_REF}:{EVENTS_REF}")
    log = list(GitEventStore(reader).read())
    ids = [e.id for e in log]
    promoted = [e for e in log if e.type == "Promoted"]
    assert len(promoted) == 1  # one decision
    assert sorted(own) == sorted(e.id for e in log if e.type == "MetricsObserved")

    # --json is truthful: each clone pushed, and says exactly which events it added.
    pushed = [r["sync"]["pushed_events"] for r in results]
    for n, r in enumerate(results):
        synced = r["sync"]
        assert synced["pushed"] is True, synced
        assert own[n] in synced["pushed_events"], synced
        assert [a["event"] for a in r["applied"]] == [
            i for i in synced["pushed_events"] if i == promoted[0].id]
        assert set(synced["replayed"]) <= set(synced["pushed_events"])
        assert not set(synced["dropped"]) & set(ids)
    flat = [i for p in pushed for i in p]
    assert sorted(flat) == sorted(ids[EVENTS:])  # each new event pushed once, by one clone
    assert any(r["sync"]["replayed"] for r in results)  # the race did make replays

    # Every clone's own verify is ok, reflog and last-verified tip included.
    for path in clones:
        result = verify(path)
        assert result.exit_code == 0, (path.name, result.output)
        assert "forced update" not in result.output
