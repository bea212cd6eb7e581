"""The event store contract, its errors, and the in-memory store used by unit tests."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from modelsmith.errors import ModelsmithError
from modelsmith.events.types import Event, InvalidEventError, validate_stream
from modelsmith.events.verify import VerifyReport, verify_events


class EventStoreError(ModelsmithError):
    """Base of every error the event log raises."""


class ConcurrencyError(EventStoreError):
    """The stream moved since the caller read it: re-read, re-decide, retry."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream!r} is at seq {actual}, not {expected}: another writer appended; "
            "re-read the stream and decide again"
        )
        self.stream, self.expected, self.actual = stream, expected, actual


class EventConflictError(EventStoreError):
    """An event id is already recorded with other content, or a batch is half recorded."""


class UnknownTipError(EventStoreError):
    """A tip the caller remembers is not in the log's history (the log was rewritten)."""


@runtime_checkable
class EventStore(Protocol):
    """Append-only, per-stream sequenced, idempotent by event id."""

    def append(self, stream: str, events: Sequence[Event], expected_seq: int) -> list[Event]:
        """Record ``events`` as seqs ``expected_seq+1…`` of ``stream``, atomically.

        Raises ConcurrencyError when the stream's last seq is not ``expected_seq``. Events
        whose ids are all recorded already are returned as recorded (a retried append is a
        no-op); a batch that is only partly recorded raises EventConflictError.
        """
        ...

    def read(self, stream: str | None = None, after: int | None = None) -> Iterator[Event]:
        """Events in log order. With ``stream``, ``after`` is a seq; without, a position."""
        ...

    def read_since(self, tip: str | None) -> Iterator[Event]:
        """Events recorded after the log was at ``tip``; UnknownTipError if it never was."""
        ...

    def tip(self) -> str | None:
        """An opaque token that changes with every append; None for an empty log."""
        ...

    def last_seq(self, stream: str) -> int:
        """The stream's last seq (0 for a stream with no events)."""
        ...

    def get(self, event_id: str) -> Event | None:
        """The recorded event with this id, or None."""
        ...

    def evidence(self, event_id: str) -> dict[str, bytes]:
        """The evidence files recorded with an event (name -> bytes)."""
        ...

    def verify(self) -> VerifyReport:
        """Walk the whole log and report what breaks its invariants."""
        ...


def check_batch(stream: str, events: Sequence[Event]) -> None:
    """Validation shared by every store before anything is written."""
    validate_stream(stream)
    if not events:
        raise InvalidEventError("append needs at least one event")
    seen: set[str] = set()
    for event in events:
        if event.id in seen:
            raise InvalidEventError(f"event id {event.id} appears twice in one batch")
        seen.add(event.id)
        event.payload()  # raises InvalidEventError with the field path
        if event.blobs and set(event.blobs) != set(event.evidence):
            raise InvalidEventError(f"event {event.id}: evidence names and bytes disagree")


def resolve_recorded(
    recorded: list[Event | None], events: Sequence[Event]
) -> list[Event] | None:
    """Decide idempotency: all recorded -> those; none -> None; partial -> error."""
    hits = [r for r in recorded if r is not None]
    if not hits:
        return None
    for old, new in zip(recorded, events, strict=True):
        if old is not None and not old.same_content(new):
            raise EventConflictError(
                f"event id {new.id} is already recorded as {old.type} {old.stream}#{old.seq} "
                "with other content"
            )
    if len(hits) != len(events):
        raise EventConflictError(
            f"{len(hits)} of {len(events)} events of this batch are already recorded; "
            "a batch is recorded whole or not at all"
        )
    return [r for r in recorded if r is not None]


