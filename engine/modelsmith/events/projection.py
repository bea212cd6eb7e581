"""Fold the event log into fleet state: who holds which stage now, and since when.

State is never stored as truth, only cached: the cache is keyed by the log's tip and by
the position and id of the last event folded, so a warm read costs one ref lookup, and a
log that gained events is caught up by folding only the new ones.
"""

from __future__ import annotations

import gc
import pickle
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from modelsmith.events.cachefile import write_cache
from modelsmith.events.store import EventStore
from modelsmith.events.types import (
    CandidateRegistered,
    EvalCompleted,
    Event,
    InvalidEventError,
    Lineage,
    MetricsObserved,
    Promoted,
    PromotionRejected,
    RolledBack,
)

_CACHE_FORMAT = 6


@dataclass(slots=True)
class Assignment:
    """One period during which a version held a stage."""

    stage: str
    version: str
    since: datetime
    event_id: str
    actor: str
    cause: str | None = None
    traffic: float | None = None
    until: datetime | None = None
    ended_by: str | None = None  # the event type that ended it (Promoted, RolledBack)
    rolled_back_for: str | None = None  # why it was rolled back (not just demoted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "version": self.version,
            "since": self.since.isoformat(),
            "until": self.until.isoformat() if self.until else None,
            "traffic": self.traffic,
            "event_id": self.event_id,
            "actor": self.actor,
            "cause": self.cause,
            "ended_by": self.ended_by,
        }


@dataclass(slots=True)
class EvalRecord:
    event_id: str
    at: datetime
    model: str
    suite_hash: str
    composite: float
    heldout: float | None
    decision: float | None = None  # dev or unseen composite (EvalCompleted.decision)
    decision_metric: str | None = None  # None: too few unseen scenarios and no dev split
    # Recorded before evaluations had a decision metric: the gates count its composite.
    legacy: bool = False
    run_id: str = ""  # the evaluation run (a gate counts each once)
    weights_hash: str | None = None  # the weights it measured (EvalCompleted.weights_hash)
    seq: int = 0  # its place in the specialist's log
    partial: bool = False  # a --limit run (the first N scenarios): gates never count it


@dataclass(slots=True)
class Candidate:
    version: str
    registered_at: datetime
    event_id: str
    lineage: Lineage
    evals: list[EvalRecord] = field(default_factory=list)

    def latest(self) -> EvalRecord | None:
        return self.evals[-1] if self.evals else None


@dataclass(slots=True)
class SpecialistState:
    name: str
    stages: dict[str, Assignment] = field(default_factory=dict)
    history: list[Assignment] = field(default_factory=list)
    candidates: dict[str, Candidate] = field(default_factory=dict)
    model_evals: list[EvalRecord] = field(default_factory=list)  # evals of unversioned models
    rejections: list[dict[str, Any]] = field(default_factory=list)
    # "version@stage" -> {requests, bootstrap (cumulative sums), last (metrics), at}
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: int = 0
    last_seq: int = 0
    last_at: datetime | None = None
    invalid: int = 0

    def holder(self, stage: str) -> Assignment | None:
        return self.stages.get(stage)

    def previous_holder(self, stage: str, held: Assignment | None = None) -> str | None:
        """The version that held ``stage`` before ``held`` (default: its holder now) --
        what a rollback of that stage goes back to; None (the stage is left empty) when
        nothing held it before, or when that version holds another stage now (a canary
        rolled back while its predecessor serves production: production answers it all,
        and stays where it is)."""
        held = held if held is not None else self.holder(stage)
        if held is None:
            return None
        earlier = [a for a in self.history if a.stage == stage and a.version != held.version
                   and a.since < held.since]
        if not earlier:
            return None
        back = earlier[-1].version
        elsewhere = any(a.version == back for name, a in self.stages.items() if name != stage)
        return None if elsewhere else back

    def to_dict(self) -> dict[str, Any]:
        def current(stage: str) -> dict[str, Any] | None:
            a = self.stages.get(stage)
            return None if a is None else {"version": a.version, "since": a.since.isoformat(),
                                           "traffic": a.traffic}

        latest = None
        if self.candidates:
            cand = self.candidates[next(reversed(self.candidates))]
            rec = cand.latest()
            latest = {
                "version": cand.version,
                "composite": rec.composite if rec else None,
                "evaluations": len(cand.evals),
            }
        return {
            "name": self.name,
            "production": current("production"),
            "canary": current("canary"),
            "shadow": current("shadow"),
            "candidates": len(self.candidates),
            "latest_candidate": latest,
            "rejections": len(self.rejections),
            "events": self.events,
            "last_seq": self.last_seq,
            "last_event_at": self.last_at.isoformat() if self.last_at else None,
        }


