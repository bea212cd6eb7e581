"""A specialist: its stage timeline, score history per iteration, dataset growth."""

from __future__ import annotations

from collections.abc import Mapping

from ..render import View, render
from ..source import Source
from . import NotFound, Page


def render_specialist(source: Source, view: View, params: Mapping[str, str]) -> str:
    state = source.state().specialists.get(params["name"])
    if state is None:
        raise NotFound(f"no specialist {params['name']!r} in the event log")
    return render("specialist.html", view, source, name=state.name, state=state)


PAGE = Page("specialist", "/specialists/{name}", render_specialist,
            lambda source: [{"name": n} for n in source.state().specialists])
