"""The composite score of an evaluation, with bootstrap confidence intervals.

Definitions (all scores are in [0, 1]):

- **core**: mean score of the core scenarios' own-input runs (``variant is None``).
- **robustness**: mean score of the core scenarios' variant runs (pooled over runs);
  ``None`` when there are none.
- **micro**: weighted mean of the suite's micro-benchmarks, over all core runs (own inputs
  and variants). ``latency``: 1.0 when the percentile latency is within budget, else
  ``budget / percentile``. ``format_rate``: 1.0 when the share of format-OK runs reaches
  ``min_rate``, else ``rate / min_rate``. ``None`` when the suite has no micro-benchmarks.
- **composite**: the weighted sum of core, robustness and micro. The weight of a part that is
  ``None`` is redistributed over the others in proportion to their weights.
- **heldout**: mean score of the held-out own-input runs; reported, never in the composite.
- **unseen**: the composite over the core scenarios the candidate never trained on (``seen``
  names those its datasets came from or restate, accumulated along its lineage); with
  nothing seen it equals the composite.
- **dev**: the composite over the dev scenarios (never training data): what the loop
  decides on when the suite has them.

Intervals: core, robustness and composite are bootstrapped over core *scenarios* (a drawn
scenario brings its own-input run and all its variant runs), micro held fixed (it is a
system metric); held-out and each slice are bootstrapped over their runs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..specs.models import EvalSuite
from ..specs.rubric import LatencyBenchmark
from .results import ScenarioRun, Split
from .stats import (
    PairedComparison,
    bootstrap_ci,
    mean,
    paired_bootstrap,
    percentile,
    percentile_interval,
)

#: Slack when comparing the composite with a target, so a hand-computed 0.8 meets 0.8.
TARGET_EPSILON = 1e-9

PARTS: tuple[str, ...] = ("core", "robustness", "micro")

Interval = tuple[float, float]


@dataclass
class EvalReport:
    """Aggregated scores of one evaluation. ``None`` marks a part that does not apply."""

    composite: float
    composite_ci: Interval | None
    core: float | None
    core_ci: Interval | None
    robustness: float | None
    robustness_ci: Interval | None
    micro: float | None
    micro_parts: dict[str, dict[str, Any]]  # name -> {kind, value, score, target, weight}
    heldout: float | None
    heldout_ci: Interval | None
    pass_rate: float | None
    consistency: float | None
    slices: dict[str, dict[str, Any]]  # tag -> {score, n, ci}
    n_core: int
    n_variants: int
    n_heldout: int
    failed_ids: list[str]
    weights: dict[str, float]  # after redistribution; a missing part weighs 0
    level: float = 0.95
    n_resamples: int = 2000
    seed: int = 0
    pass_threshold: float | None = field(default=None)
    unseen: float | None = None
    unseen_ci: Interval | None = None
    n_unseen: int = 0  # core scenarios the candidate never trained on
    dev: float | None = None
    dev_ci: Interval | None = None
    n_dev: int = 0

    def meets(self, target: float) -> bool:
        """Whether the composite reaches ``target`` (within :data:`TARGET_EPSILON`)."""
        return not math.isnan(self.composite) and self.composite >= target - TARGET_EPSILON

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: floats rounded to 6 places, ``nan`` as ``None``, tuples as lists."""
        return {
            "composite": _clean(self.composite),
            "composite_ci": _clean(self.composite_ci),
            "core": _clean(self.core),
            "core_ci": _clean(self.core_ci),
            "robustness": _clean(self.robustness),
            "robustness_ci": _clean(self.robustness_ci),
            "micro": _clean(self.micro),
            "micro_parts": _clean(self.micro_parts),
            "heldout": _clean(self.heldout),
            "heldout_ci": _clean(self.heldout_ci),
            "pass_rate": _clean(self.pass_rate),
            "consistency": _clean(self.consistency),
            "slices": _clean(self.slices),
            "n_core": self.n_core,
            "n_variants": self.n_variants,
            "n_heldout": self.n_heldout,
            "failed_ids": list(self.failed_ids),
            "weights": _clean(self.weights),
            "level": self.level,
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "pass_threshold": _clean(self.pass_threshold),
            "unseen": _clean(self.unseen),
            "unseen_ci": _clean(self.unseen_ci),
            "n_unseen": self.n_unseen,
            "dev": _clean(self.dev),
            "dev_ci": _clean(self.dev_ci),
            "n_dev": self.n_dev,
        }

    def to_markdown(self) -> str:
        """A compact Markdown summary (for pull-request bodies)."""
        pct = f"{self.level * 100:g}%"
        lines = [f"| metric | value | {pct} CI |", "|---|---:|---|"]

        def row(label: str, value: float | None, ci: Interval | None = None) -> None:
            lines.append(f"| {label} | {_fmt(value)} | {_fmt_ci(ci)} |")

        w = self.weights
        row("**composite**", self.composite, self.composite_ci)
        row(f"core (n={self.n_core}, w={w['core']:.2f})", self.core, self.core_ci)
        row(
            f"robustness (n={self.n_variants}, w={w['robustness']:.2f})",
            self.robustness,
            self.robustness_ci,
        )
        row(f"micro (w={w['micro']:.2f})", self.micro)
        for name, part in self.micro_parts.items():
            value, target = part["value"], part["target"]
            if part["kind"] == "latency":
                shown = f"{_fmt(value, 0)} ms, budget {_fmt(target, 0)} ms"
            else:
                shown = f"{_fmt(value)}, min {_fmt(target)}"
            lines.append(f"| &nbsp;&nbsp;{name} ({shown}) | {_fmt(part['score'])} | |")
        row(f"unseen composite (n={self.n_unseen} core scenarios never trained on)",
            self.unseen, self.unseen_ci)
        if self.n_dev:
            row(f"dev composite (n={self.n_dev}, never trained on)", self.dev, self.dev_ci)
        row(f"heldout (n={self.n_heldout}, not in composite)", self.heldout, self.heldout_ci)
        row("pass rate (core)", self.pass_rate)
        row("consistency (variants agree)", self.consistency)
        if self.slices:
            lines += ["", f"| slice | n | score | {pct} CI |", "|---|---:|---:|---|"]
            for tag, data in self.slices.items():
                lines.append(
                    f"| {tag} | {data['n']} | {_fmt(data['score'])} | {_fmt_ci(data['ci'])} |"
                )
        if self.failed_ids:
            shown = ", ".join(f"`{i}`" for i in self.failed_ids[:20])
            more = len(self.failed_ids) - 20
            lines += ["", f"Failed core scenarios ({len(self.failed_ids)}): {shown}"]
            if more > 0:
                lines[-1] += f", … and {more} more"
        return "\n".join(lines) + "\n"