def append_observation(
    store: EventStore, stream: str, events: Sequence[Event], attempts: int = 50
) -> list[Event]:
    """Append events that record what happened (an evaluation ran) rather than a decision
    taken on the stream's state, so a moved stream is no reason to re-decide: retry at the
    new end. Idempotent like every append."""
    for _ in range(attempts):
        try:
            return store.append(stream, events, store.last_seq(stream))
        except ConcurrencyError:
            continue
    raise EventStoreError(f"stream {stream!r} kept moving: {attempts} appends lost the race")


class Recorder:
    """Appends the events of one step of a resumable process (an iterate loop's phase).

    With a ``scope`` each event type gets a replay-safe id derived from it, and an event
    already recorded under that id is *adopted* instead of appended: a step killed half way
    and run again records each of its events once, and keeps what the first run recorded
    (the ``run_id`` of its ``EvalStarted``, say). Without a scope ids are random and every
    call appends (a command run by hand is not a replay).
    """

    def __init__(self, store: EventStore, stream: str, *, actor: str,
                 cause: str | None = None, scope: str | None = None) -> None:
        self.store, self.stream, self.actor, self.cause = store, stream, actor, cause
        self.scope = scope
        self.events: list[Event] = []  # what this step recorded or adopted, in order

    def event_id(self, type_name: str) -> str | None:
        if self.scope is None:
            return None
        return hashlib.sha256(f"{self.scope}/{type_name}".encode()).hexdigest()[:32]

    def recorded(self, type_name: str) -> Event | None:
        """The event of ``type_name`` an earlier run of this step recorded, if any."""
        event_id = self.event_id(type_name)
        return None if event_id is None else self.store.get(event_id)

    def record(self, payload: Any, *, evidence: dict[str, bytes] | None = None) -> Event:
        found = self.recorded(payload.type_name)
        if found is None:
            event = Event.new(payload, actor=self.actor, cause=self.cause,
                              id=self.event_id(payload.type_name), evidence=evidence)
            (found,) = append_observation(self.store, self.stream, [event])
        self.events.append(found)
        return found


class MemoryEventStore:
    """A list in memory: the reference behaviour, and fast for unit tests."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._by_id: dict[str, Event] = {}
        self._streams: dict[str, list[Event]] = {}
        self._lock = threading.Lock()

    def append(self, stream: str, events: Sequence[Event], expected_seq: int) -> list[Event]:
        check_batch(stream, events)
        with self._lock:
            done = resolve_recorded([self._by_id.get(e.id) for e in events], events)
            if done is not None:
                return done
            last = len(self._streams.get(stream, ()))
            if last != expected_seq:
                raise ConcurrencyError(stream, expected_seq, last)
            out = []
            for i, event in enumerate(events, start=1):
                rec = event.recorded(stream, expected_seq + i, len(self._events) + 1)
                self._events.append(rec)
                self._by_id[rec.id] = rec
                self._streams.setdefault(stream, []).append(rec)
                out.append(rec)
            return out

    def read(self, stream: str | None = None, after: int | None = None) -> Iterator[Event]:
        with self._lock:
            source = list(self._streams.get(stream, ())) if stream else list(self._events)
        start = after or 0
        return iter(source[start:])

    def read_since(self, tip: str | None) -> Iterator[Event]:
        if tip is None:
            return self.read()
        with self._lock:
            event = self._by_id.get(tip)
        if event is None:
            raise UnknownTipError(f"tip {tip} is not in this log")
        return self.read(after=event.position)

    def tip(self) -> str | None:
        with self._lock:
            return self._events[-1].id if self._events else None

    def last_seq(self, stream: str) -> int:
        with self._lock:
            return len(self._streams.get(stream, ()))

    def get(self, event_id: str) -> Event | None:
        with self._lock:
            return self._by_id.get(event_id)

    def evidence(self, event_id: str) -> dict[str, bytes]:
        event = self.get(event_id)
        if event is None:
            raise EventStoreError(f"no event {event_id}")
        return dict(event.blobs)

    def verify(self) -> VerifyReport:
        with self._lock:
            events = list(self._events)
        return verify_events(events)