@dataclass(slots=True)
class FleetState:
    specialists: dict[str, SpecialistState] = field(default_factory=dict)
    position: int = 0
    last_event_id: str | None = None
    tip: str | None = None

    def specialist(self, name: str) -> SpecialistState:
        state = self.specialists.get(name)
        if state is None:
            state = self.specialists[name] = SpecialistState(name)
        return state

    def apply(self, event: Event) -> None:
        """Fold one event. Unknown or invalid payloads are counted, never fatal."""
        self.position = event.position or self.position + 1
        self.last_event_id = event.id
        s = self.specialist(event.stream)
        s.events += 1
        s.last_seq = event.seq
        s.last_at = event.at
        try:
            payload = event.payload()
        except InvalidEventError:
            s.invalid += 1
            return
        match payload:
            case CandidateRegistered():
                s.candidates[payload.version] = Candidate(
                    payload.version, event.at, event.id, payload.lineage
                )
            case EvalCompleted():
                rec = EvalRecord(event.id, event.at, payload.model, payload.suite_hash,
                                 payload.composite, payload.heldout, payload.decision,
                                 payload.decision_metric,
                                 payload.decision_metric is None and not (
                                     payload.unseen_n or payload.dev_n or payload.seen),
                                 payload.run_id, payload.weights_hash, event.seq,
                                 bool(payload.limit))
                cand = s.candidates.get(payload.version) if payload.version else None
                (cand.evals if cand else s.model_evals).append(rec)
            case Promoted():
                for stage, held in list(s.stages.items()):
                    if held.version == payload.version or stage == payload.stage:
                        _end(s, stage, event)
                assignment = Assignment(payload.stage, payload.version, event.at, event.id,
                                        event.actor, event.cause, payload.traffic)
                s.stages[payload.stage] = assignment
                s.history.append(assignment)
            case RolledBack():
                ended = _end(s, payload.stage, event)
                if ended is not None and (payload.metric or payload.to_version):
                    ended.rolled_back_for = payload.reason
                if payload.to_version:
                    for stage, held in list(s.stages.items()):
                        if held.version == payload.to_version:
                            _end(s, stage, event)
                    assignment = Assignment(payload.stage, payload.to_version, event.at,
                                            event.id, event.actor, event.cause)
                    s.stages[payload.stage] = assignment
                    s.history.append(assignment)
            case PromotionRejected():
                s.rejections.append({"at": event.at.isoformat(), "event_id": event.id,
                                     "version": payload.version, "stage": payload.stage,
                                     "gate": payload.gate, "reason": payload.reason})
            case MetricsObserved():
                key = f"{payload.version}@{payload.stage}"
                prev = s.metrics.get(key, {"requests": 0, "bootstrap": 0})
                s.metrics[key] = {"requests": prev["requests"] + payload.requests,
                                  "bootstrap": prev["bootstrap"] + payload.bootstrap,
                                  "last": payload.metrics, "at": event.at.isoformat()}
            case _:
                pass

    def to_dict(self) -> dict[str, Any]:
        return {
            "tip": self.tip,
            "events": self.position,
            "specialists": [self.specialists[n].to_dict() for n in sorted(self.specialists)],
        }


