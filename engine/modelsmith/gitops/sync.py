"""``reconcile --push``: share the event log with ``origin`` without ever force-pushing.

The log is a linear branch. After a fetch there are four cases: nothing new on either side;
only the remote moved (fast-forward the local branch); only the local one moved (push);
both moved. Then the events recorded only here are replayed on the remote tip, in order:

- an *observation* (an evaluation ran, a candidate was registered, metrics were seen) is
  appended at the end of its stream -- it stays true whatever else happened;
- a *decision* (``Promoted``, ``PromotionRejected``, ``RolledBack``, ``PromotionProposed``)
  was taken on its stream as it stood: it is replayed only if its stream expectation still
  holds (no other event joined that stream on the remote since); otherwise it is dropped
  and the caller plans again on the merged log.

Then a plain push; a push rejected because the remote moved again starts over. A
candidate version registered on both sides under one name is a conflict for a person: it
stops with both events named, before anything moved.

A replay moves the local ref backwards (to the remote's tip) before appending again, which
the reflog shows as a forced update. So that the clone's own ``verify`` does not take it
for a rewrite, the replay records the move first (old tip, the remote's tip, the local-only
event ids; then what was re-appended and dropped) in ``.git/modelsmith`` and carries the
last-verified tip over to the replayed copy of the same events; ``verify`` accepts exactly
that move, and only when the log bears it out (:mod:`modelsmith.events.anchors`).

:class:`SyncResult` says what happened: ``pushed`` (a push landed), ``pushed_events`` (the
ids that push added to the remote's log), ``replayed`` (ids re-appended onto the remote's
tip and pushed), ``dropped`` (decisions that no longer held), each counted once over the
retries.

:func:`catch_up` is the read-only half, run before any command reads or appends the log
(so a fresh clone continues the shared log instead of starting a second one at seq 1): the
same fetch, then the local branch is created at the remote's tip or fast-forwarded to it;
diverged logs are left as they are and named (replaying is ``sync``'s, which pushes). No
remote named ``origin``: nothing runs, not even git. Offline: the local log, and one note.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pygit2

from modelsmith.errors import ModelsmithError
from modelsmith.events.anchors import DECISIONS, record_replay, verified_path
from modelsmith.events.gitstore import EVENTS_REF, GitEventStore, parse_event, parse_trailers
from modelsmith.events.store import ConcurrencyError, append_observation
from modelsmith.events.types import Event

REMOTE_REF = "refs/remotes/origin/modelsmith/events"
ATTEMPTS = 20
#: Seconds the fetch before a read may take (``MODELSMITH_FETCH_TIMEOUT``); past it the
#: command goes on with the local log.
FETCH_TIMEOUT = 10.0
NO_FETCH_ENV = "MODELSMITH_NO_FETCH"


def remote_ref(remote: str) -> str:
    """Where the fetch keeps ``remote``'s copy of the log."""
    return f"refs/remotes/{remote}/modelsmith/events"


class SyncError(ModelsmithError, RuntimeError):
    """The log cannot be shared without a person: the message says why."""


@dataclass
class SyncResult:
    pushed: bool = False
    fast_forwarded: bool = False
    replayed: list[str] = field(default_factory=list)  # event ids
    dropped: list[str] = field(default_factory=list)  # decisions that no longer held
    attempts: int = 0
    pushed_events: list[str] = field(default_factory=list)  # what the push added, in order
    #: What ``replan`` returned each time it ran on the merged log (not part of to_dict).
    replans: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"pushed": self.pushed, "fast_forwarded": self.fast_forwarded,
                "replayed": self.replayed, "dropped": self.dropped,
                "pushed_events": self.pushed_events, "attempts": self.attempts}

    def after(self, earlier: SyncResult) -> SyncResult:
        """This sync's result together with an ``earlier`` one's of the same command
        (``reconcile --push`` syncs before deciding and after): what both did."""
        dropped = list(dict.fromkeys(earlier.dropped + self.dropped))
        gone = set(dropped)
        return SyncResult(
            pushed=earlier.pushed or self.pushed,
            fast_forwarded=earlier.fast_forwarded or self.fast_forwarded,
            replayed=[i for i in dict.fromkeys(earlier.replayed + self.replayed)
                      if i not in gone],
            dropped=dropped, attempts=earlier.attempts + self.attempts,
            pushed_events=list(dict.fromkeys(earlier.pushed_events + self.pushed_events)),
            replans=self.replans)

    def _settle(self) -> SyncResult:
        """Each id once: replayed in several attempts, or replayed and dropped later."""
        self.dropped = list(dict.fromkeys(self.dropped))
        gone = set(self.dropped)
        self.replayed = [i for i in dict.fromkeys(self.replayed) if i not in gone]
        return self


