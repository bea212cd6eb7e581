"""The fleet: every specialist's production, canary and shadow, its candidates, the latest
candidate's decision metric and held-out score, and the live metrics windows.

The stage, candidate and event numbers are the status table's (``modelsmith status
--json``): the same numbers in the terminal and here.

1,000 specialists render in about 0.1 s warm (``bench/ui.py``): the rows are gathered once
per log tip, and each request only makes the links for its view and fills the template in
(no macro call per cell: Jinja's call overhead was most of the time)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..render import View, number, render
from ..source import Source
from . import Page

STAGES = ("production", "canary", "shadow")


def rows(source: Source) -> list[dict[str, Any]]:
    """One row per specialist: its status row and, from the folded log, the latest
    candidate's latest full evaluation and the newest metrics window of each stage (kept
    per log tip: the page is rendered for each request, its data gathered once)."""
    return source.memo("fleet-rows", lambda: _rows(source))


def _rows(source: Source) -> list[dict[str, Any]]:
    state = source.state()
    out = []
    for row in source.status()["specialists"]:
        s = state.specialists.get(row["name"])
        latest = None
        windows = []
        if s is not None:
            for cand in reversed(s.candidates.values()):
                full = [e for e in cand.evals if not e.partial]
                if full:
                    e = full[-1]
                    latest = {"version": cand.version, "event_id": e.event_id,
                              "composite": e.composite, "heldout": e.heldout,
                              "decision": e.decision, "decision_metric": e.decision_metric,
                              "at": e.at}
                    break
            for stage in ("production", "canary", "shadow"):
                held = row.get(stage)
                if not held:
                    continue
                window = s.metrics.get(f"{held['version']}@{stage}")
                if window:
                    windows.append({"stage": stage, "version": held["version"],
                                    "requests": window["requests"], "at": window["at"],
                                    "last": window.get("last") or {}})
        desired = row.get("desired") or {}
        stages = []
        for stage in STAGES:
            held = row.get(stage)
            version = held["version"] if held else None
            traffic = held.get("traffic") if held else None
            stages.append({"stage": stage, "version": version,
                           "traffic": f"{round(traffic * 100, 1)}%" if traffic else None,
                           "wants": (desired.get(stage) or "none")
                           if desired and desired.get(stage) != version else None})
        out.append({"row": row, "evaluated": latest, "stages": stages,
                    "windows": [{**w, "shown": [(k, number(v)) for k, v in
                                                sorted(w["last"].items())[:3]]}
                                for w in windows]})
    return out


def render_fleet(source: Source, view: View, params: Mapping[str, str]) -> str:
    """The page: the rows' links made for ``view`` here (a dashboard path or a relative
    file), so the template only fills them in."""
    status = source.status()
    url = view.url
    links = []
    for r in rows(source):
        name = r["row"]["name"]
        links.append({
            "specialist": url("specialists", name),
            "stages": [url("specialists", name, "candidates", s["version"]) if s["version"]
                       else None for s in r["stages"]],
            "evaluated": url("specialists", name, "evaluations", r["evaluated"]["event_id"])
            if r["evaluated"] else None})
    return render("fleet.html", view, source, status=status, rows=rows(source), links=links)


PAGE = Page("fleet", "/", render_fleet, lambda source: [{}])
