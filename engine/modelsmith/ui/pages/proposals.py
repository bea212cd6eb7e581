"""Open proposals (pull requests) with the plan's gates, and the plan itself."""

from __future__ import annotations

from collections.abc import Mapping

from ..render import View, render
from ..source import Source
from . import Page


def render_proposals(source: Source, view: View, params: Mapping[str, str]) -> str:
    return render("proposals.html", view, source, plan=source.plan())


PAGE = Page("proposals", "/proposals", render_proposals, lambda source: [{}])