def decision_of(report: EvalReport, min_unseen: int) -> tuple[str | None, float | None, int]:
    """``(metric, value, n)`` the loop steers by and the composite gate counts: the dev
    composite when the suite has dev scenarios, else the unseen composite -- when its
    scenarios number at least ``min_unseen``, or when the candidate trained on none of the
    core scenarios (then it is the composite over the whole core split the suite declares).
    ``(None, None, n)`` when neither qualifies."""
    if report.n_dev:
        return "dev", report.dev, report.n_dev
    if report.unseen is not None and (report.n_unseen >= min_unseen
                                      or report.n_unseen == report.n_core):
        return "unseen", report.unseen, report.n_unseen
    return None, None, report.n_unseen


def overfit_gap(composite: float | None, decision: float | None) -> float | None:
    """How far the decision metric trails the composite (positive: it trails)."""
    if composite is None or decision is None:
        return None
    return composite - decision


def _fmt(value: float | None, places: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{places}f}"


def _fmt_ci(ci: Interval | None) -> str:
    if ci is None or any(math.isnan(x) for x in ci):
        return ""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value


def _ci_or_none(ci: Interval) -> Interval | None:
    return None if math.isnan(ci[0]) else ci


def per_item_scores(runs: Sequence[ScenarioRun], split: Split = "core") -> dict[str, float]:
    """Scenario id -> own-input score for one split (to pair two evaluations by id)."""
    return {run.id: run.score for run in runs if run.split == split and run.variant is None}


