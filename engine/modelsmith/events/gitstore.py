"""The event log on a git branch, written with pygit2 without touching a working tree.

One commit per event. The message is a summary line, the event as canonical JSON, and
trailers; the commit's tree holds only that event's evidence (a tree that accumulated every
event made appends 7x slower over 10k events). An append builds commits on the current tip
and compare-and-swaps the ref; on a lost race it re-reads and retries.

An index (event id -> position, stream -> positions) makes appends and stream reads cheap.
It is caught up by walking only the commits after the last tip it saw, and cached under the
git directory so a new process does not replay the whole log.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pygit2
from pydantic import ValidationError
from pygit2.enums import SortMode

from modelsmith.errors import WorkspaceError
from modelsmith.events import anchors as _anchors
from modelsmith.events.cachefile import write_cache
from modelsmith.events.projection import FleetState
from modelsmith.events.signing import (
    AllowedSigners,
    SignatureChecker,
    SignaturePolicy,
    Signer,
    signer_for,
)
from modelsmith.events.snapshot import (
    DEFAULT_EVERY,
    SNAPSHOT_TRAILER,
    SNAPSHOT_TREE,
    LiveState,
    SnapshotChecker,
    SnapshotError,
    StaleSnapshot,
    continue_from,
    load_snapshot,
    load_status,
    snapshot_trailer,
    snapshots_trusted,
    warn_once,
)
from modelsmith.events.snapshot import (
    snapshot_every as _snapshot_every,
)
from modelsmith.events.store import (
    ConcurrencyError,
    EventStoreError,
    UnknownTipError,
    check_batch,
    resolve_recorded,
)
from modelsmith.events.types import Event, InvalidEventError
from modelsmith.events.verify import EventChecker, VerifyReport

EVENTS_REF = "refs/heads/modelsmith/events"
_INDEX_FORMAT = 1
_SAVE_AFTER = 256  # new commits in the index before its cache is rewritten
_MAX_ATTEMPTS = 500


def format_message(event: Event, previous: str | None, snapshot: str | None = None) -> str:
    """Summary, blank line, canonical JSON, blank line, trailers (``Snapshot`` names the
    state snapshot the commit's tree carries, if any)."""
    trailers = (
        f"Event-Id: {event.id}\n"
        f"Event-Type: {event.type}\n"
        f"Stream: {event.stream}\n"
        f"Seq: {event.seq}\n"
        f"Previous: {previous or 'none'}\n"
    )
    if snapshot is not None:
        trailers += f"{SNAPSHOT_TRAILER}: {snapshot}\n"
    summary = " ".join(event.summary().split())[:200]
    return f"{summary}\n\n{event.canonical_json()}\n\n{trailers}"


def parse_trailers(message: str) -> dict[str, str]:
    tail = message[message.rfind("\n\n") + 2 :]
    out = {}
    for line in tail.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            out[key] = value
    return out


def parse_event(message: str, position: int = 0) -> Event:
    """The event a commit message carries; InvalidEventError if it carries none."""
    parts = message.split("\n\n")
    if len(parts) < 3:
        raise InvalidEventError("commit message is not summary, event JSON and trailers")
    try:
        body = json.loads(parts[1])
    except json.JSONDecodeError as exc:
        raise InvalidEventError(f"event JSON does not parse: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidEventError("event JSON is not an object")
    body["position"] = position
    try:
        return Event.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "event"
        raise InvalidEventError(f"event envelope invalid: {where}: {first['msg']}") from None


@dataclass
class _Index:
    tip: str | None = None
    commits: list[str] = field(default_factory=list)  # position p is commits[p - 1]
    ids: dict[str, int] = field(default_factory=dict)
    streams: dict[str, list[int]] = field(default_factory=dict)

    def add(self, commit: str, event_id: str, stream: str) -> None:
        self.commits.append(commit)
        pos = len(self.commits)
        self.ids[event_id] = pos
        self.streams.setdefault(stream, []).append(pos)
        self.tip = commit


class GitEventStore:
    """EventStore on ``refs/heads/modelsmith/events`` of a git repository."""

    def __init__(
        self, repo: pygit2.Repository | str | os.PathLike[str], ref: str = EVENTS_REF,
        snapshot_every: int | None = None, signer: Signer | None = ...,  # type: ignore[assignment]
    ) -> None:
        """``snapshot_every``: events between state snapshots the appender writes into the
        log (default ``MODELSMITH_SNAPSHOT_EVERY`` or 1000; 0 writes none). ``signer``:
        what signs each event commit (default: the configured key,
        :func:`modelsmith.events.signing.configured_key`, looked up at the first append;
        None writes unsigned commits)."""
        if not isinstance(repo, pygit2.Repository):
            found = pygit2.discover_repository(str(repo))
            if found is None:
                raise EventStoreError(f"{repo} is not inside a git repository")
            repo = pygit2.Repository(found)
        self.repo = repo
        self.ref = ref
        self.cache_dir = Path(repo.path) / "modelsmith"
        self._index = _Index()
        self._index_loaded = False
        self._unsaved = 0
        self._empty_tree: pygit2.Oid | None = None
        self.snapshot_every = _snapshot_every(snapshot_every)
        self._live: LiveState | None = None  # the appender's fold, once a snapshot was due
        # The index is shared by the threads of a process; other processes are kept apart
        # by the compare-and-swap on the ref.
        self._lock = threading.RLock()
        self._signer = signer
        self._signatures: SignatureChecker | None = None

    # ------------------------------------------------------------------ reading

    def tip(self) -> str | None:
        try:
            return str(self.repo.references[self.ref].target)
        except KeyError:
            return None

    def last_seq(self, stream: str) -> int:
        return len(self._sync().streams.get(stream, ()))

    def get(self, event_id: str) -> Event | None:
        idx = self._sync()
        pos = idx.ids.get(event_id)
        return None if pos is None else self._event_at(idx, pos)

    def read(self, stream: str | None = None, after: int | None = None) -> Iterator[Event]:
        idx = self._sync()
        start = after or 0
        if stream is not None:
            positions = idx.streams.get(stream, [])[start:]
        else:
            positions = range(start + 1, len(idx.commits) + 1)
        return (self._event_at(idx, pos) for pos in positions)

    def read_since(self, tip: str | None) -> Iterator[Event]:
        idx = self._sync()
        if tip is None:
            return self.read()
        if tip == idx.tip:
            return iter(())
        position = self._position_of_commit(idx, tip)
        if position is None:
            raise UnknownTipError(f"commit {tip} is not in the history of {self.ref}")
        return self.read(after=position)

    def evidence(self, event_id: str) -> dict[str, bytes]:
        idx = self._sync()
        pos = idx.ids.get(event_id)
        if pos is None:
            raise EventStoreError(f"no event {event_id} in {self.ref}")
        tree = self.repo[idx.commits[pos - 1]].tree
        return {entry.name: self.repo[entry.id].data for entry in tree
                if entry.name != SNAPSHOT_TREE}

    def _event_at(self, idx: _Index, pos: int) -> Event:
        commit = self.repo[idx.commits[pos - 1]]
        try:
            return parse_event(commit.message, pos)
        except InvalidEventError as exc:
            raise EventStoreError(
                f"commit {commit.id} on {self.ref} is not a valid event ({exc}); "
                "run `modelsmith verify`"
            ) from None

    @staticmethod
    def _position_of_commit(idx: _Index, commit: str) -> int | None:
        try:
            return idx.commits.index(commit) + 1
        except ValueError:
            return None

    # ------------------------------------------------------------------ snapshots

    def fold_cold(self, tip: str | None = None,
                  since: FleetState | None = None) -> FleetState | None:
        """The fleet state at commit ``tip`` (default: the tip) without the index: walk
        back by first parent to ``since`` (a state folded earlier at ``since.tip``) or to
        the newest snapshot, whichever comes first, and apply the events after it. None
        when neither is within reach, or the snapshot does not match the log (warned once
        on stderr): the caller folds the whole log."""
        tip = tip or self.tip()
        if tip is None:
            return FleetState()
        found = self._walk_to_base(tip, since)
        if found is None:
            return None
        state, _blobs, _tail = found
        state.tip = tip
        return state

    def status_cold(self, tip: str | None = None) -> dict[str, Any] | None:
        """The status table (``FleetState.to_dict``) at ``tip`` from the newest snapshot's
        status rows, decoding only the streams the events after it touch; None when no
        snapshot is within reach or it does not match the log (warned once)."""
        tip = tip or self.tip()
        if tip is None or not snapshots_trusted():
            return None
        walked = self._walk_back(tip, None)
        if walked is None or not isinstance(walked[0], pygit2.Commit):
            return None
        base, tail = walked
        events = self._tail_events(tail, None)  # positions follow the snapshot's
        try:
            summary = load_status(self.repo, base, parse_trailers(base.message), events)
        except StaleSnapshot:
            return None
        except SnapshotError as exc:
            warn_once(str(base.id), None, str(exc))
            return None
        summary["tip"] = tip
        return summary

    def _tail_events(self, tail: list[pygit2.Commit], start: int | None) -> list[Event]:
        """The events of ``tail`` (newest first) in log order, at positions ``start`` + 1
        on (None: 0, for the fold to count on from where it is)."""
        out = []
        for i, commit in enumerate(reversed(tail), start=1):
            try:
                out.append(parse_event(commit.message, 0 if start is None else start + i))
            except InvalidEventError as exc:
                raise EventStoreError(
                    f"commit {commit.id} on {self.ref} is not a valid event ({exc}); "
                    "run `modelsmith verify`") from None
        return out

    def _walk_back(self, tip: str, stop: str | None
                   ) -> tuple[pygit2.Commit | str | None, list[pygit2.Commit]] | None:
        """Walk back by first parent from ``tip`` to ``stop`` (returned as "since"), to the
        newest commit with a snapshot, or to the log's first event (None): (base, the
        commits after it, newest first). None when none is within reach."""
        trusted = snapshots_trusted()
        limit = 2 * max(self.snapshot_every, DEFAULT_EVERY)
        tail: list[pygit2.Commit] = []
        base: pygit2.Commit | str | None = None
        commit = self.repo.get(tip)
        while isinstance(commit, pygit2.Commit):  # by first parent, as the log is linear
            if str(commit.id) == stop:
                base = "since"
                break
            if trusted and snapshot_trailer(commit.message) is not None:
                base = commit
                break
            tail.append(commit)
            if len(tail) > limit:
                return None
            if not commit.parent_ids:
                break
            commit = self.repo.get(commit.parent_ids[0])
        if base is None and (
                not tail or parse_trailers(tail[-1].message).get("Previous") != "none"):
            return None  # a shallow clone's cut, not the log's first event
        return base, tail

    def _walk_to_base(self, tip: str, since: FleetState | None
                      ) -> tuple[FleetState, dict[str, pygit2.Oid], set[str]] | None:
        """(state at ``tip``, the blobs of the snapshot it grew from, the streams touched
        after that snapshot), or None (see :meth:`fold_cold`)."""
        walked = self._walk_back(tip, since.tip if since is not None else None)
        if walked is None:
            return None
        base, tail = walked
        blobs: dict[str, pygit2.Oid] = {}
        if base is None:  # the whole log is short: fold it
            state = FleetState()
        elif base == "since":
            assert since is not None
            state = since
        else:
            try:
                state, blobs = load_snapshot(self.repo, base, parse_trailers(base.message))
            except StaleSnapshot:
                return None
            except SnapshotError as exc:
                warn_once(str(base.id), None, str(exc))
                return None
        start = state.position
        touched = set()
        try:
            for event in self._tail_events(tail, start):
                continue_from(state, event)
                touched.add(event.stream)
        except SnapshotError as exc:
            if isinstance(base, pygit2.Commit):
                warn_once(str(base.id), start, str(exc))
            return None
        return state, blobs, touched

    def _live_at(self, idx: _Index, tip: str | None) -> LiveState | None:
        """The appender's fold at ``tip``: kept from its last append, caught up from the
        index, or loaded from the newest snapshot (the whole log, failing that)."""
        live = self._live
        if live is not None and live.commit == tip:
            return live
        if tip is None:
            return LiveState(None, FleetState())
        pos = live.state.position if live is not None else 0
        if live is not None and 0 < pos <= len(idx.commits) and idx.commits[pos - 1] == live.commit:
            for p in range(pos + 1, len(idx.commits) + 1):
                live.apply(self._event_at(idx, p))
            live.commit = tip
            return live
        found = self._walk_to_base(tip, None)
        if found is not None:
            state, blobs, touched = found
            return LiveState(tip, state, blobs, touched)
        state = FleetState()
        for p in range(1, len(idx.commits) + 1):
            state.apply(self._event_at(idx, p))
        return LiveState(tip, state, {}, set(state.specialists))

    # ------------------------------------------------------------------ appending

    def append(self, stream: str, events: Sequence[Event], expected_seq: int) -> list[Event]:
        check_batch(stream, events)
        with self._lock:
            return self._append(stream, events, expected_seq)

    def _append(self, stream: str, events: Sequence[Event], expected_seq: int) -> list[Event]:
        for attempt in range(_MAX_ATTEMPTS):
            try:
                ref = self.repo.references[self.ref]
            except KeyError:
                ref = None
            tip = str(ref.target) if ref is not None else None
            idx = self._sync(tip)
            done = resolve_recorded(
                [self._event_at(idx, idx.ids[e.id]) if e.id in idx.ids else None for e in events],
                events,
            )
            if done is not None:
                return done
            last = len(idx.streams.get(stream, ()))
            if last != expected_seq:
                raise ConcurrencyError(stream, expected_seq, last)
            base, every = len(idx.commits), self.snapshot_every
            due = every > 0 and (base + len(events)) // every > base // every
            live = self._live_at(idx, tip) if due else self._live
            if live is not None and live.commit != tip:
                live = self._live = None  # another writer appended: rebuilt when next due
            recorded, parent = [], tip
            for i, event in enumerate(events, start=1):
                rec = event.recorded(stream, expected_seq + i, base + i)
                snapshot = None
                if due and live is not None:
                    live.apply(rec)
                    if rec.position % every == 0:
                        snapshot = str(live.write(self.repo, parent, rec))
                parent = str(self._write_commit(rec, parent, snapshot))
                recorded.append((parent, rec))
            try:
                if ref is None:
                    self.repo.references.create(self.ref, parent)
                else:
                    ref.set_target(parent, f"modelsmith: append {stream}#{expected_seq + 1}")
            except (pygit2.GitError, OSError, pygit2.AlreadyExistsError):
                # A stale tip (GitError, AlreadyExists) or a ref locked by another writer
                # (OSError): back off a little and decide again on the new tip.
                time.sleep(random.uniform(0, min(0.05, 0.001 * (attempt + 1))))
                if due:
                    self._live = None  # it holds events that did not land
                continue
            if live is not None:
                if not due:
                    for _, rec in recorded:
                        live.apply(rec)
                live.commit = parent
                self._live = live
            for commit, rec in recorded:
                idx.add(commit, rec.id, stream)
            self._note_unsaved(len(recorded))
            return [rec for _, rec in recorded]
        raise EventStoreError(f"could not append to {self.ref}: {_MAX_ATTEMPTS} lost races")

    def _write_commit(self, event: Event, parent: str | None,
                      snapshot: str | None = None) -> pygit2.Oid:
        if event.evidence and not event.blobs:
            raise InvalidEventError(f"event {event.id} names evidence but carries no bytes")
        if event.blobs or snapshot:
            builder = self.repo.TreeBuilder()
            for name, data in sorted(event.blobs.items()):
                oid = self.repo.create_blob(data)
                if str(oid) != event.evidence[name]:
                    raise InvalidEventError(f"event {event.id}: evidence {name} digest differs")
                builder.insert(name, oid, pygit2.enums.FileMode.BLOB)
            if snapshot:
                builder.insert(SNAPSHOT_TREE, pygit2.Oid(hex=snapshot),
                               pygit2.enums.FileMode.TREE)
            tree = builder.write()
        else:
            if self._empty_tree is None:
                self._empty_tree = self.repo.TreeBuilder().write()
            tree = self._empty_tree
        name = "".join(c for c in event.actor if c.isprintable() and c not in "<>") or "unknown"
        author = pygit2.Signature(name, "modelsmith@localhost", int(event.at.timestamp()), 0)
        committer = pygit2.Signature("modelsmith", "modelsmith@localhost")
        message = format_message(event, parent, snapshot)
        parents = [pygit2.Oid(hex=parent)] if parent else []
        signer = self.signer
        if signer is None:
            return self.repo.create_commit(None, author, committer, message, tree, parents)
        # As `git commit -S` with gpg.format=ssh: the object without its signature, signed.
        content = self.repo.create_commit_string(author, committer, message, tree, parents)
        return self.repo.create_commit_with_signature(content, signer.sign(content.encode()))

    # ------------------------------------------------------------------ signatures

    @property
    def signer(self) -> Signer | None:
        """What signs this store's appends (the configured key, found on first use)."""
        if self._signer is ...:
            self._signer = signer_for(self.repo)
        return self._signer

    @property
    def signatures(self) -> SignatureChecker:
        """Verdicts on the log's signatures against the checked-out branch's allowed
        signers (cached under the git directory)."""
        with self._lock:
            allowed = AllowedSigners.at_head(self.repo)
            if self._signatures is None or self._signatures.allowed != allowed:
                if self._signatures is not None:
                    self._signatures.close()
                self._signatures = SignatureChecker(self.repo, allowed, self.cache_dir)
            return self._signatures

    def commit_of(self, event_id: str) -> str | None:
        """The commit that records event ``event_id``, or None."""
        idx = self._sync()
        pos = idx.ids.get(event_id)
        return None if pos is None else idx.commits[pos - 1]

    def untrusted(self, event_id: str, policy: SignaturePolicy) -> str | None:
        """Why event ``event_id`` may not be trusted under ``policy`` (its stream's rule:
        unsigned where signatures are required, a bad signature, a signer not allowed for
        its type); None when it may, or when no such event is in the log."""
        idx = self._sync()
        pos = idx.ids.get(event_id)
        if pos is None:
            return None
        event = self._event_at(idx, pos)
        rule = policy.rule(event.stream)
        if not rule.required:
            return None
        return rule.judge(self.signatures.verdict(idx.commits[pos - 1]), event.type)

    def _verify_signatures(self, checker: EventChecker, chain: list[pygit2.Commit],
                           policy: SignaturePolicy | None) -> None:
        """Each event commit's signature, against the allowed signers of the checked-out
        branch and ``policy``'s writer rules: a problem where the event's stream requires
        signatures, a count (unsigned) or a warning otherwise."""
        report = checker.report
        policy = policy or SignaturePolicy()
        signatures = self.signatures
        report.signers_file = signatures.allowed.oid
        for problem in signatures.allowed.problems():
            report.warnings.append(problem)
        unsigned = doubtful = 0
        for pos, commit in enumerate(chain, start=1):
            trailers = parse_trailers(commit.message)
            stream, kind = trailers.get("Stream"), trailers.get("Event-Type")
            if not stream or not kind:
                continue  # not an event commit: reported already
            verdict = signatures.verdict(str(commit.id))
            if verdict.status == "signed":
                report.signed += 1
            elif verdict.status == "unsigned":
                unsigned += 1
            else:
                doubtful += 1
            rule = policy.rule(stream)
            why = rule.judge(verdict, kind)
            if why is not None:
                checker.problem(str(commit.id), pos, f"{kind} on {stream}: {why}")
            elif verdict.status in ("bad", "unknown"):
                report.warnings.append(f"commit {commit.id} (event {pos}): {kind} on "
                                       f"{stream}: {verdict.describe()}")
        report.unsigned = unsigned
        if unsigned:
            report.warnings.append(
                f"{unsigned} event{'s' * (unsigned != 1)} unsigned"
                + ("" if policy.required else " (no policy requires signatures; configure "
                   "MODELSMITH_SIGNING_KEY to sign appends)"))
        if doubtful and not policy.required:
            report.warnings.append(f"{doubtful} event signature{'s' * (doubtful != 1)} "
                                   "not verified by the allowed signers")
        signatures.save()

    # ------------------------------------------------------------------ the index

    def _sync(self, tip: str | None = ...) -> _Index:  # type: ignore[assignment]
        """Bring the index up to ``tip`` (default: the ref's current target)."""
        with self._lock:
            return self._sync_locked(tip)

    def _sync_locked(self, tip: str | None) -> _Index:
        if tip is ...:
            tip = self.tip()
        if not self._index_loaded:
            self._index = self._load_index()
            self._index_loaded = True
        idx = self._index
        if tip == idx.tip:
            return idx
        if tip is None:
            self._index = _Index()
            return self._index
        walker = self.repo.walk(tip, SortMode.TOPOLOGICAL | SortMode.REVERSE)
        walker.simplify_first_parent()
        if idx.tip is not None and self.repo.descendant_of(tip, idx.tip):
            walker.hide(idx.tip)
        else:
            idx = self._index = _Index()  # first read, or the log was rewritten: start over
        added = 0
        for commit in walker:
            trailers = parse_trailers(commit.message)
            event_id, stream = trailers.get("Event-Id"), trailers.get("Stream")
            if not event_id or not stream:
                raise EventStoreError(
                    f"commit {commit.id} on {self.ref} carries no event; run `modelsmith verify`"
                )
            idx.add(str(commit.id), event_id, stream)
            added += 1
        self._note_unsaved(added)
        return idx

    def _note_unsaved(self, count: int) -> None:
        # Rewrite the cache after a share of the log is new, so saving stays O(1) per event.
        self._unsaved += count
        if self._unsaved >= max(_SAVE_AFTER, len(self._index.commits) // 4):
            self.save_index()

    def close(self) -> None:
        """Save the index cache if this process added to it."""
        with self._lock:
            if self._unsaved:
                self.save_index()
            if self._signatures is not None:
                self._signatures.close()

    def __enter__(self) -> GitEventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _index_path(self) -> Path:
        return self.cache_dir / f"index-{self.ref.replace('/', '_')}.pickle"

    def _load_index(self) -> _Index:
        try:
            with open(self._index_path(), "rb") as fh:
                fmt, tip, commits, ids, streams = pickle.load(fh)
        except (OSError, EOFError, ValueError, TypeError, pickle.UnpicklingError):
            return _Index()
        if fmt != _INDEX_FORMAT or (tip is not None and tip not in self.repo):
            return _Index()
        return _Index(tip, commits, ids, streams)

    def save_index(self) -> None:
        """Write the index cache (atomic); a reader that finds none simply rebuilds it."""
        idx = self._index
        self._unsaved = 0
        state = (_INDEX_FORMAT, idx.tip, idx.commits, idx.ids, idx.streams)
        # A read-only repository: the index is rebuilt on each run instead.
        write_cache(self._index_path(),
                    lambda fh: pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL))

    # ------------------------------------------------------------------ verify

    def instant(self, when: str) -> tuple[datetime, int | None]:
        """``when`` as (time, log position): an ISO date or time (UTC when no zone is
        given) is a time; a commit of the event log is a position in it (and its time); any
        other revision of the repository counts up to the end of its commit's second."""
        try:
            moment = datetime.fromisoformat(when)
        except ValueError:
            moment = None
        if moment is not None:
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)), None
        repo = self.repo  # the work tree's repository, which holds the log
        try:
            commit = repo.revparse_single(when).peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError):
            raise WorkspaceError(f"--at {when!r} is neither a date/time (2026-11-20 or "
                                 "2026-11-20T14:05:00) nor a git revision here") from None
        moment = datetime.fromtimestamp(commit.commit_time, UTC)
        log = repo.references.get(EVENTS_REF)
        if log is not None and (log.target == commit.id
                                or repo.descendant_of(log.target, commit.id)):
            position = sum(1 for _ in repo.walk(commit.id, SortMode.TOPOLOGICAL))
            return moment, position
        return moment + timedelta(seconds=1), None

    def verify(self, signatures: SignaturePolicy | None = None) -> VerifyReport:
        """Walk the whole log and check it; names the commit of each problem.
        ``signatures``: who may write what (default: nothing required; unsigned events
        are counted and warned about)."""
        report = VerifyReport(tip=self.tip())
        checker = EventChecker(report)
        if report.tip is None:
            self._verify_main_anchors(checker, [])
            self._verify_anchor(checker, None)
            return report
        chain = []
        commit = self.repo[report.tip]
        while True:
            chain.append(commit)
            if len(commit.parents) > 1:
                checker.problem(str(commit.id), None, "merge commit: the log must be linear")
            if not commit.parents:
                break
            commit = commit.parents[0]
        chain.reverse()
        snapshots = SnapshotChecker(self.repo, checker.problem)
        for pos, commit in enumerate(chain, start=1):
            event = self._verify_commit(checker, commit, pos)
            if event is not None:
                snapshots.feed(event)
            snapshots.check(commit, pos, parse_trailers(commit.message))
        report.snapshots = snapshots.snapshots
        self._verify_signatures(checker, chain, signatures)
        self._verify_reflog(checker)
        self._verify_anchor(checker, report.tip)
        self._verify_main_anchors(checker, [str(c.id) for c in chain])
        if report.ok:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                self._anchor_path().write_text(report.tip + "\n")
            except OSError:
                pass  # read-only repository: the anchor check just has nothing to compare
        return report

    def _verify_commit(self, checker: EventChecker, commit: pygit2.Commit,
                       pos: int) -> Event | None:
        where = str(commit.id)
        try:
            event = parse_event(commit.message, pos)
        except InvalidEventError as exc:
            checker.report.events += 1
            checker.problem(where, pos, f"not an event commit: {exc}")
            return None
        trailers = parse_trailers(commit.message)
        expected = {
            "Event-Id": event.id,
            "Event-Type": event.type,
            "Stream": event.stream,
            "Seq": str(event.seq),
        }
        for key, value in expected.items():
            if trailers.get(key) != value:
                checker.problem(
                    where, pos, f"trailer {key}={trailers.get(key)!r} disagrees with the event"
                )
        parent = str(commit.parents[0].id) if commit.parents else "none"
        if trailers.get("Previous") != parent:
            checker.problem(
                where,
                pos,
                f"records previous event commit {trailers.get('Previous')} but its parent is "
                f"{parent}: history was rewritten at or before this commit",
            )
        stored = {entry.name: str(entry.id) for entry in commit.tree
                  if entry.name != SNAPSHOT_TREE}
        if stored != event.evidence:
            checker.problem(where, pos, "evidence in the commit tree differs from the event's")
        checker.feed(event, where)
        return event

    def _verify_reflog(self, checker: EventChecker) -> None:
        """Every move of the branch in the reflog went forward, or was one of our own
        replays (``reconcile --push``) that the log bears out (:mod:`.anchors`)."""
        try:
            entries = list(self.repo.references[self.ref].log())
        except (KeyError, pygit2.GitError):
            return
        zero = "0" * 40
        recorded: dict[tuple[str, str], dict[str, Any]] | None = None
        current: tuple[dict[str, Event], dict[str, int]] | None = None
        for entry in reversed(entries):  # oldest first
            old, new = str(entry.oid_old), str(entry.oid_new)
            if old in (zero, new):
                continue
            try:
                forward = self.repo.descendant_of(new, old)
            except (pygit2.GitError, KeyError, ValueError):
                forward = False
            if forward:
                continue
            if recorded is None:
                recorded = _anchors.replays(self.cache_dir, self.ref)
            record = recorded.get((old, new))
            if record is not None:
                if current is None:
                    current = self._current_events()
                why = _anchors.check_replay(self.repo, record, *current)
                if why is None:
                    continue
                checker.problem(new, None, f"the branch was moved from {old} to {new} by a "
                                f"recorded replay that the log does not bear out: {why}")
                continue
            checker.problem(
                new,
                None,
                f"the branch was moved from {old} to {new}, which does not contain it: "
                "history was rewritten (forced update)",
            )

    def _current_events(self) -> tuple[dict[str, Event], dict[str, int]]:
        """The log's events by id, and their positions (unreadable commits skipped: the
        walk in :meth:`verify` names them)."""
        events: dict[str, Event] = {}
        positions: dict[str, int] = {}
        tip = self.tip()
        if tip is None:
            return events, positions
        walker = self.repo.walk(tip, SortMode.TOPOLOGICAL | SortMode.REVERSE)
        walker.simplify_first_parent()
        for pos, commit in enumerate(walker, start=1):
            try:
                event = parse_event(commit.message, pos)
            except InvalidEventError:
                continue
            events[event.id], positions[event.id] = event, pos
        return events, positions

    def _anchor_path(self) -> Path:
        return _anchors.verified_path(self.cache_dir, self.ref)

    def _verify_anchor(self, checker: EventChecker, tip: str | None) -> None:
        """The tip ``verify`` last found sound here is still in the log."""
        try:
            anchor = self._anchor_path().read_text().strip()
        except OSError:
            return
        if not anchor or anchor == tip:
            return
        try:
            contained = tip is not None and anchor in self.repo \
                and self.repo.descendant_of(tip, anchor)
        except (pygit2.GitError, ValueError):
            contained = False
        if not contained:
            checker.problem(
                anchor,
                None,
                f"commit {anchor} was verified as the log's tip before, but the log no longer "
                "contains it: history was rewritten" + ("" if tip else " (the branch is gone)"),
            )

    def _verify_main_anchors(self, checker: EventChecker, chain: list[str]) -> None:
        """The log against the anchors merged proposals left on main (:mod:`.anchors`):
        each names a commit that must be the log's at exactly its position."""
        found = _anchors.main_anchors(self.repo)
        problems, newest = _anchors.check_anchors(found, chain, self.ref, self.repo)
        for where, position, message in problems:
            checker.problem(where, position, message)
        report = checker.report
        report.anchors = len(found)
        report.unanchored = len(chain) - newest