def _git(root: Path, *args: str, timeout: float | None = None,
         prompt: bool = True) -> subprocess.CompletedProcess:
    """git in ``root``. Without ``prompt`` it never waits on a credential prompt (what a
    command that only reads the log must not do): no terminal, no stdin, and past
    ``timeout`` git and the helpers it started (ssh, remote-http) are ended together."""
    command = ["git", "-C", str(root), *args]
    if prompt:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    import signal

    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True,
                            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: git and its helpers
        proc.communicate()
        raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@dataclass(frozen=True)
class Fetched:
    """One fetch of the log: ``ok`` (the remote-tracking ref is the remote's tip now),
    ``missing`` (the remote has no log) or ``failed`` (``error`` says why)."""

    outcome: str
    error: str = ""


def fetch_log(root: Path, remote: str = "origin", *, timeout: float | None = None,
              prompt: bool = True) -> Fetched:
    """Fetch ``remote``'s ``modelsmith/events`` into its remote-tracking ref."""
    try:
        done = _git(root, "fetch", "--quiet", "--no-tags", remote,
                    f"+{EVENTS_REF}:{remote_ref(remote)}", timeout=timeout, prompt=prompt)
    except subprocess.TimeoutExpired:
        return Fetched("failed", f"no answer in {timeout:g} s")
    except OSError as exc:  # no git on PATH
        return Fetched("failed", str(exc))
    if done.returncode == 0:
        return Fetched("ok")
    if "couldn't find remote ref" in done.stderr:
        return Fetched("missing")
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    why = next((line for line in lines if line.startswith(("fatal: ", "error: "))),
               lines[0] if lines else f"git fetch exited with {done.returncode}")
    return Fetched("failed", why.removeprefix("fatal: ").removeprefix("error: "))


def _fresh(store: GitEventStore, event: Event) -> Event:
    """``event`` as a new, unrecorded event with the same id, time and evidence."""
    blobs = store.evidence(event.id) if event.evidence else None
    return Event.new(event.payload(), actor=event.actor, cause=event.cause, at=event.at,
                     id=event.id, evidence=blobs)