def compare_runs(
    baseline: Sequence[ScenarioRun],
    candidate: Sequence[ScenarioRun],
    *,
    split: Split = "core",
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Paired bootstrap of candidate against baseline over the scenario ids both evaluated
    (own inputs of ``split``), in sorted id order. Raises ``ValueError`` when none is shared."""
    a, b = per_item_scores(baseline, split), per_item_scores(candidate, split)
    shared = sorted(a.keys() & b.keys())
    if not shared:
        raise ValueError(f"the two evaluations share no {split} scenario")
    return paired_bootstrap(
        [a[i] for i in shared],
        [b[i] for i in shared],
        n_resamples=n_resamples,
        level=level,
        seed=seed,
    )


def _benchmark_name(benchmark: Any, taken: set[str]) -> str:
    if isinstance(benchmark, LatencyBenchmark):
        base = f"latency_p{benchmark.percentile:g}"
    else:
        base = str(benchmark.kind)
    name, index = base, 2
    while name in taken:
        name, index = f"{base}_{index}", index + 1
    taken.add(name)
    return name


def _micro(
    suite: EvalSuite, core_runs: Sequence[ScenarioRun]
) -> tuple[float | None, dict[str, dict[str, Any]]]:
    parts: dict[str, dict[str, Any]] = {}
    taken: set[str] = set()
    total = weighted = 0.0
    for benchmark in suite.spec.micro:
        name = _benchmark_name(benchmark, taken)
        if isinstance(benchmark, LatencyBenchmark):
            target = benchmark.budget_ms
            # What a request answered alone waits (the latency probe); evaluations recorded
            # before the probe existed carry only their batched calls' wall time.
            alone = [run.alone_ms for run in core_runs if run.alone_ms is not None]
            value = percentile(alone or [run.latency_ms for run in core_runs],
                               benchmark.percentile)
            if math.isnan(value):
                score = math.nan
            elif value <= target:
                score = 1.0
            else:
                score = target / value
        else:
            target = benchmark.min_rate
            value = mean([1.0 if run.format_ok else 0.0 for run in core_runs])
            if math.isnan(value):
                score = math.nan
            elif value >= target:
                score = 1.0
            else:
                score = value / target
        parts[name] = {
            "kind": benchmark.kind,
            "value": value,
            "score": score,
            "target": target,
            "weight": benchmark.weight,
        }
        if not math.isnan(score):
            total += benchmark.weight
            weighted += benchmark.weight * score
    return (weighted / total if total > 0 else None), parts


def _redistribute(declared: dict[str, float], present: dict[str, bool]) -> dict[str, float]:
    total = sum(declared[part] for part in PARTS if present[part])
    return {
        part: (declared[part] / total if present[part] and total > 0 else 0.0) for part in PARTS
    }


def compute_report(
    runs: Sequence[ScenarioRun],
    suite: EvalSuite,
    *,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    seen: frozenset[str] | set[str] = frozenset(),
) -> EvalReport:
    """Aggregate the scored runs of one evaluation of ``suite`` (see the module docstring);
    ``seen`` names the core scenarios the evaluated candidate trained on.

    Raises ``ValueError`` when two runs share split, scenario id and variant.
    """
    _check_unique_runs(runs)
    core_runs = [run for run in runs if run.split == "core"]
    unseen_runs = [run for run in core_runs if run.id not in seen]
    dev_runs = [run for run in runs if run.split == "dev"]
    opts = {"n_resamples": n_resamples, "level": level, "seed": seed}
    own = [run for run in core_runs if run.variant is None]
    variants = [run for run in core_runs if run.variant is not None]
    heldout_runs = [run for run in runs if run.split == "heldout" and run.variant is None]

    core = mean([run.score for run in own]) if own else None
    robustness = mean([run.score for run in variants]) if variants else None
    micro, micro_parts = _micro(suite, core_runs)
    values = {"core": core, "robustness": robustness, "micro": micro}
    weights = _weights(suite, values)
    composite = _composite(weights, values)
    core_ci, robustness_ci, composite_ci = _part_intervals(
        core_runs, values, weights, composite, n_resamples=n_resamples, level=level, seed=seed
    )
    heldout, heldout_ci = _heldout(heldout_runs, n_resamples=n_resamples, level=level, seed=seed)
    return EvalReport(
        composite=composite,
        composite_ci=composite_ci,
        core=core,
        core_ci=core_ci,
        robustness=robustness,
        robustness_ci=robustness_ci,
        micro=micro,
        micro_parts=micro_parts,
        heldout=heldout,
        heldout_ci=heldout_ci,
        pass_rate=mean([1.0 if run.passed else 0.0 for run in own]) if own else None,
        consistency=_consistency(own, variants),
        slices=_slices(own, n_resamples=n_resamples, level=level, seed=seed),
        n_core=len(own),
        n_variants=len(variants),
        n_heldout=len(heldout_runs),
        failed_ids=sorted(run.id for run in own if not run.passed),
        weights=weights,
        level=level,
        n_resamples=n_resamples,
        seed=seed,
        pass_threshold=suite.spec.pass_threshold,
        **_sub_composite("unseen", unseen_runs, suite, opts),
        **_sub_composite("dev", dev_runs, suite, opts),
    )


def _sub_composite(name: str, part_runs: Sequence[ScenarioRun], suite: EvalSuite,
                   opts: dict[str, Any]) -> dict[str, Any]:
    """The composite over some scenarios' runs (own inputs and variants, micro from them
    too), its interval and how many scenarios it covers."""
    own = [run for run in part_runs if run.variant is None]
    if not own:
        return {name: None, f"{name}_ci": None, f"n_{name}": 0}
    variants = [run for run in part_runs if run.variant is not None]
    micro, _ = _micro(suite, part_runs)
    values = {"core": mean([run.score for run in own]),
              "robustness": mean([run.score for run in variants]) if variants else None,
              "micro": micro}
    weights = _weights(suite, values)
    composite = _composite(weights, values)
    _, _, ci = _part_intervals(part_runs, values, weights, composite, **opts)
    return {name: None if math.isnan(composite) else composite, f"{name}_ci": ci,
            f"n_{name}": len(own)}


def _check_unique_runs(runs: Sequence[ScenarioRun]) -> None:
    seen: set[tuple[str, str, int | None]] = set()
    for run in runs:
        key = (run.split, run.id, run.variant)
        if key in seen:
            raise ValueError(
                f"duplicate run: scenario '{run.id}' ({run.split}, variant {run.variant})"
            )
        seen.add(key)


def _weights(suite: EvalSuite, values: dict[str, float | None]) -> dict[str, float]:
    """The suite's declared weights, redistributed over the parts that apply."""
    declared = suite.spec.weights
    return _redistribute(
        {"core": declared.core, "robustness": declared.robustness, "micro": declared.micro},
        {part: value is not None for part, value in values.items()},
    )


