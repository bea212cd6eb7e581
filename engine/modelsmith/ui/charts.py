"""The dashboard's charts: plotly figures (``plotly.graph_objects``) as the JSON the page
embeds (``{{ fig | tojson }}`` in a ``<script type="application/json">`` block) and
``assets/app.js`` draws with plotly.js.

Each builder takes plain rows the page gathered and returns the figure's dict; numbers keep
the split they were measured on in their trace names (core composite, decision metric, held
out), so a chart never shows a number without saying what it measured.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import plotly.graph_objects as go

STAGE_ORDER = ("shadow", "canary", "production")
ROLLED_BACK = "#c0392b"


def _plain(value: Any) -> str:
    """Text for a chart label or hover: plotly.js reads a few HTML tags in it, so it gets
    them as entities (shown as typed, never as markup)."""
    return html.escape(str(value), quote=False)


def _figure(fig: go.Figure) -> dict[str, Any]:
    return json.loads(fig.to_json())


def _layout(fig: go.Figure, **layout: Any) -> None:
    # An empty template: the figures stay small (plotly's default template is ~10 KB each).
    fig.update_layout(template="none", margin={"l": 90, "r": 20, "t": 40, "b": 60},
                      font={"size": 12},
                      legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
                      hovermode="closest", **layout)


def stage_timeline(periods: Iterable[Mapping[str, Any]], now: datetime) -> dict[str, Any]:
    """Horizontal bars, one row per stage: each period a version held it, from ``since`` to
    ``until`` (``now`` while it still holds it, past the axis' end when the last change is
    long ago); rolled-back periods outlined in red.

    ``periods``: dicts with ``stage``, ``version``, ``since``, ``until`` (datetimes or None),
    ``actor``, ``ended`` (how it ended, words) and ``rolled_back`` (bool)."""
    by_version: dict[str, list[Mapping[str, Any]]] = {}
    for p in periods:
        by_version.setdefault(p["version"], []).append(p)
    fig = go.Figure()
    for version, held in by_version.items():
        ends = [p["until"] or now for p in held]
        label = _plain(version)
        fig.add_trace(go.Bar(
            name=label, orientation="h",
            y=[p["stage"] for p in held],
            base=[p["since"].isoformat() for p in held],
            x=[max((end - p["since"]).total_seconds() * 1000, 1000.0)
               for p, end in zip(held, ends, strict=True)],
            text=[label] * len(held), textposition="inside", insidetextanchor="middle",
            customdata=[[p["since"].isoformat(), (p["until"] or now).isoformat(),
                         _plain(p["actor"]), _plain(p["ended"])] for p in held],
            hovertemplate=(f"{label} · %{{y}}<br>%{{customdata[0]}} → %{{customdata[1]}}"
                           "<br>by %{customdata[2]}<br>%{customdata[3]}<extra></extra>"),
            marker={"line": {"color": [ROLLED_BACK if p["rolled_back"] else "rgba(0,0,0,0)"
                                       for p in held], "width": 3}},
        ))
    stages = [s for s in STAGE_ORDER if any(s in (p["stage"] for p in v)
                                            for v in by_version.values())]
    # The axis spans the stage changes (and a tenth more): a version still holding its
    # stage runs off the right edge instead of squeezing months of history into a sliver.
    held_all = [p for v in by_version.values() for p in v]
    first = min(p["since"] for p in held_all)
    last = max(max(p["since"], p["until"] or p["since"]) for p in held_all)
    end = min(now, last + max((last - first) / 10, timedelta(minutes=5)))
    _layout(fig, barmode="overlay", height=120 + 45 * max(len(stages), 1),
            xaxis={"type": "date", "title": {"text": "time (UTC)"},
                   "range": [first.isoformat(), max(end, last).isoformat()]},
            yaxis={"categoryorder": "array", "categoryarray": stages, "title": {"text": ""}})
    return _figure(fig)


def score_history(rows: Sequence[Mapping[str, Any]], target: float | None) -> dict[str, Any]:
    """Lines per iteration (x: the candidate versions in order): the decision metric (dev
    or unseen: never trained on), the core composite (training may have seen it) and the
    held-out composite (the promotion gate's evidence), with the target as a dashed line.

    ``rows``: dicts with ``version``, ``decision``, ``decision_metric`` (``dev``,
    ``unseen`` or None: each its own line), ``composite``, ``heldout`` (floats or None)."""
    x = [_plain(r["version"]) for r in rows]
    fig = go.Figure()
    # One line per decision metric: a dev score and an unseen one are not one series.
    metrics = sorted({r["decision_metric"] for r in rows if r["decision_metric"]})
    lines = [(f"decision metric {m} (never trained on)", "solid",
              [r["decision"] if r["decision_metric"] == m else None for r in rows])
             for m in metrics]
    lines += [("core composite (training may have seen it)", "dot",
               [r["composite"] for r in rows]),
              ("held-out (promotion gate only)", "dash", [r["heldout"] for r in rows])]
    for name, dash, y in lines:
        fig.add_trace(go.Scatter(
            x=x, y=y, name=name, mode="lines+markers", line={"dash": dash},
            connectgaps=False,
            hovertemplate=f"%{{x}}: %{{y:.3f}}<extra>{name.split(' (')[0]}</extra>"))
    if target is not None and x:
        fig.add_trace(go.Scatter(
            x=[x[0], x[-1]] if len(x) > 1 else x, y=[target] * min(len(x), 2),
            name=f"target {target:.3f}", mode="lines+markers" if len(x) == 1 else "lines",
            line={"dash": "longdash", "color": "#7f8c8d"}, hoverinfo="name"))
    _layout(fig, height=320, xaxis={"type": "category", "title": {"text": "iteration"}},
            yaxis={"title": {"text": "score"}, "rangemode": "tozero"})
    return _figure(fig)


def dataset_growth(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stacked bars per dataset built (x: its iteration label), one colour per row source,
    and the rows that were new in it (not in its chain's previous dataset) as a line.

    ``rows``: dicts with ``label``, ``rows``, ``new_rows`` (int or None) and ``sources``
    (source -> rows)."""
    x = [_plain(r["label"]) for r in rows]
    fig = go.Figure()
    sources = sorted({s for r in rows for s in r["sources"]})
    for source in sources:
        fig.add_trace(go.Bar(x=x, y=[r["sources"].get(source, 0) for r in rows],
                             name=_plain(f"rows from {source}"),
                             hovertemplate=_plain(f"{source} rows")
                             + ": %{y}<extra>%{x}</extra>"))
    if not sources:
        fig.add_trace(go.Bar(x=x, y=[r["rows"] for r in rows], name="rows"))
    if any(r["new_rows"] is not None for r in rows):
        fig.add_trace(go.Scatter(x=x, y=[r["new_rows"] for r in rows], name="new rows",
                                 mode="lines+markers", line={"color": "#2c3e50"},
                                 hovertemplate="%{x}: %{y} new rows<extra></extra>"))
    _layout(fig, barmode="stack", height=320,
            xaxis={"type": "category", "title": {"text": "iteration"}},
            yaxis={"title": {"text": "rows"}, "rangemode": "tozero"})
    return _figure(fig)
