"""A specialist: the stages it holds now, its stage timeline (who held what, from when to
when, by which event, actor and cause; rollbacks marked with their reason), the score history
per iteration (one candidate version each: its latest full evaluation's decision metric, core
composite and held-out, against the specialist's target), the dataset growth per iteration
(every ``DatasetBuilt``: rows, new rows, sources), its candidates, evaluations and gate
rejections. Charts are plotly figures (:mod:`..charts`).

Every score names its split: the core composite is over scenarios training may have seen;
the decision metric (dev, or unseen: core scenarios outside the candidate's lineage) and
held-out are what it never trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from modelsmith.events.projection import Assignment, EvalRecord, SpecialistState
from modelsmith.events.types import (
    DatasetBuilt,
    EvalCompleted,
    Event,
    InvalidEventError,
    Promoted,
    RolledBack,
)

from .. import charts
from ..render import View, event_url, render
from ..source import Source
from . import NotFound, Page

STAGES = ("production", "canary", "shadow")


def log_link(view: View, source: Source, event_id: str) -> str:
    """Where an event is shown: the event log page that holds it, at its row
    (``#e-<id>``); the log's newest page for an event not in the log."""
    return event_url(view, source, event_id) or view.url("log")


def specialist(source: Source, name: str) -> SpecialistState:
    state = source.state().specialists.get(name)
    if state is None:
        raise NotFound(f"no specialist {name!r} in the event log")
    return state


def payloads(source: Source, name: str) -> dict[str, tuple[Event, Any]]:
    """The stream's events by id with their typed payloads (None where invalid)."""
    def make() -> dict[str, tuple[Event, Any]]:
        out: dict[str, tuple[Event, Any]] = {}
        for event in source.events(name):
            try:
                out[event.id] = (event, event.payload())
            except InvalidEventError:
                out[event.id] = (event, None)
        return out
    return source.memo(("payloads", name), make)


def _changes(events: Mapping[str, tuple[Event, Any]]) -> dict[datetime, list[tuple[Event, Any]]]:
    """The stream's stage changes (``Promoted``, ``RolledBack``) by time."""
    out: dict[datetime, list[tuple[Event, Any]]] = {}
    for event, payload in events.values():
        if isinstance(payload, Promoted | RolledBack):
            out.setdefault(event.at, []).append((event, payload))
    return out


def _ending(a: Assignment, changes: Mapping[datetime, list[tuple[Event, Any]]],
            after: int) -> tuple[Event | None, Any]:
    """The event that ended ``a``: the first of its type at its end time, after it began,
    that concerns its stage or version."""
    for event, payload in changes.get(a.until, []) if a.until is not None else []:
        if event.type != a.ended_by or event.seq <= after:
            continue
        if isinstance(payload, Promoted) and (payload.version == a.version
                                              or payload.stage == a.stage):
            return event, payload
        if isinstance(payload, RolledBack) and (payload.stage == a.stage
                                                or payload.to_version == a.version):
            return event, payload
    return None, None


def periods(state: SpecialistState, events: Mapping[str, tuple[Event, Any]],
            version: str | None = None) -> list[dict[str, Any]]:
    """The stage timeline (of one version, when given), oldest first: each period a version
    held a stage, the event that gave it and the one that ended it, in words."""
    out = []
    changes = _changes(events)
    for a in state.history:
        if version is not None and a.version != version:
            continue
        began = events.get(a.event_id, (None, None))
        seq = began[0].seq if began[0] is not None else 0
        end_event, end = _ending(a, changes, seq)
        rolled_back = a.rolled_back_for is not None
        if a.until is None:
            ended = "holds it now"
        elif rolled_back:
            ended = f"rolled back: {a.rolled_back_for}"
        elif isinstance(end, RolledBack):
            ended = (f"demoted: {end.reason}" if end.stage == a.stage
                     else f"moved to {end.stage} by a rollback")
        elif isinstance(end, Promoted):
            ended = (f"promoted to {end.stage}" if end.version == a.version
                     else f"replaced by {end.version}")
        else:
            ended = f"ended by {a.ended_by or 'an event'}"
        out.append({"stage": a.stage, "version": a.version, "since": a.since,
                    "until": a.until, "traffic": a.traffic, "event_id": a.event_id,
                    "event_type": began[0].type if began[0] is not None else "",
                    "restored": isinstance(began[1], RolledBack),
                    "actor": a.actor, "cause": a.cause, "ended": ended,
                    "ended_by": a.ended_by,
                    "end_event_id": end_event.id if end_event is not None else None,
                    "rolled_back": rolled_back, "reason": a.rolled_back_for})
    return out


def latest_full(evals: list[EvalRecord]) -> EvalRecord | None:
    """The newest evaluation over the whole suite (a ``--limit`` run never counts)."""
    full = [e for e in evals if not e.partial]
    return full[-1] if full else None


def evaluation_row(rec: EvalRecord, events: Mapping[str, tuple[Event, Any]]) -> dict[str, Any]:
    """An evaluation's numbers, each with its n, from its ``EvalCompleted``."""
    payload = events.get(rec.event_id, (None, None))[1]
    p = payload if isinstance(payload, EvalCompleted) else None
    return {"event_id": rec.event_id, "at": rec.at, "model": rec.model,
            "suite_hash": rec.suite_hash, "run_id": rec.run_id, "partial": rec.partial,
            "legacy": rec.legacy, "decision": rec.decision,
            "decision_metric": rec.decision_metric,
            "decision_n": p.decision_n if p else None,
            "composite": rec.composite, "composite_ci": p.ci if p else None,
            "scenarios": p.scenarios if p else None,
            "heldout": rec.heldout, "heldout_n": p.heldout_n if p else None,
            "seen": p.seen if p else None, "failed": p.failed if p else None,
            "limit": p.limit if p else None, "warnings": list(p.warnings) if p else []}


def score_history(state: SpecialistState, events: Mapping[str, tuple[Event, Any]],
                  target: float | None) -> list[dict[str, Any]]:
    """One row per candidate version in order (an iteration): its latest full evaluation."""
    rows = []
    for i, cand in enumerate(state.candidates.values(), 1):
        rec = latest_full(cand.evals)
        row: dict[str, Any] = {"iteration": i, "version": cand.version, "evaluated": None,
                               "decision": None, "decision_metric": None,
                               "composite": None, "heldout": None, "target": target,
                               "meets": None, "partial_only": bool(cand.evals) and rec is None}
        if rec is not None:
            row.update(decision=rec.decision, decision_metric=rec.decision_metric,
                       composite=rec.composite, heldout=rec.heldout,
                       evaluated=evaluation_row(rec, events))
            if target is not None and rec.decision is not None:
                row["meets"] = rec.decision >= target
        rows.append(row)
    return rows


def datasets(state: SpecialistState,
             events: Mapping[str, tuple[Event, Any]]) -> list[dict[str, Any]]:
    """Every dataset built for the specialist, in order, with the candidates trained on it."""
    trained: dict[str, list[str]] = {}
    for cand in state.candidates.values():
        if cand.lineage.dataset_hash:
            trained.setdefault(cand.lineage.dataset_hash, []).append(cand.version)
    rows = []
    for event, payload in events.values():
        if not isinstance(payload, DatasetBuilt):
            continue
        i = len(rows) + 1
        versions = trained.get(payload.dataset_hash, [])
        source_eval = events.get(payload.eval_event or "", (None, None))[0]
        rows.append({
            "index": i, "iteration": payload.iteration, "event_id": event.id, "at": event.at,
            "label": f"{i}: {', '.join(versions) or payload.dataset_hash[:8]}",
            "dataset_hash": payload.dataset_hash, "rows": payload.rows,
            "new_rows": payload.new_rows, "sources": dict(payload.sources),
            "removed": {k: v for k, v in payload.removed.items() if v},
            "balance": dict(payload.balance), "path": payload.path, "seed": payload.seed,
            "teacher": payload.teacher, "scenarios": len(payload.scenarios),
            "restated": len(payload.restated), "versions": versions,
            "eval_event": payload.eval_event,
            "eval_linked": source_eval is not None and source_eval.type == "EvalCompleted"})
    return rows


def context(source: Source, name: str) -> dict[str, Any]:
    """What the specialist page shows, gathered once per log tip (links are the view's)."""
    state = specialist(source, name)

    def make() -> dict[str, Any]:
        events = payloads(source, state.name)
        target = source.targets().get(state.name)
        timeline = periods(state, events)
        history = score_history(state, events, target)
        built = datasets(state, events)
        evaluations = sorted(
            [({"version": c.version} | evaluation_row(e, events))
             for c in state.candidates.values() for e in c.evals]
            + [({"version": None} | evaluation_row(e, events)) for e in state.model_evals],
            key=lambda r: r["at"])
        figures = {
            "timeline": charts.stage_timeline(timeline, datetime.now(UTC))
            if timeline else None,
            "scores": charts.score_history(history, target)
            if any(r["evaluated"] for r in history) else None,
            "datasets": charts.dataset_growth(built) if built else None,
        }
        current = [{"stage": s, "held": state.stages.get(s)} for s in STAGES]
        return {"name": state.name, "state": state, "current": current,
                "timeline": timeline, "history": history, "target": target,
                "datasets": built, "evaluations": evaluations, "figures": figures}
    return source.memo(("specialist", name), make)


def render_specialist(source: Source, view: View, params: Mapping[str, str]) -> str:
    values = context(source, params["name"])
    return render("specialist.html", view, source, **values,
                  log_link=lambda event_id: log_link(view, source, event_id))


PAGE = Page("specialist", "/specialists/{name}", render_specialist,
            lambda source: [{"name": n} for n in source.state().specialists])
