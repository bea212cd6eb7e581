"""A candidate version: lineage, evaluations, stage history."""

from __future__ import annotations

from collections.abc import Mapping

from ..render import View, render
from ..source import Source
from . import NotFound, Page


def render_candidate(source: Source, view: View, params: Mapping[str, str]) -> str:
    state = source.state().specialists.get(params["name"])
    cand = state.candidates.get(params["version"]) if state else None
    if state is None or cand is None:
        raise NotFound(f"no candidate {params['version']!r} of {params['name']!r} in the log")
    return render("candidate.html", view, source, name=state.name, cand=cand)


PAGE = Page("candidate", "/specialists/{name}/candidates/{version}", render_candidate,
            lambda source: [{"name": s.name, "version": v}
                            for s in source.state().specialists.values()
                            for v in s.candidates])