def sync(root: Path, remote: str = "origin",
         replan: Callable[[GitEventStore], Any] = lambda _store: None) -> SyncResult:
    """Fetch, replay what is only local on the remote tip, push (see the module docstring).
    ``replan`` runs on the merged log when a decision was dropped (reconcile again); what it
    returns is kept in ``replans``."""
    result = SyncResult()
    for attempt in range(1, ATTEMPTS + 1):
        result.attempts = attempt
        fetched = fetch_log(root, remote)
        if fetched.outcome == "failed":
            raise SyncError(f"git fetch {remote} failed: {fetched.error}")
        store = GitEventStore(root)
        repo = store.repo
        local = store.tip()
        tracking = repo.references.get(remote_ref(remote)) if fetched.outcome == "ok" else None
        theirs = str(tracking.target) if tracking is not None else None
        if local == theirs:
            return result._settle()
        if local is None or (theirs is not None and repo.descendant_of(theirs, local)):
            repo.references.create(EVENTS_REF, theirs, force=True)  # fast-forward
            result.fast_forwarded = True
            return result._settle()
        if theirs is not None and not repo.descendant_of(local, theirs) \
                and not _replay(store, local, theirs, result, replan):
            continue  # a local append moved the branch meanwhile: start over
        outgoing = store.tip()
        assert outgoing is not None
        # The commit itself, not the branch: what was pushed is exactly what is counted.
        pushed = _git(root, "push", "--quiet", remote, f"{outgoing}:{EVENTS_REF}")
        if pushed.returncode == 0:
            result.pushed = True
            result.pushed_events += _event_ids(repo, outgoing, theirs)
            if repo.references.get(remote_ref(remote)) is not None or theirs is None:
                repo.references.create(remote_ref(remote), outgoing, force=True)
            return result._settle()
        if "rejected" not in pushed.stderr and "fetch first" not in pushed.stderr \
                and "non-fast-forward" not in pushed.stderr:
            raise SyncError(f"git push {remote} failed: {pushed.stderr.strip()}")
    raise SyncError(f"{remote} kept moving: {ATTEMPTS} pushes were rejected")


@dataclass
class CatchUp:
    """What :func:`catch_up` found and did.

    ``state``: ``no-remote`` (no such remote: nothing ran), ``no-log`` (the remote holds no
    log), ``same``, ``ahead`` (only local events are new: ``sync`` pushes them),
    ``created`` (the local branch was made at the remote's tip), ``fast-forwarded``,
    ``diverged`` (left alone). ``offline`` holds why the fetch failed (the remote-tracking
    ref, as last fetched, was used); ``notes`` are the lines to show a person."""

    state: str
    local: str | None = None
    remote: str | None = None
    new_events: int = 0
    offline: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "local": self.local, "remote": self.remote,
                "new_events": self.new_events, "offline": self.offline}


def fetch_disabled() -> bool:
    """Whether ``MODELSMITH_NO_FETCH`` asks commands not to fetch the log first."""
    return os.environ.get(NO_FETCH_ENV, "").strip().lower() not in ("", "0", "false", "no")


def catch_up(root: Path, remote: str = "origin", *, fetch: bool = True,
             timeout: float | None = None) -> CatchUp:
    """Bring ``remote``'s log in before a command reads or appends it (see the module
    docstring): fetch it (unless ``fetch`` is false), then create the local branch at its
    tip or fast-forward to it. Never rewrites the local branch and never raises for a
    remote that cannot be reached."""
    found = pygit2.discover_repository(str(root))
    if found is None:
        return CatchUp("no-remote")
    repo = pygit2.Repository(found)
    try:
        repo.remotes[remote]
    except (KeyError, ValueError, pygit2.GitError):
        return CatchUp("no-remote")  # a repository of its own: no git, no network
    result = CatchUp("same")
    if fetch:
        if timeout is None:
            try:
                timeout = float(os.environ.get("MODELSMITH_FETCH_TIMEOUT") or FETCH_TIMEOUT)
            except ValueError:
                timeout = FETCH_TIMEOUT
        fetched = fetch_log(Path(repo.workdir or repo.path), remote, timeout=timeout,
                            prompt=False)
        if fetched.outcome == "missing":
            result.state = "no-log"
            return result
        if fetched.outcome == "failed":
            result.offline = fetched.error
            result.notes.append(
                f"warning: could not fetch the event log from {remote} ({fetched.error}); "
                f"working from the local copy (set {NO_FETCH_ENV}=1 to skip the fetch)")
    tracking = repo.references.get(remote_ref(remote))
    local_ref = repo.references.get(EVENTS_REF)
    theirs = str(tracking.target) if tracking is not None else None
    local = str(local_ref.target) if local_ref is not None else None
    result.local, result.remote = local, theirs
    if theirs is None:
        result.state = "no-log"
    elif local == theirs:
        result.state = "same"
    elif not repo.head_is_detached and not repo.head_is_unborn \
            and repo.head.name == EVENTS_REF:
        result.state = "same"  # the log is checked out: a person is working on it by hand
    elif local is None:
        try:
            repo.references.create(EVENTS_REF, theirs)
        except (pygit2.AlreadyExistsError, pygit2.GitError):
            return result  # another process made it meanwhile: it reads that one
        result.state, result.local = "created", theirs
        result.new_events = _count(repo, theirs)
        result.notes.append(f"event log: modelsmith/events created from {remote}'s "
                            f"({_events(result.new_events)})")
    elif repo.descendant_of(theirs, local):
        behind = repo.ahead_behind(theirs, local)[0]
        try:  # compare-and-swap: an append racing this one keeps its event
            local_ref.set_target(theirs, f"modelsmith: fast-forward to {remote}'s log")
        except pygit2.GitError:
            return result
        result.state, result.local, result.new_events = "fast-forwarded", theirs, behind
        result.notes.append(f"event log: fast-forwarded to {remote}'s ({behind} new "
                            f"event{'' if behind == 1 else 's'})")
    elif repo.descendant_of(local, theirs):
        result.state = "ahead"
    else:
        mine, others = repo.ahead_behind(local, theirs)
        result.state = "diverged"
        result.notes.append(
            f"warning: the local event log and {remote}'s diverged ({_events(mine)} only "
            f"here, {others} only on {remote}): run "
            f"`modelsmith reconcile --push` (or `modelsmith sync`) to replay yours onto "
            f"{remote}'s; until then this command sees only the local log")
    return result