def _composite(weights: dict[str, float], values: dict[str, float | None]) -> float:
    """The weighted sum of the parts; ``nan`` when no part weighs anything."""
    if any(weights[part] > 0 for part in PARTS):
        return math.fsum(weights[p] * values[p] for p in PARTS if weights[p] > 0)
    return math.nan


def _part_intervals(
    core_runs: Sequence[ScenarioRun],
    values: dict[str, float | None],
    weights: dict[str, float],
    composite: float,
    *,
    n_resamples: int,
    level: float,
    seed: int,
) -> tuple[Interval | None, Interval | None, Interval | None]:
    """Core, robustness and composite intervals from resampled core scenarios."""
    # Per-scenario units for the bootstrap: (own sum, own count, variant sum, variant count).
    units: dict[str, list[float]] = {}
    for run in core_runs:
        unit = units.setdefault(run.id, [0.0, 0, 0.0, 0])
        offset = 0 if run.variant is None else 2
        unit[offset] += run.score
        unit[offset + 1] += 1
    core_ci = robustness_ci = composite_ci = None
    if units:
        core_stats, rob_stats, comp_stats = _scenario_bootstrap(
            list(units.values()), weights, values["micro"], n_resamples=n_resamples, seed=seed
        )
        if values["core"] is not None:
            core_ci = _ci_or_none(percentile_interval(core_stats, level))
        if values["robustness"] is not None:
            robustness_ci = _ci_or_none(percentile_interval(rob_stats, level))
        if not math.isnan(composite):
            composite_ci = _ci_or_none(percentile_interval(comp_stats, level))
    return core_ci, robustness_ci, composite_ci


