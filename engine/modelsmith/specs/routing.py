"""Routing-table checks that need no request: rules no request can reach."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _implies(later: Any, earlier: Any) -> bool:
    """Whether every request ``later`` matches is matched by ``earlier`` (conservative:
    True only when it certainly is)."""
    a, b = earlier.when, later.when
    if a.task is not None and a.task != b.task:
        return False
    for key, value in (a.meta or {}).items():
        if (b.meta or {}).get(key) != value:
            return False
    if a.regex is not None and a.regex != b.regex:
        return False
    if a.length is not None:
        lo, hi = (b.length.min, b.length.max) if b.length else (None, None)
        if a.length.min and (lo is None or lo < a.length.min):
            return False
        if a.length.max is not None and (hi is None or hi > a.length.max):
            return False
    if a.keywords is not None:
        b_all = {w.lower() for w in (b.keywords.all if b.keywords else [])}
        b_any = {w.lower() for w in (b.keywords.any if b.keywords else [])}
        if not {w.lower() for w in a.keywords.all} <= b_all:
            return False
        a_any = {w.lower() for w in a.keywords.any}
        if a_any and not (a_any & b_all or (b_any and b_any <= a_any)):
            return False
    return True


def shadowed(rules: Sequence[Any]) -> list[tuple[int, int]]:
    """``(later, earlier)`` index pairs: rule ``later`` can never match, because rule
    ``earlier`` matches every request it would."""
    out = []
    for j, later in enumerate(rules):
        for i in range(j):
            if _implies(later, rules[i]):
                out.append((j, i))
                break
    return out