def _count(repo: pygit2.Repository, tip: str) -> int:
    """How many events the log at ``tip`` holds: from its newest state snapshot when one is
    within reach (a fresh clone of a long log), else by walking it."""
    cold = GitEventStore(repo).status_cold(tip)
    if cold is not None and isinstance(cold.get("events"), int):
        return cold["events"]
    return sum(1 for _ in repo.walk(tip))


def _events(n: int) -> str:
    return f"{n} event{'' if n == 1 else 's'}"


def _event_ids(repo: pygit2.Repository, tip: str, stop: str | None) -> list[str]:
    """The event ids of the commits after ``stop`` up to ``tip`` (first parents), oldest
    first."""
    ids = []
    commit = repo.get(tip)
    while isinstance(commit, pygit2.Commit) and str(commit.id) != stop:
        ids.append(parse_trailers(commit.message).get("Event-Id", str(commit.id)))
        commit = repo.get(commit.parent_ids[0]) if commit.parent_ids else None
    return ids[::-1]


def _clash(pool: list[Event], event: Event) -> Event | None:
    """A candidate registered under ``event``'s version by another event in ``pool``."""
    return next((e for e in pool if e.type == "CandidateRegistered"
                 and e.stream == event.stream and e.data.get("version") == event.data["version"]
                 and e.id != event.id), None)


