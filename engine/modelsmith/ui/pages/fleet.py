"""The fleet: every specialist's production, canary and shadow, its candidates, the latest
candidate's decision metric and held-out score, and the live metrics windows.

The stage, candidate and event numbers are the status table's (``modelsmith status
--json``): the same numbers in the terminal and here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..render import View, render
from ..source import Source
from . import Page


def rows(source: Source) -> list[dict[str, Any]]:
    """One row per specialist: its status row and, from the folded log, the latest
    candidate's latest full evaluation and the newest metrics window of each stage."""
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
        out.append({"row": row, "evaluated": latest, "windows": windows})
    return out


def render_fleet(source: Source, view: View, params: Mapping[str, str]) -> str:
    status = source.status()
    return render("fleet.html", view, source, status=status, rows=rows(source))


PAGE = Page("fleet", "/", render_fleet, lambda source: [{}])
