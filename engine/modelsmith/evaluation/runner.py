"""Run a suite's scenarios through a backend and score every output with the rubric.

Every core and dev scenario runs on its own input and on each of its variants (robustness);
held-out scenarios run on their own input only. With ``repeats`` > 1 each input is sampled
several times and the repeat reducer (mean, majority, pass@k) gives the scenario's score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from modelsmith.evaluation.criteria import ScoringContext
from modelsmith.evaluation.results import ScenarioRun
from modelsmith.evaluation.scoring import output_labels, rubric_for, score_output
from modelsmith.evaluation.stats import reduce_repeats
from modelsmith.inference.base import Backend, GenerationRequest, ProgressFn
from modelsmith.specs import LoadedSuite, Specialist

# Enough room for the answer the output contract asks for, and no more: generation time
# grows with every token.
DEFAULT_MAX_NEW_TOKENS = {"label": 4, "json": 256, "text": 128}


@dataclass(frozen=True)
class EvalSettings:
    limit: int | None = None  # first N core, first N dev and first N held-out scenarios
    repeats: int = 1
    reducer: str = "mean"  # mean | majority | pass@k
    temperature: float = 0.0  # repeats > 1 with temperature 0 give identical outputs
    max_new_tokens: int | None = None
    seed: int = 0
    include_heldout: bool = True
    # Core inputs answered again one at a time, for the suite's latency benchmark: a batched
    # call's wall time is what the whole batch waited, not what one request waits.
    latency_probes: int = 16


@dataclass(frozen=True)
class _Item:
    scenario: Any
    variant: int | None
    text: str


def plan_items(suite: LoadedSuite, settings: EvalSettings) -> list[_Item]:
    """The inputs to run, in a stable order: core and dev (own input, then variants),
    held-out (own input). The training pool is never evaluated."""
    def first(scenarios: list[Any]) -> list[Any]:
        return scenarios[: settings.limit] if settings.limit else scenarios

    heldout = first(suite.heldout)
    items = []
    for sc in first(suite.core) + first(suite.dev):
        items.append(_Item(sc, None, sc.input))
        items.extend(_Item(sc, i, text) for i, text in enumerate(sc.variants))
    if settings.include_heldout:
        items.extend(_Item(sc, None, sc.input) for sc in heldout)
    return items


def run_suite(
    specialist: Specialist,
    suite: LoadedSuite,
    backend: Backend,
    settings: EvalSettings | None = None,
    progress: ProgressFn | None = None,
    judge: Callable[..., tuple[float, str]] | None = None,
) -> list[ScenarioRun]:
    """Generate and score; one ScenarioRun per (scenario, variant)."""
    settings = settings or EvalSettings()
    task = specialist.spec.task
    contract = task.output
    max_new = settings.max_new_tokens or DEFAULT_MAX_NEW_TOKENS.get(contract.kind, 64)
    labels = output_labels(contract)
    items = plan_items(suite, settings)
    repeats = max(1, settings.repeats)
    requests = [
        GenerationRequest(
            prompt=task.render(item.text),
            system=task.system_prompt,
            max_new_tokens=max_new,
            temperature=settings.temperature,
            seed=settings.seed + r,
        )
        for item in items
        for r in range(repeats)
    ]
    generations = backend.generate(requests, progress=progress)
    threshold = suite.suite.spec.pass_threshold
    runs = []
    for i, item in enumerate(items):
        sc = item.scenario
        gens = generations[i * repeats : (i + 1) * repeats]
        ctx = ScoringContext(expected=sc.expected, labels=labels,
                             count_tokens=backend.count_tokens, judge=judge)
        rubric = rubric_for(sc, suite)
        scored = [score_output(rubric, g.text, ctx, threshold, contract) for g in gens]
        score, passed = reduce_repeats([s.score for s in scored], [s.passed for s in scored],
                                       settings.reducer)
        runs.append(ScenarioRun(
            id=sc.id,
            split=sc.split,
            variant=item.variant,
            tags=list(sc.tags),
            input=item.text,
            expected=sc.expected,
            outputs=[g.text for g in gens],
            score=score,
            passed=passed,
            format_ok=all(s.format_ok for s in scored),
            latency_ms=sum(g.latency_ms for g in gens) / len(gens),
            completion_tokens=sum(g.completion_tokens for g in gens),
            criteria=list(scored[0].criteria),
        ))
    if any(b.kind == "latency" for b in suite.suite.spec.micro) and settings.latency_probes > 0:
        probe_latency(runs, requests[::repeats], backend, settings.latency_probes)
    return runs


def probe_latency(runs: list[ScenarioRun], requests: Sequence[GenerationRequest],
                  backend: Backend, probes: int) -> None:
    """Answer the first ``probes`` core inputs (their own, not variants) again, each alone,
    and record each one's wall time as its ``alone_ms`` (the latency benchmark reads it)."""
    import dataclasses
    import time

    chosen = [i for i, run in enumerate(runs)
              if run.split == "core" and run.variant is None][:probes]
    if not chosen:
        return
    backend.generate([requests[chosen[0]]])  # warm: the first call pays for lazy set-up
    for i in chosen:
        started = time.perf_counter()
        backend.generate([requests[i]])
        runs[i] = dataclasses.replace(runs[i], alone_ms=(time.perf_counter() - started) * 1000)


def runs_from_jsonl(data: bytes) -> list[ScenarioRun]:
    """Per-scenario results back from an evaluation's evidence blob."""
    import json

    from modelsmith.evaluation.results import CriterionResult

    runs = []
    for line in data.decode("utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        row["criteria"] = [CriterionResult(**c) for c in row.get("criteria", [])]
        runs.append(ScenarioRun(**row))
    return runs


def runs_to_jsonl(runs: Sequence[ScenarioRun]) -> bytes:
    import json

    return "".join(json.dumps(r.to_dict(), ensure_ascii=False, default=str) + "\n"
                   for r in runs).encode("utf-8")
