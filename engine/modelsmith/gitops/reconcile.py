"""``reconcile``: apply the plan by appending its events.

``promote`` -> ``Promoted``; ``demote`` -> ``RolledBack`` to nothing; ``rollback`` ->
``RolledBack`` to the previous holder (at once: no analysis delay); ``reject`` ->
``PromotionRejected`` with the failing gate and its numbers. ``evaluate`` needs a model run
and is reported, not applied (``modelsmith eval`` records the evaluation; the next
reconcile decides).

Each specialist's events are appended with the stream's sequence number the plan was made
from as the expectation: when another reconciler appended in between, the append fails,
the log is folded again and the plan made again -- so two reconcilers acting on the same
change record one decision, not two. Running it again with nothing new appends nothing:
the plan of a reconciled log is empty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelsmith.errors import ModelsmithError
from modelsmith.events.projection import fold
from modelsmith.events.store import ConcurrencyError, EventStore
from modelsmith.events.types import Approval as LoggedApproval
from modelsmith.events.types import Bootstrap, Event, Promoted, PromotionRejected, RolledBack

from .plan import (
    Action,
    ApprovalFn,
    Desired,
    EvidenceFn,
    HeldoutFn,
    plan,
    previous_holder,
)

#: Re-plans after losing a race before giving up.
ATTEMPTS = 20


class ReconcileError(ModelsmithError, RuntimeError):
    """The log kept moving under the reconciler."""


@dataclass
class ReconcileResult:
    applied: list[tuple[Action, Event]] = field(default_factory=list)
    pending: list[Action] = field(default_factory=list)  # evaluations to run first
    replans: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"applied": [{**a.to_dict(), "event": e.id, "type": e.type}
                            for a, e in self.applied],
                "pending": [a.to_dict() for a in self.pending], "replans": self.replans}


def event_for(action: Action) -> Any:
    """The payload that records ``action``."""
    if action.kind == "promote":
        approval = action.approval
        return Promoted(version=action.version, stage=action.stage, previous=action.previous,
                        traffic=action.traffic,
                        bootstrap=None if action.bootstrap is None
                        else Bootstrap(**action.bootstrap),
                        approval=None if approval is None else LoggedApproval(
                            forge=approval.forge, ref=approval.ref,
                            merged_by=approval.merged_by, approvers=list(approval.approvers)))
    if action.kind in ("demote", "rollback"):
        gate = action.gates[0] if action.gates else None
        numbers = gate.numbers if gate else {}
        return RolledBack(stage=action.stage, from_version=action.previous,
                          to_version=action.version, reason=action.reason,
                          metric=numbers.get("metric"), value=numbers.get("value"),
                          threshold=numbers.get("threshold"))
    if action.kind == "reject":
        failed = next(g for g in action.gates if not g.passed)
        return PromotionRejected(version=action.version, stage=action.stage, gate=failed.name,
                                 reason=failed.detail, numbers=dict(failed.numbers))
    raise ValueError(f"{action.kind} is not recorded by reconcile")


def _cause(action: Action, default: str | None) -> str | None:
    """A promotion a human approved is caused by that change (``github:#12``, ``local:<merge
    commit>``); everything else by the commit reconciled."""
    if action.approval is not None:
        return f"{action.approval.forge}:{action.approval.ref}"
    return default


def reconcile(store: EventStore, desired: dict[str, Desired], *, actor: str = "reconcile",
              cause: str | None = None, heldout: HeldoutFn = lambda *_: None,
              approval: ApprovalFn = lambda *_: None,
              evidence: EvidenceFn = lambda *_: None, cache: Path | None = None,
              on_race: Callable[[str], None] = lambda _stream: None) -> ReconcileResult:
    """Plan and append until the plan is empty or only evaluations remain."""
    result = ReconcileResult()
    for _ in range(ATTEMPTS):
        fleet = fold(store, cache)
        actions = plan(desired, fleet, heldout=heldout, approval=approval, evidence=evidence)
        result.pending = [a for a in actions if a.kind == "evaluate"]
        todo = [a for a in actions if a.kind != "evaluate"]
        if not todo:
            return result
        raced = False
        for stream in sorted({a.specialist for a in todo}):
            mine = [a for a in todo if a.specialist == stream]
            state = fleet.specialists.get(stream)
            expected = state.last_seq if state else 0
            events = [Event.new(event_for(a), actor=actor, cause=_cause(a, cause))
                      for a in mine]
            try:
                recorded = store.append(stream, events, expected)
            except ConcurrencyError:
                raced = True
                on_race(stream)
                continue
            result.applied += list(zip(mine, recorded, strict=True))
        if raced:
            result.replans += 1
    raise ReconcileError(f"the event log kept moving: {ATTEMPTS} plans lost the race")


def manual_rollback(store: EventStore, specialist: str, stage: str, *, to: str | None = None,
                    reason: str = "by hand", actor: str = "cli", cause: str | None = None,
                    cache: Path | None = None) -> Event:
    """Roll ``stage`` back now: to ``to``, or to the version that held it before."""
    state = fold(store, cache).specialists.get(specialist)
    held = state.holder(stage) if state else None
    if state is None or held is None:
        raise ReconcileError(f"{specialist} has nothing in {stage} to roll back")
    demoted = False
    if to is None:
        to = previous_holder(state, stage, held)
        if to is None and stage == "production":
            raise ReconcileError(f"no version held {stage} before {held.version}; name one "
                                 "with --to")
        demoted = to is None  # the first shadow or canary leaves the stage empty
    elif to not in state.candidates:
        known = ", ".join(state.candidates) or "none"
        raise ReconcileError(f"{specialist} has no candidate {to} (registered: {known})")
    if to == held.version:
        raise ReconcileError(f"{to} already holds {stage}")
    payload = RolledBack(stage=stage, from_version=held.version, to_version=to,
                         reason=f"manual rollback: {reason}" + (
                             f" (nothing held {stage} before {held.version}: it is left "
                             "empty)" if demoted else ""))
    (event,) = store.append(specialist, [Event.new(payload, actor=actor, cause=cause)],
                            state.last_seq)
    return event
