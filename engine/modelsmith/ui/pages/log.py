"""The event log, paged, by stream and type; each event's JSON and commit."""

from __future__ import annotations

from collections.abc import Mapping

from ..render import View, render
from ..source import Source
from . import Page

PER_PAGE = 100


def render_log(source: Source, view: View, params: Mapping[str, str]) -> str:
    events = source.events()
    return render("log.html", view, source, events=events[-PER_PAGE:])


PAGES = [Page("log", "/log", render_log, lambda source: [{}])]
