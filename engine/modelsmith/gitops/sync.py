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
stops with both events named.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelsmith.errors import ModelsmithError
from modelsmith.events.gitstore import EVENTS_REF, GitEventStore
from modelsmith.events.store import ConcurrencyError, append_observation
from modelsmith.events.types import Event

DECISIONS = frozenset({"Promoted", "PromotionRejected", "RolledBack", "PromotionProposed"})
REMOTE_REF = "refs/remotes/origin/modelsmith/events"
ATTEMPTS = 20


class SyncError(ModelsmithError, RuntimeError):
    """The log cannot be shared without a person: the message says why."""


@dataclass
class SyncResult:
    pushed: bool = False
    fast_forwarded: bool = False
    replayed: list[str] = field(default_factory=list)  # event ids
    dropped: list[str] = field(default_factory=list)  # decisions that no longer held
    attempts: int = 0
    #: What ``replan`` returned each time it ran on the merged log (not part of to_dict).
    replans: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"pushed": self.pushed, "fast_forwarded": self.fast_forwarded,
                "replayed": self.replayed, "dropped": self.dropped,
                "attempts": self.attempts}


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)


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
        fetched = _git(root, "fetch", "--quiet", remote,
                       f"+{EVENTS_REF}:{REMOTE_REF}")
        if fetched.returncode != 0 and "couldn't find remote ref" not in fetched.stderr:
            raise SyncError(f"git fetch {remote} failed: {fetched.stderr.strip()}")
        store = GitEventStore(root)
        repo = store.repo
        local = store.tip()
        remote_ref = repo.references.get(REMOTE_REF) if fetched.returncode == 0 else None
        theirs = str(remote_ref.target) if remote_ref is not None else None
        if local == theirs:
            return result
        if local is None or (theirs is not None and repo.descendant_of(theirs, local)):
            repo.references.create(EVENTS_REF, theirs, force=True)  # fast-forward
            result.fast_forwarded = True
            return result
        if theirs is not None and not repo.descendant_of(local, theirs):
            _replay(store, local, theirs, result, replan)
        pushed = _git(root, "push", "--quiet", remote, f"{EVENTS_REF}:{EVENTS_REF}")
        if pushed.returncode == 0:
            result.pushed = True
            return result
        if "rejected" not in pushed.stderr and "fetch first" not in pushed.stderr \
                and "non-fast-forward" not in pushed.stderr:
            raise SyncError(f"git push {remote} failed: {pushed.stderr.strip()}")
    raise SyncError(f"{remote} kept moving: {ATTEMPTS} pushes were rejected")


def _replay(store: GitEventStore, local: str, theirs: str, result: SyncResult,
            replan: Callable[[GitEventStore], None]) -> None:
    repo = store.repo
    base = repo.merge_base(local, theirs)
    base_pos = 0
    if base is not None:
        base_pos = sum(1 for _ in repo.walk(base))
    mine = list(store.read(after=base_pos))  # the local-only events, in order
    fresh = [_fresh(store, e) for e in mine]
    seqs = [e.seq for e in mine]
    repo.references.create(EVENTS_REF, theirs, force=True)  # the reflog keeps the old tip
    store = GitEventStore(repo)
    dropped_streams: set[str] = set()
    for event, old, seq in zip(fresh, mine, seqs, strict=True):
        stream = old.stream
        if event.type in DECISIONS:
            if stream in dropped_streams:
                result.dropped.append(event.id)
                continue
            try:
                store.append(stream, [event], seq - 1)
            except ConcurrencyError:
                dropped_streams.add(stream)
                result.dropped.append(event.id)
                continue
        else:
            if event.type == "CandidateRegistered":
                clash = next((e for e in store.read(stream) if e.type == "CandidateRegistered"
                              and e.data["version"] == event.data["version"]
                              and e.id != event.id), None)
                if clash is not None:
                    repo.references.create(EVENTS_REF, local, force=True)  # undo
                    raise SyncError(
                        f"{stream} {event.data['version']} was registered here (event "
                        f"{event.id}) and on the remote (event {clash.id}): rename one "
                        "before sharing the log")
            append_observation(store, stream, [event])
        result.replayed.append(event.id)
    if result.dropped:
        result.replans.append(replan(store))


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
