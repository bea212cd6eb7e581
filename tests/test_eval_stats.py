"""Statistics of evaluations: bootstrap intervals, paired comparisons, the composite score."""

from __future__ import annotations

import json
import math
import random
import time
from typing import Any

import pytest

from modelsmith.evaluation.composite import (
    EvalReport,
    compare_runs,
    compute_report,
    per_item_scores,
)
from modelsmith.evaluation.results import ScenarioRun
from modelsmith.evaluation.stats import (
    bootstrap_ci,
    mean,
    paired_bootstrap,
    percentile,
    reduce_repeats,
)
from modelsmith.specs.models import EvalSuite

# --------------------------------------------------------------------------- helpers


def make_suite(
    *,
    micro: list[dict[str, Any]] | None = None,
    weights: dict[str, float] | None = None,
    pass_threshold: float = 1.0,
) -> EvalSuite:
    spec: dict[str, Any] = {
        "scenarios": ["scenarios.jsonl"],
        "pass_threshold": pass_threshold,
        "rubric": [{"kind": "label", "required": True}],
        "micro": micro if micro is not None else [],
    }
    if weights is not None:
        spec["weights"] = weights
    return EvalSuite.model_validate(
        {
            "apiVersion": "modelsmith/v1",
            "kind": "EvalSuite",
            "metadata": {"name": "test-suite"},
            "spec": spec,
        }
    )


def run(
    scenario: str,
    score: float,
    *,
    split: str = "core",
    variant: int | None = None,
    passed: bool | None = None,
    format_ok: bool = True,
    latency_ms: float = 10.0,
    tags: list[str] | None = None,
) -> ScenarioRun:
    return ScenarioRun(
        id=scenario,
        split=split,  # type: ignore[arg-type]
        variant=variant,
        tags=tags or [],
        input="x",
        expected="ACCEPT",
        outputs=["ACCEPT"],
        score=score,
        passed=score >= 1.0 if passed is None else passed,
        format_ok=format_ok,
        latency_ms=latency_ms,
        completion_tokens=1,
    )


HAND_MICRO = [
    {"kind": "latency", "percentile": 50, "budget_ms": 100},
    {"kind": "format_rate", "min_rate": 0.8},
]


def hand_runs() -> list[ScenarioRun]:
    return [
        run("a", 1.0, latency_ms=50, tags=["blocked", "easy"]),
        run("a", 1.0, variant=0, latency_ms=60),
        run("a", 0.0, variant=1, latency_ms=300, format_ok=False),
        run("b", 0.5, latency_ms=150, tags=["blocked"]),
        run("c", 0.0, latency_ms=200, format_ok=False, tags=["ctr"]),
        run("c", 0.0, variant=0, latency_ms=100),
        run("h1", 0.3, split="heldout", latency_ms=99999, format_ok=False),
    ]


# --------------------------------------------------------------------------- basics


def test_mean_and_percentile() -> None:
    assert mean([1, 2, 3, 4]) == 2.5
    assert math.isnan(mean([]))
    xs = [50, 60, 100, 150, 200, 300]
    assert percentile(xs, 0) == 50
    assert percentile(xs, 100) == 300
    assert percentile(xs, 50) == pytest.approx(125.0)
    assert percentile([3, 1, 2], 50) == 2
    assert percentile([1, 2, 3, 4, 5], 95) == pytest.approx(4.8)  # numpy's linear method
    assert percentile([7.0], 95) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_bootstrap_ci_contains_true_mean_and_shrinks_with_n() -> None:
    rng = random.Random(123)
    small = [rng.gauss(0.6, 0.2) for _ in range(50)]
    large = [rng.gauss(0.6, 0.2) for _ in range(2000)]
    lo_s, hi_s = bootstrap_ci(small, seed=1)
    lo_l, hi_l = bootstrap_ci(large, seed=1)
    assert lo_l < 0.6 < hi_l
    assert lo_s < mean(small) < hi_s
    assert hi_l - lo_l < (hi_s - lo_s) / 3  # ~ sqrt(40) narrower
    # The 95% interval of a mean is about +-1.96 sigma/sqrt(n).
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * 0.2 / math.sqrt(2000), rel=0.2)


def test_bootstrap_ci_is_deterministic_by_seed() -> None:
    values = [random.Random(i).random() for i in range(100)]
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)
    state = random.getstate()
    bootstrap_ci(values, seed=7)
    assert random.getstate() == state  # the global generator is untouched