def _replay(store: GitEventStore, local: str, theirs: str, result: SyncResult,
            replan: Callable[[GitEventStore], None]) -> bool:
    """Replay the events only on ``local`` onto ``theirs`` (module docstring); False when
    the local branch moved before it could start (the caller starts over)."""
    repo = store.repo
    base = repo.merge_base(local, theirs)
    base_pos = 0
    if base is not None:
        base_pos = sum(1 for _ in repo.walk(base))
    mine = list(store.read(after=base_pos))  # the local-only events, in order
    # A version registered on both sides stops it before anything moves.
    registering = {e.stream for e in mine if e.type == "CandidateRegistered"}
    pool: list[Event] = []
    if registering:
        commit = repo.get(theirs)
        while isinstance(commit, pygit2.Commit) and commit.id != base:
            pool.append(parse_event(commit.message))
            commit = repo.get(commit.parent_ids[0]) if commit.parent_ids else None
        pool += [e for stream in sorted(registering) for e in store.read(stream)
                 if e.position <= base_pos]
    for event in mine:
        if event.type == "CandidateRegistered":
            clash = _clash(pool, event)
            if clash is not None:
                raise SyncError(
                    f"{event.stream} {event.data['version']} was registered here (event "
                    f"{event.id}) and on the remote (event {clash.id}): rename one "
                    "before sharing the log")
        pool.append(event)
    fresh = [_fresh(store, e) for e in mine]
    seqs = [e.seq for e in mine]
    # Recorded before the move, so verify knows this forced update for our own.
    record_replay(store.cache_dir, store.ref,
                  {"old": local, "onto": theirs, "events": [e.id for e in mine]})
    try:
        ref = repo.references[EVENTS_REF]
        if str(ref.target) != local:
            return False
        ref.set_target(theirs, f"modelsmith: replay {len(mine)} local event(s) onto "
                               f"{theirs}")  # compare-and-swap; the reflog keeps the old tip
    except (KeyError, pygit2.GitError, OSError):
        return False
    store = GitEventStore(repo)
    dropped_streams: set[str] = set()
    replayed, dropped = [], []
    for event, old, seq in zip(fresh, mine, seqs, strict=True):
        stream = old.stream
        if event.type in DECISIONS:
            if stream in dropped_streams:
                dropped.append(event.id)
                continue
            try:
                store.append(stream, [event], seq - 1)
            except ConcurrencyError:
                dropped_streams.add(stream)
                dropped.append(event.id)
                continue
        else:
            append_observation(store, stream, [event])
        replayed.append(event.id)
    tip = store.tip()
    record_replay(store.cache_dir, store.ref, {"old": local, "onto": theirs, "tip": tip,
                                                "replayed": replayed, "dropped": dropped})
    _carry_verified(store, local, base, theirs, replayed)
    result.replayed += replayed
    result.dropped += dropped
    if dropped:
        result.replans.append(replan(store))
    return True


def _carry_verified(store: GitEventStore, old: str, base: Any, theirs: str,
                    replayed: list[str]) -> None:
    """Move the last-verified tip from a local-only commit of ``old`` to the replayed copy
    of the newest of the same events (to the commit both logs share, when none of them was
    replayed), so the clone's ``verify`` does not take its own replay for a rewrite."""
    path = verified_path(store.cache_dir, store.ref)
    try:
        verified = path.read_text().strip()
    except OSError:
        return
    repo, covered, found = store.repo, set(), False
    commit = repo.get(old)
    while isinstance(commit, pygit2.Commit) and commit.id != base:
        found = found or str(commit.id) == verified
        if found:
            covered.add(parse_trailers(commit.message).get("Event-Id"))
        commit = repo.get(commit.parent_ids[0]) if commit.parent_ids else None
    if not found:
        return  # verified at a commit both logs hold (or not on this branch at all)
    covered &= set(replayed)
    target = str(base) if base is not None else None
    commit = repo.get(store.tip() or theirs)  # newest first: the first match is the newest
    while covered and isinstance(commit, pygit2.Commit) and str(commit.id) != theirs:
        if parse_trailers(commit.message).get("Event-Id") in covered:
            target = str(commit.id)
            break
        commit = repo.get(commit.parent_ids[0]) if commit.parent_ids else None
    if target is None:
        path.unlink(missing_ok=True)  # nothing of it is left to compare with
        return
    with contextlib.suppress(OSError):
        path.write_text(target + "\n")


def keep_what_stands(result: Any, synced: SyncResult) -> None:
    """After a sync, ``result`` (a reconcile's) holds the decisions that stood on the shared
    log: those sync dropped are gone, and those the re-plans made instead are added."""
    if not synced.dropped:
        return
    gone = set(synced.dropped)
    result.applied = [(a, e) for a, e in result.applied if e.id not in gone]
    for again in synced.replans:
        result.applied += [(a, e) for a, e in again.applied if e.id not in gone]
    if synced.replans:
        result.pending = synced.replans[-1].pending
