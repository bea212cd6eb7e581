"""The event log, paged, by stream and type; each event's JSON and the commit that recorded it.

Paths (each also a file of the static report): ``/log`` (the newest page of every stream),
``/log/<stream>`` (a stream's newest page; ``all`` for every stream) and
``/log/<stream>/<page>``. Pages hold :data:`~..render.LOG_PAGE` events, numbered from the
oldest (page 1), and list them newest first, so an event stays on its page as the log
grows: :func:`~..render.event_url` links to any event (``#e-<event id>`` is its row). The
type filter works on the page (a select, in the static report too); the dashboard also
filters every page of a stream by type with ``?type=<EventType>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from itertools import islice
from typing import Any

from modelsmith.events.pages import ALL_STREAMS
from modelsmith.events.types import EVENT_TYPES, Event, InvalidEventError

from ..render import LOG_PAGE, View, log_page, render
from ..source import Source
from . import NotFound, Page

ALL = ALL_STREAMS  # the path segment that stands for every stream


def _count(source: Source, stream: str) -> int:
    """How many events ``stream`` (``all``: the log) holds; NotFound for no such stream."""
    state = source.state()
    if stream == ALL:
        return state.position
    s = state.specialists.get(stream)
    if s is None:
        known = ", ".join(sorted(state.specialists)[:20]) or "none"
        raise NotFound(f"no stream {stream!r} in the event log (streams: {known})")
    return s.last_seq


def _page_number(text: str | None, pages: int) -> int:
    if text is None:
        return pages
    if not text.isdigit() or not 1 <= int(text) <= pages:
        raise NotFound(f"no page {text!r} of the event log here (pages 1 to {pages})")
    return int(text)


def _read(source: Source, stream: str, page: int) -> list[Event]:
    """Page ``page`` of ``stream``, oldest first (read from the store, not the whole log)."""
    def read() -> list[Event]:
        events = source.store.read(None if stream == ALL else stream,
                                   after=(page - 1) * LOG_PAGE)
        return list(islice(events, LOG_PAGE))
    return source.memo(("log", stream, page), read)


def _pager(view: View, stream: str, page: int, pages: int,
           query: Mapping[str, str]) -> list[dict[str, Any]]:
    """Links to the newest, newer, older and oldest pages and to those around this one."""
    def link(label: str, n: int) -> dict[str, Any]:
        return {"label": label, "url": view.url("log", stream, str(n), **query),
                "current": n == page}

    out = []
    if page < pages:
        out += [link("newest", pages), link("newer", page + 1)]
    shown = sorted({1, pages, *range(max(1, page - 3), min(pages, page + 3) + 1)},
                   reverse=True)
    last = None
    for n in shown:
        if last is not None and last - n > 1:
            out.append({"label": "…", "url": None, "current": False})
        out.append(link(str(n), n))
        last = n
    if page > 1:
        out += [link("older", page - 1), link("oldest", 1)]
    return out


def rows(source: Source, events: list[Event]) -> Iterator[dict[str, Any]]:
    """What the page shows of each event (newest first)."""
    state = source.state()
    for e in reversed(events):
        data = e.model_dump(mode="json", by_alias=True)
        try:
            summary, valid = e.payload().summary(), True
        except InvalidEventError:  # an invalid or unknown payload: its JSON says what it is
            summary, valid = "", False
        evaluation = valid and e.type == "EvalCompleted" and e.stream in state.specialists
        yield {"event": e, "json": json.dumps(data, indent=2, sort_keys=True),
               "commit": source.commit_of(e.id), "summary": summary,
               "evaluation": evaluation}


def render_log(source: Source, view: View, params: Mapping[str, str]) -> str:
    stream = params.get("stream", ALL)
    wanted = None if view.static else (view.query.get("type") or None)
    streams = sorted(source.state().specialists)
    if wanted is None:
        total = _count(source, stream)
        pages = max(1, -(-total // LOG_PAGE))
        page = _page_number(params.get("page"), pages)
        events = _read(source, stream, page)
    else:
        _count(source, stream)  # NotFound for a stream that is not in the log
        matching = source.memo(("log-type", stream, wanted), lambda: [
            e for e in source.events(None if stream == ALL else stream) if e.type == wanted])
        total = len(matching)
        pages = max(1, -(-total // LOG_PAGE))
        page = _page_number(params.get("page"), pages)
        events = matching[(page - 1) * LOG_PAGE:page * LOG_PAGE]
    query = {"type": wanted} if wanted else {}
    listed = list(rows(source, events))
    return render("log.html", view, source, stream=stream, streams=streams, page=page,
                  pages=pages, total=total, rows=listed, wanted=wanted,
                  pager=_pager(view, stream, page, pages, query),
                  page_types=sorted({r["event"].type for r in listed}),
                  known_types=sorted({name for name, _ in EVENT_TYPES}),
                  first=(page - 1) * LOG_PAGE + 1, last=(page - 1) * LOG_PAGE + len(events))


def _instances(source: Source) -> Iterator[dict[str, str]]:
    """``/log``, then every page of every stream and of ``all``: one file per 100 events
    of each (so twice the log's events over 100, plus a page per stream)."""
    state = source.state()
    yield {}
    for stream, count in [(ALL, state.position),
                          *((s.name, s.last_seq) for s in state.specialists.values())]:
        yield {"stream": stream}
        for page in range(1, log_page(count) + 1):
            yield {"stream": stream, "page": str(page)}


PAGES = [
    Page("log-page", "/log/{stream}/{page}", render_log,
         lambda source: (p for p in _instances(source) if "page" in p)),
    Page("log-stream", "/log/{stream}", render_log,
         lambda source: (p for p in _instances(source) if list(p) == ["stream"])),
    Page("log", "/log", render_log, lambda source: (p for p in _instances(source) if not p)),
]