def test_bootstrap_ci_degenerate_and_empty() -> None:
    assert bootstrap_ci([0.4]) == (0.4, 0.4)
    assert bootstrap_ci([0.1, 0.1, 0.1]) == (0.1, 0.1)
    lo, hi = bootstrap_ci([])
    assert math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], level=1.0)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], n_resamples=0)


def test_bootstrap_ci_custom_statistic() -> None:
    values = list(range(101))
    lo, hi = bootstrap_ci(values, statistic=lambda xs: percentile(xs, 50), seed=3)
    assert lo <= 50 <= hi


def test_bootstrap_is_fast_enough() -> None:
    rng = random.Random(0)
    a = [rng.random() for _ in range(500)]
    b = [x + rng.gauss(0, 0.1) for x in a]
    start = time.perf_counter()
    bootstrap_ci(a, n_resamples=2000)
    paired_bootstrap(a, b, n_resamples=2000)
    runs = [run(f"s{i}", score) for i, score in enumerate(a)]
    runs += [run(f"s{i}", score, variant=0) for i, score in enumerate(b)]
    compute_report(runs, make_suite(micro=HAND_MICRO), n_resamples=2000)
    assert time.perf_counter() - start < 60  # a hang guard; typically well under a second


# --------------------------------------------------------------------------- paired


def _noisy_pair(shift: float, n: int = 200) -> tuple[list[float], list[float]]:
    rng = random.Random(42)
    a = [rng.uniform(0.2, 0.7) for _ in range(n)]
    b = [x + shift + rng.gauss(0, 0.1) for x in a]
    return a, b


def test_paired_bootstrap_detects_a_known_improvement() -> None:
    a, b = _noisy_pair(0.2)
    result = paired_bootstrap(a, b, seed=0)
    assert result.verdict == "better"
    assert result.n == 200
    assert result.diff == pytest.approx(result.mean_b - result.mean_a)
    assert result.ci[0] > 0 and result.ci[0] < 0.2 < result.ci[1]
    assert result.p_better == 1.0
    assert result.wins > result.losses
    assert result.wins + result.losses + result.ties == 200


def test_paired_bootstrap_detects_a_regression() -> None:
    a, b = _noisy_pair(0.2)
    result = paired_bootstrap(b, a, seed=0)
    assert result.verdict == "worse"
    assert result.ci[1] < 0
    assert result.p_better == 0.0


def test_paired_bootstrap_identical_is_inconclusive() -> None:
    a, _ = _noisy_pair(0.0)
    result = paired_bootstrap(a, list(a))
    assert result.verdict == "inconclusive"
    assert result.ci[0] <= 0 <= result.ci[1]
    assert result.ties == 200 and result.wins == result.losses == 0
    # Noise with no shift is inconclusive too, and the interval holds 0.
    rng = random.Random(9)
    b = [x + rng.gauss(0, 0.05) for x in a]
    noisy = paired_bootstrap(a, b, seed=0)
    assert noisy.ci[0] <= 0 <= noisy.ci[1]
    assert noisy.verdict == "inconclusive"


def test_paired_bootstrap_is_deterministic_and_serialisable() -> None:
    a, b = _noisy_pair(0.02, n=60)
    first, second = paired_bootstrap(a, b, seed=4), paired_bootstrap(a, b, seed=4)
    assert first == second
    data = json.loads(json.dumps(first.to_dict()))
    assert data["verdict"] == first.verdict and len(data["ci"]) == 2


def test_paired_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap([], [])


def test_compare_runs_pairs_by_shared_ids() -> None:
    baseline = [run("a", 0.0), run("b", 0.0), run("c", 1.0), run("h", 0.0, split="heldout")]
    candidate = [run("b", 1.0), run("c", 1.0), run("d", 1.0), run("a", 1.0, variant=0)]
    assert per_item_scores(baseline) == {"a": 0.0, "b": 0.0, "c": 1.0}
    assert per_item_scores(baseline, "heldout") == {"h": 0.0}
    result = compare_runs(baseline, candidate)
    assert result.n == 2  # b and c
    assert (result.wins, result.ties) == (1, 1)
    with pytest.raises(ValueError):
        compare_runs(baseline, [run("z", 1.0)])


# --------------------------------------------------------------------------- reducers


