"""Open proposals (pull requests) with the plan's gates, and the plan itself.

From the plan report the façade wires in (``modelsmith plan --json``'s object): every open
proposal -- specialist, stage, version, its forge ref or pull request URL, who opened it,
what the stage holds now -- with each gate it would meet merged today (pass or fail, its
numbers, its reason, and links to the events it was decided from: an evaluation of the
specialist opens its evaluation page, any other event the log); then the actions
``reconcile`` would take with their gates the same way, the review holds and the warnings.
A plan that cannot be made shows why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..render import View, event_url, render
from ..source import Source
from . import Page

_EVENT_ID = re.compile(r"\b[0-9a-f]{32}\b")
_SHORT_ID = re.compile(r"\b[0-9a-f]{12}\b")  # how a reason names an event: its first 12


def evaluations_of(source: Source) -> dict[str, set[str]]:
    """Specialist -> the ids of its evaluations (each has an evaluation page)."""
    def make() -> dict[str, set[str]]:
        return {s.name: {e.event_id for c in s.candidates.values() for e in c.evals}
                | {e.event_id for e in s.model_evals}
                for s in source.state().specialists.values()}
    return source.memo("evaluation-ids", make)


def evidence(gate: Mapping[str, Any], own: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The event ids a gate was decided from: its ``evidence``, an ``event_id`` among its
    numbers, any full event id its reason names, and the evaluations of ``own`` (the
    specialist's evaluation ids) it names by their first 12 characters (the evaluations a
    gate did not count, and why); each once, in that order."""
    found = [*gate.get("evidence", ())]
    numbers = gate.get("numbers") or {}
    if isinstance(numbers.get("event_id"), str):
        found.append(numbers["event_id"])
    detail = str(gate.get("detail") or "")
    found += _EVENT_ID.findall(detail)
    shorts = _SHORT_ID.findall(detail)
    if shorts:
        by_short = {e[:12]: e for e in own}
        found += [by_short[s] for s in shorts if s in by_short]
    return list(dict.fromkeys(found))


def gates(view: View, specialist: str | None, raw: list[Mapping[str, Any]],
          evaluations: Mapping[str, set[str]],
          source: Source | None = None) -> list[dict[str, Any]]:
    """The gates as the template shows them: each with its numbers in order and its
    evidence as links (``kind``: evaluation or log)."""
    own = evaluations.get(specialist or "", set())
    out = []
    for g in raw:
        links = []
        for event_id in evidence(g, own):
            if event_id in own:
                links.append({"id": event_id, "kind": "evaluation",
                              "href": view.url("specialists", specialist or "",
                                               "evaluations", event_id)})
            else:
                href = event_url(view, source, event_id) if source is not None else None
                links.append({"id": event_id, "kind": "log", "href": href or view.url("log")})
        numbers = [(k, v) for k, v in (g.get("numbers") or {}).items() if k != "event_id"]
        out.append({"name": g.get("name"), "passed": bool(g.get("passed")),
                    "detail": g.get("detail") or "", "numbers": numbers, "evidence": links})
    return out


def _is_url(ref: Any) -> bool:
    return isinstance(ref, str) and ref.startswith(("https://", "http://"))


def proposals(source: Source, view: View, plan: Mapping[str, Any]) -> list[dict[str, Any]]:
    evaluations = evaluations_of(source)
    known = set(source.state().specialists)
    out = []
    for p in plan.get("proposals") or ():
        name = p.get("specialist")
        out.append({"p": p, "url": p.get("ref") if _is_url(p.get("ref")) else None,
                    "known": name in known,
                    "gates": gates(view, name, p.get("gates") or [], evaluations, source)})
    return out


def actions(source: Source, view: View, plan: Mapping[str, Any]) -> list[dict[str, Any]]:
    evaluations = evaluations_of(source)
    known = set(source.state().specialists)
    return [{"a": a, "known": a.get("specialist") in known,
             "gates": gates(view, a.get("specialist"), a.get("gates") or [], evaluations,
                            source)}
            for a in plan.get("actions") or ()]


def render_proposals(source: Source, view: View, params: Mapping[str, str]) -> str:
    plan = source.plan()
    values: dict[str, Any] = {"plan": plan, "proposals": [], "actions": [], "holds": [],
                              "warnings": [], "error": None}
    if plan is not None and "error" in plan:
        values["error"] = str(plan["error"])
    elif plan is not None:
        values.update(proposals=proposals(source, view, plan),
                      actions=actions(source, view, plan),
                      holds=sorted((plan.get("holds") or {}).items()),
                      warnings=list(plan.get("warnings") or ()))
    return render("proposals.html", view, source, **values)


PAGE = Page("proposals", "/proposals", render_proposals, lambda source: [{}])
