"""The score history of a loop: a text table and an SVG plot (the decision metric per
iteration -- dev or unseen composite, never trained on --, the composite and held-out beside
it, the target as a line). Plain SVG: no plotting library needed."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from .state import IterationRecord

WIDTH, HEIGHT, MARGIN = 560, 320, 48


def score_table(history: Sequence[IterationRecord], target: float | None = None) -> str:
    """One row per iteration: candidate, the decision metric (✓ at the target; its split
    and n), the composite (core: trained near), held-out, the dataset's rows and how many
    are new, seconds; an overfitting candidate is marked."""
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = ["| iteration | candidate | decision (split, n) | composite | held-out | "
             "rows (new) | seconds |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in history:
        if r.decision_metric is not None and r.decision is not None:
            mark = " ✓" if target is not None and r.decision >= target - 1e-9 \
                and not r.overfitting and r.new_rows != 0 else ""
            decision = f"{r.decision:.3f}{mark} ({r.decision_metric}, {r.decision_n})"
        elif r.decision_n is not None:
            decision = f"- (unseen n={r.decision_n})"
        else:
            decision = "-"
        if r.overfitting:
            decision += " overfitting"
        rows = "-" if r.dataset_rows is None else (
            f"{r.dataset_rows} ({'none' if r.new_rows == 0 else r.new_rows})")
        lines.append(f"| {r.iteration} | {r.candidate or '-'} | {decision} | "
                     f"{fmt(r.composite)} | {fmt(r.heldout)} | {rows} | "
                     f"{r.duration_s or 0:.0f} |")
    return "\n".join(lines)


def score_svg(history: Sequence[IterationRecord], target: float | None, title: str) -> str:
    """Decision metric (solid), composite (dotted) and held-out (dashed) per iteration on a
    0..1 axis."""
    n = max(1, len(history))
    plot_w, plot_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN

    def x(i: int) -> float:
        return MARGIN + (plot_w * (i / (n - 1)) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return MARGIN + plot_h * (1 - max(0.0, min(1.0, v)))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
             f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14">'
             f'{escape(title)}</text>']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{MARGIN}" x2="{WIDTH - MARGIN}" y1="{y(tick):.1f}" '
                     f'y2="{y(tick):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{MARGIN - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">'
                     f'{tick:.2f}</text>')
    for i, r in enumerate(history):
        parts.append(f'<text x="{x(i):.1f}" y="{HEIGHT - MARGIN + 16}" text-anchor="middle">'
                     f'{r.iteration}</text>')
    parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 8}" text-anchor="middle">iteration</text>')
    if target is not None:
        parts.append(f'<line x1="{MARGIN}" x2="{WIDTH - MARGIN}" y1="{y(target):.1f}" '
                     f'y2="{y(target):.1f}" stroke="#c33" stroke-dasharray="2,3"/>')
        parts.append(f'<text x="{WIDTH - MARGIN}" y="{y(target) - 4:.1f}" text-anchor="end" '
                     f'fill="#c33">target {target:g}</text>')
    metric = next((r.decision_metric for r in history if r.decision_metric), None)
    lines = [("composite", "#888", "2,3", "composite"),
             ("heldout", "#2a9d4b", "6,4", "held-out")]
    if metric:
        lines.insert(0, ("decision", "#1f6fb4", "", f"{metric} (decides)"))
    for n_line, (key, colour, dash, label) in enumerate(lines):
        points = [(x(i), y(getattr(r, key))) for i, r in enumerate(history)
                  if getattr(r, key) is not None]
        if not points:
            continue
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                     f'stroke-width="2"{dashed}/>')
        parts += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>'
                  for px, py in points]
        # The legend sits in the top margin, clear of lines at 1.0.
        left = MARGIN + 110 * n_line
        parts.append(f'<text x="{left}" y="{MARGIN - 10}" fill="{colour}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