def test_reduce_repeats() -> None:
    scores, passes = [1.0, 0.5, 0.0], [True, False, False]
    assert reduce_repeats(scores, passes, "mean") == (0.5, False)
    assert reduce_repeats(scores, passes, "majority") == (0.0, False)
    assert reduce_repeats(scores, passes, "pass@k") == (1.0, True)
    assert reduce_repeats([1.0, 1.0, 0.0], [True, True, False], "mean") == (
        pytest.approx(2 / 3),
        True,
    )
    assert reduce_repeats([1.0, 1.0, 0.0], [True, True, False], "majority") == (1.0, True)
    assert reduce_repeats([1.0, 0.0], [True, False], "majority") == (0.0, False)  # a tie
    assert reduce_repeats([0.2, 0.0], [False, False], "pass@k") == (0.0, False)
    with pytest.raises(ValueError):
        reduce_repeats([1.0], [True], "median")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        reduce_repeats([], [], "mean")
    with pytest.raises(ValueError):
        reduce_repeats([1.0], [True, False], "mean")


# --------------------------------------------------------------------------- composite


def test_composite_hand_computed() -> None:
    report = compute_report(hand_runs(), make_suite(micro=HAND_MICRO), seed=0)
    assert report.core == pytest.approx(0.5)
    assert report.robustness == pytest.approx(1 / 3)
    # latency p50 of [50, 60, 100, 150, 200, 300] = 125 > 100 -> 100/125 = 0.8
    lat = report.micro_parts["latency_p50"]
    assert lat["value"] == pytest.approx(125.0)
    assert lat["score"] == pytest.approx(0.8)
    assert lat["target"] == 100
    # format: 4 of 6 core runs OK -> 0.6667 < 0.8 -> 0.8333
    fmt = report.micro_parts["format_rate"]
    assert fmt["value"] == pytest.approx(4 / 6)
    assert fmt["score"] == pytest.approx((4 / 6) / 0.8)
    assert report.micro == pytest.approx((0.8 + (4 / 6) / 0.8) / 2)
    expected = 0.7 * 0.5 + 0.2 * (1 / 3) + 0.1 * report.micro
    assert report.composite == pytest.approx(expected, abs=1e-12)
    assert report.composite == pytest.approx(0.498333, abs=1e-6)
    assert report.weights == pytest.approx({"core": 0.7, "robustness": 0.2, "micro": 0.1})
    assert report.heldout == pytest.approx(0.3)
    assert report.pass_rate == pytest.approx(1 / 3)
    assert report.consistency == pytest.approx(0.5)  # a disagrees, c agrees
    assert report.failed_ids == ["b", "c"]
    assert (report.n_core, report.n_variants, report.n_heldout) == (3, 3, 1)
    assert report.pass_threshold == 1.0
    assert report.composite_ci is not None
    assert report.composite_ci[0] <= report.composite <= report.composite_ci[1]
    assert report.core_ci is not None and report.robustness_ci is not None
    assert report.heldout_ci == (0.3, 0.3)


def test_meets_target() -> None:
    report = compute_report([run("a", 0.8), run("b", 0.8)], make_suite())
    assert report.composite == pytest.approx(0.8)
    assert report.meets(0.8)
    assert not report.meets(0.81)


def test_heldout_never_moves_the_composite() -> None:
    suite = make_suite(micro=HAND_MICRO)
    base = compute_report(hand_runs(), suite)
    changed = [
        run("h1", 1.0, split="heldout", latency_ms=1.0),
        run("h2", 0.0, split="heldout", format_ok=False),
        run("h2", 1.0, split="heldout", variant=0),
    ]
    other = compute_report([r for r in hand_runs() if r.split == "core"] + changed, suite)
    assert other.composite == base.composite
    assert other.composite_ci == base.composite_ci
    assert other.micro == base.micro
    assert other.heldout == pytest.approx(0.5)
    assert other.n_heldout == 2
    assert other.heldout_ci is not None and other.heldout_ci[0] < other.heldout_ci[1]


def test_weights_redistributed_without_variants_or_micro() -> None:
    runs = [run("a", 1.0), run("b", 0.5)]
    alone = compute_report(runs, make_suite())
    assert alone.robustness is None and alone.micro is None
    assert alone.robustness_ci is None
    assert alone.weights == {"core": 1.0, "robustness": 0.0, "micro": 0.0}
    assert alone.composite == pytest.approx(0.75)
    assert alone.consistency is None

    micro = [{"kind": "format_rate", "min_rate": 0.5}]
    with_micro = compute_report(runs, make_suite(micro=micro))
    assert with_micro.weights == pytest.approx({"core": 0.875, "robustness": 0.0, "micro": 0.125})
    assert with_micro.composite == pytest.approx(0.875 * 0.75 + 0.125 * 1.0)

    with_variants = compute_report([*runs, run("a", 0.0, variant=0)], make_suite())
    assert with_variants.weights == pytest.approx(
        {"core": 0.7 / 0.9, "robustness": 0.2 / 0.9, "micro": 0.0}
    )
    assert with_variants.composite == pytest.approx((0.7 * 0.75 + 0.2 * 0.0) / 0.9)


