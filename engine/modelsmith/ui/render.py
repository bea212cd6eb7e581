"""Rendering: the Jinja2 environment (every value HTML-escaped) and the :class:`View` a
page renders for, which makes its links: absolute paths on the dashboard, paths relative to
the page's own file in the static report (so the report opens from ``file://`` and from any
folder it is published under).

A page links to an event of the log with :func:`event_url` (in templates:
``event_url(event_id)``): the event log page of all streams that lists it, and its row's
anchor (``#e-<event id>``); log pages are numbered from the oldest, :data:`LOG_PAGE` events
each, so an event's page never changes as the log grows."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache, lru_cache
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from modelsmith.events.pages import ALL_STREAMS, page_path, report_file
from modelsmith.events.pages import segment as segment  # the pages' path segments

#: Events per page of the event log (page 1 holds the oldest).
LOG_PAGE = 100


@dataclass
class View:
    """The page being rendered: where it is (``path``, e.g. ``/specialists/rtb``), whether
    for the static report, and the query of its request (the dashboard only)."""

    path: str
    static: bool = False
    query: Mapping[str, str] = field(default_factory=dict)
    token: str | None = None  # never rendered; kept for links that need none

    def file(self, path: str) -> str:
        """The static report's file for the dashboard path ``path``."""
        return report_file(path)

    def url(self, *parts: str, **query: Any) -> str:
        """The link to the page at ``/part/part/...``; ``query`` only on the dashboard
        (the static report has a file per page and filters on the page itself)."""
        path = page_path(*parts)
        if not self.static:
            q = {k: v for k, v in query.items() if v not in (None, "", False)}
            return path + ("?" + urlencode(q) if q else "")
        return _relative(self.file(path), posixpath.dirname(self.file(self.path)) or ".")

    def asset(self, name: str) -> str:
        """A file of ``assets/`` (style sheet, scripts, the charting library)."""
        if not self.static:
            return f"/assets/{name}"
        here = posixpath.dirname(self.file(self.path))
        return posixpath.relpath(f"assets/{name}", here or ".")


@lru_cache(maxsize=1 << 16)
def _relative(target: str, here: str) -> str:
    """``target`` relative to the folder ``here`` (a fleet page makes thousands of links)."""
    return posixpath.relpath(target, here)


def when(value: Any) -> str:
    """A time as ``2026-12-01 23:58:06Z`` (ISO strings and datetimes alike)."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    return value.strftime("%Y-%m-%d %H:%M:%S") + ("Z" if value.utcoffset() is not None
                                                  and not value.utcoffset() else "")


def number(value: Any, digits: int = 3) -> str:
    """A score or ratio with ``digits`` decimals; ``—`` for none."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def short(value: Any, n: int = 10) -> str:
    text = "" if value is None else str(value)
    return text[:n]


def log_page(position: int) -> int:
    """The event log page (of all streams, or of one stream for a seq) holding
    ``position``."""
    return max(position - 1, 0) // LOG_PAGE + 1


def event_url(view: View, source: Any, event: Any) -> str | None:
    """The link to ``event`` (an :class:`~modelsmith.events.types.Event` or its id) on the
    event log: ``view.url('log', ALL_STREAMS, page) + '#e-' + id``; None for an event not in
    the log."""
    if isinstance(event, str):
        event = source.event(event)
    if event is None:
        return None
    position = event.position
    if not position:  # a store that does not number its events: count them
        position = next((i for i, e in enumerate(source.events(), start=1)
                         if e.id == event.id), 0)
    return view.url("log", ALL_STREAMS, str(log_page(position))) + "#e-" + event.id


@cache
def environment() -> Environment:
    env = Environment(loader=PackageLoader("modelsmith.ui", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=when, number=number, short=short)
    env.globals["all_streams"] = ALL_STREAMS  # the event log's segment for every stream
    return env


def render(template: str, view: View, source: Any, **values: Any) -> str:
    """``template`` rendered for ``view``: every page gets ``view``, ``title``, the
    log's ``tip`` and ``event_url(event or id)`` (:func:`event_url`) beside its own values."""
    values.setdefault("event_url", lambda event: event_url(view, source, event))
    return environment().get_template(template).render(
        view=view, title=source.title, tip=source.tip(), static=view.static, **values)