def _consistency(own: list[ScenarioRun], variants: list[ScenarioRun]) -> float | None:
    """Share of scenarios with variants whose every variant passed or failed as its own input
    did; ``None`` when no scenario has both."""
    own_by_id = {run.id: run for run in own}
    variant_passes: dict[str, list[bool]] = {}
    for run in variants:
        variant_passes.setdefault(run.id, []).append(run.passed)
    agreeing = [
        all(passed == own_by_id[scenario].passed for passed in passes)
        for scenario, passes in variant_passes.items()
        if scenario in own_by_id
    ]
    return mean([1.0 if ok else 0.0 for ok in agreeing]) if agreeing else None


def _heldout(
    heldout_runs: list[ScenarioRun], *, n_resamples: int, level: float, seed: int
) -> tuple[float | None, Interval | None]:
    """Mean held-out score and its interval over the runs; ``None`` for both without any."""
    scores = [run.score for run in heldout_runs]
    if not scores:
        return None, None
    ci = _ci_or_none(bootstrap_ci(scores, n_resamples=n_resamples, level=level, seed=seed))
    return mean(scores), ci


def _slices(
    own: list[ScenarioRun], *, n_resamples: int, level: float, seed: int
) -> dict[str, dict[str, Any]]:
    """Tag -> score, n and interval of the own-input core runs carrying that tag."""
    by_tag: dict[str, list[float]] = {}
    for run in own:
        for tag in dict.fromkeys(run.tags):
            by_tag.setdefault(tag, []).append(run.score)
    return {
        tag: {
            "score": mean(scores),
            "n": len(scores),
            "ci": _ci_or_none(
                bootstrap_ci(scores, n_resamples=n_resamples, level=level, seed=seed)
            ),
        }
        for tag, scores in sorted(by_tag.items())
    }


def _scenario_bootstrap(
    units: list[list[float]],
    weights: dict[str, float],
    micro: float | None,
    *,
    n_resamples: int,
    seed: int,
) -> tuple[list[float], list[float], list[float]]:
    """Core, robustness and composite statistics of resampled scenarios (``nan`` where a
    resample lacks the runs a part needs; those draws are left out of the interval)."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    rng = random.Random(seed)
    n = len(units)
    packed = [tuple(unit) for unit in units]
    w_core, w_rob, w_micro = weights["core"], weights["robustness"], weights["micro"]
    micro_term = w_micro * micro if micro is not None and w_micro > 0 else 0.0
    core_stats: list[float] = []
    rob_stats: list[float] = []
    comp_stats: list[float] = []
    for _ in range(n_resamples):
        own_sum, own_n, var_sum, var_n = zip(*rng.choices(packed, k=n), strict=True)
        own_count, var_count = sum(own_n), sum(var_n)
        core_b = sum(own_sum) / own_count if own_count else math.nan
        rob_b = sum(var_sum) / var_count if var_count else math.nan
        core_stats.append(core_b)
        rob_stats.append(rob_b)
        composite = micro_term
        if w_core > 0:
            composite += w_core * core_b
        if w_rob > 0:
            composite += w_rob * rob_b
        comp_stats.append(composite)
    return core_stats, rob_stats, comp_stats