def test_latency_scoring() -> None:
    micro = [{"kind": "latency", "percentile": 95, "budget_ms": 100}]
    fast = [run(f"s{i}", 1.0, latency_ms=10.0 * (i + 1)) for i in range(10)]  # p95 = 95.5
    report = compute_report(fast, make_suite(micro=micro))
    assert report.micro_parts["latency_p95"]["value"] == pytest.approx(95.5)
    assert report.micro == 1.0
    slow = [run(f"s{i}", 1.0, latency_ms=400.0) for i in range(10)]
    assert compute_report(slow, make_suite(micro=micro)).micro == pytest.approx(0.25)
    # Variant latencies count; held-out ones do not.
    mixed = [run("a", 1.0, latency_ms=50), run("a", 1.0, variant=0, latency_ms=200)]
    mixed.append(run("h", 1.0, split="heldout", latency_ms=10_000))
    lat = compute_report(mixed, make_suite(micro=micro)).micro_parts["latency_p95"]
    assert lat["value"] == pytest.approx(50 + 0.95 * 150)


def test_format_rate_scoring_and_weighted_micro() -> None:
    micro = [
        {"kind": "format_rate", "min_rate": 0.9},
        {"kind": "latency", "percentile": 50, "budget_ms": 10, "weight": 3},
    ]
    runs = [run(f"s{i}", 1.0, format_ok=i < 9, latency_ms=20) for i in range(10)]
    report = compute_report(runs, make_suite(micro=micro))
    assert report.micro_parts["format_rate"]["score"] == 1.0  # 0.9 >= 0.9
    assert report.micro_parts["latency_p50"]["score"] == pytest.approx(0.5)
    assert report.micro == pytest.approx((1.0 * 1 + 0.5 * 3) / 4)
    runs = [run(f"s{i}", 1.0, format_ok=i < 6) for i in range(10)]
    report = compute_report(runs, make_suite(micro=micro[:1]))
    assert report.micro == pytest.approx(0.6 / 0.9)


def test_slices_by_tag() -> None:
    report = compute_report(hand_runs(), make_suite())
    assert set(report.slices) == {"blocked", "easy", "ctr"}
    blocked = report.slices["blocked"]
    assert blocked["score"] == pytest.approx(0.75) and blocked["n"] == 2
    lo, hi = blocked["ci"]
    assert lo <= 0.75 <= hi
    assert report.slices["easy"] == {"score": 1.0, "n": 1, "ci": (1.0, 1.0)}
    assert report.slices["ctr"]["score"] == 0.0


def test_core_ci_resamples_scenarios_and_is_deterministic() -> None:
    rng = random.Random(3)
    runs = []
    for i in range(100):
        own = 1.0 if rng.random() < 0.7 else 0.0
        runs.append(run(f"s{i}", own))
        runs += [run(f"s{i}", own, variant=v) for v in range(3)]
    suite = make_suite()
    first = compute_report(runs, suite, seed=11)
    assert first == compute_report(runs, suite, seed=11)
    assert first.core_ci is not None and first.robustness_ci is not None
    assert first.core_ci[0] < first.core < first.core_ci[1]
    # Variants copy their scenario: resampling scenarios keeps the two intervals equal,
    # where resampling runs independently would make robustness's narrower.
    assert first.robustness_ci == pytest.approx(first.core_ci)
    assert first.consistency == 1.0
    assert first.composite_ci == pytest.approx(first.core_ci)


def test_report_serialisation_and_markdown() -> None:
    report = compute_report(hand_runs(), make_suite(micro=HAND_MICRO))
    data = report.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text) == data
    assert data["composite"] == round(report.composite, 6)
    assert data["robustness"] == 0.333333
    assert isinstance(data["composite_ci"], list)
    assert data["micro_parts"]["latency_p50"]["score"] == 0.8

    empty = compute_report([run("h", 1.0, split="heldout")], make_suite()).to_dict()
    json.dumps(empty, allow_nan=False)
    assert empty["composite"] is None and empty["core"] is None

    md = report.to_markdown()
    assert "| **composite** | 0.498 |" in md
    assert "latency_p50" in md and "heldout" in md and "| blocked | 2 |" in md
    assert "`b`" in md


def test_duplicate_runs_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        compute_report([run("a", 1.0), run("a", 0.0)], make_suite())
    # The same id may hold one own-input run and several variants.
    report = compute_report([run("a", 1.0), run("a", 0.0, variant=0)], make_suite())
    assert isinstance(report, EvalReport)
