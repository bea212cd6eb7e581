"""Run a suite's scenarios through a backend and score every output with the rubric.

Every core and dev scenario runs on its own input and on each of its variants (robustness);
held-out scenarios run on their own input only. With ``repeats`` > 1 each input is sampled
several times and the repeat reducer (mean, majority, pass@k) gives the scenario's score.
A label task's requests carry its labels: a backend that scores labels answers greedy ones
with the best label from one prompt pass (``inference.labels``), the others generate. A
label it had to force (the model would not have written one) scores as no answer, so the
scores are greedy generation's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from modelsmith.evaluation.budget import answer_budget, label_forms, longest, reference_text
from modelsmith.evaluation.criteria import ScoringContext
from modelsmith.evaluation.results import ScenarioRun, ScenarioScore
from modelsmith.evaluation.scoring import output_labels, rubric_for, score_output
from modelsmith.evaluation.stats import reduce_repeats
from modelsmith.inference.base import Backend, Generation, GenerationRequest, ProgressFn
from modelsmith.specs import LoadedSuite, Specialist

# Enough room for the answer the output contract asks for, and no more: generation time
# grows with every token. A label task's floor (a longer label raises it); a text or JSON
# task's budget when its suite has no reference answers (else it follows them).
DEFAULT_MAX_NEW_TOKENS = {"label": 4, "json": 256, "text": 128}


def default_max_new_tokens(contract: Any, expected: Iterable[Any],
                           count_tokens: Callable[[str], int]) -> int:
    """The tokens to generate per answer when the settings name none, from the output
    contract and the reference answers (``expected``), never fewer than one needs
    (:mod:`.budget`): a label task its longest label + 1 (EOS), at least
    ``DEFAULT_MAX_NEW_TOKENS['label']``; a text or JSON task its longest reference with
    headroom, or ``DEFAULT_MAX_NEW_TOKENS`` without references. ``count_tokens`` is the
    backend's (an estimate on an OpenAI-compatible endpoint)."""
    kind = contract.kind
    fallback = DEFAULT_MAX_NEW_TOKENS.get(kind, 64)
    # Each distinct reference counted once: variants share their scenario's.
    references = list(dict.fromkeys(t for t in map(reference_text, expected) if t is not None))
    if kind == "label":
        answers = label_forms(dict.fromkeys([*contract.labels, *references]))
        return max(fallback, answer_budget(kind, longest(answers, count_tokens)[0]))
    tokens, where = longest(references, count_tokens)
    return fallback if where is None else answer_budget(kind, tokens)


@dataclass(frozen=True)
class EvalSettings:
    limit: int | None = None  # first N core, first N dev and first N held-out scenarios
    repeats: int = 1
    reducer: str = "mean"  # mean | majority | pass@k
    temperature: float = 0.0  # repeats > 1 with temperature 0 give identical outputs
    max_new_tokens: int | None = None  # None: default_max_new_tokens
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
    labels = output_labels(contract)
    items = plan_items(suite, settings)
    max_new = settings.max_new_tokens or default_max_new_tokens(
        contract, (item.scenario.expected for item in items), backend.count_tokens)
    repeats = max(1, settings.repeats)
    requests = [
        GenerationRequest(
            prompt=task.render(item.text),
            system=task.system_prompt,
            max_new_tokens=max_new,
            temperature=settings.temperature,
            seed=settings.seed + r,
            labels=tuple(labels or ()),  # a label task: answered by label scoring
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
        scored = [score_answer(rubric, g, ctx, threshold, contract) for g in gens]
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


def score_answer(rubric: Sequence[Any], generation: Generation, ctx: ScoringContext,
                 threshold: float, contract: Any) -> ScenarioScore:
    """Score one answer. A label that label scoring had to force (``meta["forced"]``: the
    model's own greedy answer would not have been a label) is scored as no answer, so an
    evaluation scores what greedy generation scores and a guess earns nothing."""
    if not generation.meta.get("forced"):
        return score_output(rubric, generation.text, ctx, threshold, contract)
    blank = score_output(rubric, "", ctx, threshold, contract)
    why = f"forced {generation.text!r}, the model writes no label here: "
    return dataclasses.replace(blank, criteria=tuple(
        dataclasses.replace(c, reason=why + c.reason) for c in blank.criteria))


def probe_latency(runs: list[ScenarioRun], requests: Sequence[GenerationRequest],
                  backend: Backend, probes: int) -> None:
    """Answer the first ``probes`` core inputs (their own, not variants) again, each alone,
    and record each one's wall time as its ``alone_ms`` (the latency benchmark reads it)."""
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
