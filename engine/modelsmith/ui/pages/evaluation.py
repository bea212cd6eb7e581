"""An evaluation down to the scenario; two evaluations side by side."""

from __future__ import annotations

from collections.abc import Mapping

from ..render import View, render
from ..source import Source
from . import NotFound, Page


def _evaluation(source: Source, name: str, event_id: str):
    event = source.event(event_id)
    if event is None or event.type != "EvalCompleted" or event.stream != name:
        raise NotFound(f"no evaluation {event_id!r} of {name!r} in the event log")
    return event


def render_evaluation(source: Source, view: View, params: Mapping[str, str]) -> str:
    event = _evaluation(source, params["name"], params["event_id"])
    return render("evaluation.html", view, source, name=params["name"], event=event,
                  runs=source.runs(event))


def _instances(source: Source):
    for s in source.state().specialists.values():
        for rec in [e for c in s.candidates.values() for e in c.evals] + s.model_evals:
            yield {"name": s.name, "event_id": rec.event_id}


PAGES = [Page("evaluation", "/specialists/{name}/evaluations/{event_id}", render_evaluation,
              _instances)]