def _end(s: SpecialistState, stage: str, event: Event) -> Assignment | None:
    held = s.stages.pop(stage, None)
    if held is not None:
        held.until = event.at
        held.ended_by = event.type
    return held


def fold(store: EventStore, cache: Path | None = None) -> FleetState:
    """Fleet state at the log's tip; with ``cache``, replay only what is new."""
    tip = store.tip()
    state = _load(cache) if cache else None
    if state is not None and state.tip is not None and state.tip == tip:
        return state
    # A store that can fold without its index (the git store: from the cached state's tip
    # or the newest snapshot in the log, walking back from the tip) does so first.
    fold_cold = getattr(store, "fold_cold", None)
    if fold_cold is not None and tip is not None:
        quick = fold_cold(tip, state if state is not None and state.tip is not None else None)
        if quick is not None:
            if cache:
                _save(cache, quick)
            return quick
    if state is not None and state.last_event_id is not None:
        last = store.get(state.last_event_id)
        if last is None or last.position != state.position:
            state = None  # the log was rewritten under the cache: fold from scratch
    if state is None:
        state = FleetState()
    for event in store.read(after=state.position):
        state.apply(event)
    # Another writer may have appended while we read: key the cache by the tip only when it
    # did not move; otherwise the next read takes the (still correct) id/position path.
    state.tip = tip if store.tip() == tip else None
    if cache:
        _save(cache, state)
    return state


def fold_until(events: Iterable[Event], cutoff: datetime,
               position: int | None = None) -> FleetState:
    """Fleet state from the events recorded by ``cutoff`` (or, with ``position``, the
    first ``position`` events of the log)."""
    state = FleetState()
    for event in events:
        if (event.position or 0) <= position if position is not None else event.at <= cutoff:
            state.apply(event)
    return state


def fleet_status(store: EventStore, cache_dir: Path | None = None) -> dict[str, Any]:
    """The status table (one row per specialist), cached apart from the full state so a
    warm read loads a few kilobytes instead of the whole history."""
    tip = store.tip()
    summary_path = cache_dir / "status.pickle" if cache_dir else None
    if summary_path and tip is not None:
        cached = _load(summary_path, dict)
        if cached is not None and cached.get("tip") == tip:
            return cached
    # No folded state here (a fresh clone): a store that keeps status rows in its log's
    # snapshots (the git store) answers from the newest one and the events after it.
    status_cold = getattr(store, "status_cold", None)
    if status_cold is not None and tip is not None and not (
            cache_dir and (cache_dir / "fleet.pickle").exists()):
        quick = status_cold(tip)
        if quick is not None:
            if summary_path:
                _save(summary_path, quick)
            return quick
    state = fold(store, cache_dir / "fleet.pickle" if cache_dir else None)
    summary = state.to_dict()
    if summary_path and state.tip is not None:
        _save(summary_path, summary)
    return summary


@contextmanager
def _no_gc() -> Iterator[None]:
    # Unpickling allocates many small containers; the cyclic GC would rescan them over and
    # over (4x slower at 100k events). They form no garbage cycles, so pause it.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load(path: Path, kind: type = FleetState) -> Any:
    try:
        with open(path, "rb") as fh, _no_gc():
            fmt, value = pickle.load(fh)
    except (OSError, EOFError, ValueError, TypeError, AttributeError, pickle.UnpicklingError):
        return None
    return value if fmt == _CACHE_FORMAT and isinstance(value, kind) else None


def _save(path: Path, value: Any) -> None:
    """Best effort: a cache that cannot be written (read-only checkout) costs only time."""
    def write(fh: Any) -> None:
        with _no_gc():
            pickle.dump((_CACHE_FORMAT, value), fh, protocol=pickle.HIGHEST_PROTOCOL)

    write_cache(path, write)
