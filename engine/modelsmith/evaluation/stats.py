"""Small statistics for evaluations: means, percentiles, bootstrap intervals, paired tests.

Plain Python (no numpy). Every resampling function is deterministic for a given ``seed``:
it draws from its own ``random.Random(seed)`` and never touches the global generator.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

Reducer = Literal["mean", "majority", "pass@k"]
REDUCERS: tuple[str, ...] = ("mean", "majority", "pass@k")

#: Two per-item scores closer than this count as a tie in :func:`paired_bootstrap`.
TIE_TOLERANCE = 1e-9


def mean(xs: Sequence[float]) -> float:
    """Arithmetic mean (``math.fsum``; equal values give exactly that value); ``nan`` when
    empty."""
    if not xs:
        return math.nan
    first = xs[0]
    if all(x == first for x in xs):
        return float(first)
    return math.fsum(xs) / len(xs)


def percentile(xs: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (``0 <= q <= 100``) with linear interpolation between the
    closest ranks (numpy's default method); ``nan`` when ``xs`` is empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within [0, 100], got {q}")
    if not xs:
        return math.nan
    ordered = sorted(xs)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    if fraction == 0 or ordered[low] == ordered[high]:
        return float(ordered[low])
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


def _check_resampling(n_resamples: int, level: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be within (0, 1), got {level}")


def percentile_interval(stats: Sequence[float], level: float) -> tuple[float, float]:
    """Percentile interval of bootstrap statistics, ignoring ``nan`` (undefined) draws."""
    finite = [s for s in stats if not math.isnan(s)]
    if not finite:
        return (math.nan, math.nan)
    tail = (1 - level) / 2 * 100
    return (percentile(finite, tail), percentile(finite, 100 - tail))


def bootstrap_means(
    values: Sequence[float], *, n_resamples: int, rng: random.Random
) -> list[float]:
    """Means of ``n_resamples`` resamples (with replacement, same size) of ``values``."""
    n = len(values)
    choices = rng.choices
    return [sum(choices(values, k=n)) / n for _ in range(n_resamples)]


def bootstrap_ci(
    values: Sequence[float],
    *,
    statistic: Callable[[Sequence[float]], float] = mean,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic(values)``.

    Empty ``values`` give ``(nan, nan)``; a single value, or values that are all equal, give
    the degenerate interval ``(s, s)`` with ``s = statistic(values)``.
    """
    _check_resampling(n_resamples, level)
    values = list(values)
    if not values:
        return (math.nan, math.nan)
    if all(v == values[0] for v in values):
        point = statistic(values)
        return (point, point)
    rng = random.Random(seed)
    if statistic is mean:
        stats = bootstrap_means(values, n_resamples=n_resamples, rng=rng)
    else:
        n = len(values)
        stats = [statistic(rng.choices(values, k=n)) for _ in range(n_resamples)]
    return percentile_interval(stats, level)


@dataclass(frozen=True)
class PairedComparison:
    """Candidate B against baseline A on the same items (see :func:`paired_bootstrap`)."""

    n: int
    mean_a: float
    mean_b: float
    diff: float  # mean_b - mean_a
    ci: tuple[float, float]  # bootstrap interval of the mean difference
    p_better: float  # share of resamples whose mean difference is > 0
    verdict: Literal["better", "worse", "inconclusive"]
    wins: int  # items where b > a
    losses: int  # items where b < a
    ties: int
    level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ci"] = list(self.ci)
        return data


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Paired bootstrap of ``mean(b) - mean(a)``: ``a`` (baseline) and ``b`` (candidate) are
    per-item scores of the same items in the same order; item indices are resampled.

    The verdict is ``"better"`` when the interval lies above 0, ``"worse"`` when it lies
    below 0, else ``"inconclusive"``. Raises ``ValueError`` on empty or mismatched input.
    """
    _check_resampling(n_resamples, level)
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} != {len(b)}")
    if not a:
        raise ValueError("paired samples are empty")
    diffs = [float(y) - float(x) for x, y in zip(a, b, strict=True)]
    wins = sum(1 for d in diffs if d > TIE_TOLERANCE)
    losses = sum(1 for d in diffs if d < -TIE_TOLERANCE)
    mean_a, mean_b = mean(a), mean(b)
    diff = mean_b - mean_a
    if all(d == diffs[0] for d in diffs):
        ci = (diff, diff)
        p_better = 1.0 if diff > 0 else 0.0
    else:
        stats = bootstrap_means(diffs, n_resamples=n_resamples, rng=random.Random(seed))
        ci = percentile_interval(stats, level)
        p_better = sum(1 for s in stats if s > 0) / n_resamples
    if ci[0] > 0:
        verdict: Literal["better", "worse", "inconclusive"] = "better"
    elif ci[1] < 0:
        verdict = "worse"
    else:
        verdict = "inconclusive"
    return PairedComparison(
        n=len(diffs),
        mean_a=mean_a,
        mean_b=mean_b,
        diff=diff,
        ci=ci,
        p_better=p_better,
        verdict=verdict,
        wins=wins,
        losses=losses,
        ties=len(diffs) - wins - losses,
        level=level,
    )


def reduce_repeats(
    scores: Sequence[float], passes: Sequence[bool], reducer: Reducer
) -> tuple[float, bool]:
    """Collapse the repeats of one scenario input into ``(score, passed)``.

    - ``"mean"``: the mean score; passed when strictly more than half the repeats passed.
    - ``"majority"``: ``(1.0, True)`` when strictly more than half passed, else ``(0.0, False)``.
    - ``"pass@k"``: ``(1.0, True)`` when any repeat passed, else ``(0.0, False)``.

    (A tie, e.g. 1 of 2 passes, is not a majority.) Raises ``ValueError`` on an unknown
    reducer, no repeats, or ``scores`` and ``passes`` of different lengths.
    """
    if reducer not in REDUCERS:
        raise ValueError(f"unknown reducer '{reducer}' (known: {', '.join(REDUCERS)})")
    if len(scores) != len(passes):
        raise ValueError(f"{len(scores)} scores but {len(passes)} pass flags")
    if not scores:
        raise ValueError("no repeats to reduce")
    majority = 2 * sum(1 for p in passes if p) > len(passes)
    if reducer == "mean":
        return (mean(scores), majority)
    if reducer == "majority":
        return (1.0 if majority else 0.0, majority)
    any_passed = any(passes)
    return (1.0 if any_passed else 0.0, any_passed)
