"""Evaluate a model for a specialist and record it; compare two recorded evaluations.

An evaluation appends ``EvalStarted``, runs the suite, then appends ``EvalCompleted`` with
the composite, its breakdown and CIs, and two evidence files in the event's commit:
``results.jsonl`` (every scenario's input, outputs, scores, reasons) and ``report.json``.
A comparison reads that evidence back, so it needs nothing but the log.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelsmith.evaluation.composite import (
    EvalReport,
    compare_runs,
    compute_report,
    decision_of,
    overfit_gap,
    per_item_scores,
)
from modelsmith.evaluation.results import EvalError, ScenarioRun, Split
from modelsmith.evaluation.runner import EvalSettings, run_suite, runs_from_jsonl, runs_to_jsonl
from modelsmith.evaluation.stats import PairedComparison
from modelsmith.events.store import EventStore, Recorder
from modelsmith.events.types import EvalCompleted, EvalStarted, Event, OverfittingDetected
from modelsmith.inference.base import Backend, ProgressFn
from modelsmith.specs import Repository

RESULTS = "results.jsonl"
REPORT = "report.json"


@dataclass
class EvalOutcome:
    report: EvalReport
    runs: list[ScenarioRun]
    event: Event | None  # the recorded EvalCompleted (None with record=False)
    model_ref: str
    duration_s: float
    warnings: list[str]


def evaluate(
    repo: Repository,
    specialist: str,
    backend: Backend,
    *,
    model_ref: str,
    store: EventStore | None,
    settings: EvalSettings | None = None,
    version: str | None = None,
    actor: str = "cli",
    commit: str | None = None,
    scope: str | None = None,
    progress: ProgressFn | None = None,
    judge: Callable[..., tuple[float, str]] | None = None,
    checks: Sequence[Callable[[list[ScenarioRun], EvalReport], list[str]]] = (),
    seen: Iterable[str] | None = None,
    weights_hash: str | None = None,
) -> EvalOutcome:
    """Run ``specialist``'s suite on ``backend``; append the events when ``store`` is given.

    ``checks`` look at the result before it is recorded; their warnings go into the event.
    ``scope`` makes the events replay-safe (:class:`~modelsmith.events.store.Recorder`): an
    evaluation killed half way and run again under the same scope keeps the ``EvalStarted``
    (and run id) recorded the first time.

    ``seen`` names the core scenarios the model trained on (default: what the lineage of
    ``version`` in ``store`` records; nothing for a base model): they are left out of the
    unseen composite. A candidate whose decision metric trails its composite by more than
    the policy's ``overfit_margin`` gets an ``OverfittingDetected`` beside its evaluation.
    ``weights_hash`` is the content hash of the weights ``backend`` runs (a candidate's):
    recorded, so that a gate can tell which weights the evaluation measured.
    """
    settings = settings or EvalSettings()
    spec = specialist_or_error(repo, specialist)
    suite = repo.suite_for(spec)
    run_id = uuid.uuid4().hex[:12]
    if seen is None:
        seen = seen_by(store, specialist, version) if store is not None and version else ()
    seen = frozenset(seen)
    recorder = None
    if store is not None:
        recorder = Recorder(store, specialist, actor=actor, cause=commit, scope=scope)
        run_id = _started_run_id(recorder, run_id)
        recorder.record(EvalStarted(version=version, model=model_ref, suite=suite.name,
                                    suite_hash=suite.suite_hash, run_id=run_id,
                                    backend=backend.name))
    t0 = time.perf_counter()
    runs = run_suite(spec, suite, backend, settings, progress=progress, judge=judge)
    report = compute_report(runs, suite.suite, seed=settings.seed, seen=seen)
    duration = time.perf_counter() - t0
    warnings = [w for check in checks for w in check(runs, report)]
    event = None
    if recorder is not None:
        summary = report.to_dict()  # rounded, NaN as None: fit for the event
        gates = repo.policy_for(spec).spec.gates.decision
        metric, value, n = decision_of(report, gates.min_unseen)
        scores = _scores(summary, report)
        payload = EvalCompleted(version=version, model=model_ref, suite=suite.name,
                                suite_hash=suite.suite_hash, run_id=run_id,
                                **scores, limit=settings.limit,
                                backend=backend.name, commit=commit,
                                duration_s=round(duration, 3), warnings=warnings,
                                seen=len(seen & {s.id for s in suite.core}),
                                decision_metric=metric,
                                decision=None if value is None else round(value, 6),
                                decision_n=n, weights_hash=weights_hash)
        event = recorder.record(payload, evidence=_evidence(runs, summary))
        gap = overfit_gap(scores["composite"], payload.decision)
        if version and metric and not settings.limit and gap is not None \
                and gap > gates.overfit_margin + 1e-9:
            recorder.record(OverfittingDetected(
                version=version, eval_event=event.id, metric=metric,
                decision=payload.decision, composite=scores["composite"],
                margin=gates.overfit_margin,
                reason=(f"{metric} composite {payload.decision:.3f} (n={n}) trails the "
                        f"composite {scores['composite']:.3f} by {gap:.3f}, more than the "
                        f"margin {gates.overfit_margin}: it learnt the evaluation, not the "
                        "task")))
    return EvalOutcome(report, runs, event, model_ref, duration, warnings)


def seen_by(store: EventStore, specialist: str, version: str) -> frozenset[str]:
    """The core scenarios candidate ``version`` trained on, as its lineage records them."""
    for event in store.read(specialist):
        if event.type == "CandidateRegistered" and event.data.get("version") == version:
            return frozenset(event.data.get("lineage", {}).get("seen") or ())
    return frozenset()


def _started_run_id(recorder: Recorder, fresh: str) -> str:
    """The run id of this evaluation when it was started before and cut short, else ``fresh``."""
    earlier = recorder.recorded("EvalStarted")
    return fresh if earlier is None else str(earlier.data["run_id"])


def _scores(summary: dict[str, Any], report: EvalReport) -> dict[str, Any]:
    """The scores an ``EvalCompleted`` carries, from the report's JSON-safe ``summary``."""
    return {
        "composite": summary["composite"] or 0.0,
        "core": summary["core"],
        "robustness": summary["robustness"],
        "micro": summary["micro"],
        "heldout": summary["heldout"],
        "ci": _interval(summary["composite_ci"]),
        "heldout_ci": _interval(summary["heldout_ci"]),
        "pass_rate": summary["pass_rate"],
        "slices": {tag: s["score"] for tag, s in summary["slices"].items()
                   if s.get("score") is not None},
        "scenarios": report.n_core + report.n_dev + report.n_heldout,
        "failed": len(report.failed_ids),
        "unseen": summary["unseen"],
        "unseen_ci": _interval(summary["unseen_ci"]),
        "unseen_n": report.n_unseen,
        "dev": summary["dev"],
        "dev_ci": _interval(summary["dev_ci"]),
        "dev_n": report.n_dev,
        "heldout_n": report.n_heldout,
    }


def _evidence(runs: list[ScenarioRun], summary: dict[str, Any]) -> dict[str, bytes]:
    """The files an ``EvalCompleted`` commit holds: every run, and the report."""
    return {
        RESULTS: runs_to_jsonl(runs),
        REPORT: json.dumps(summary, indent=1, sort_keys=True).encode(),
    }


def specialist_or_error(repo: Repository, name: str):
    spec = repo.specialists.get(name)
    if spec is None:
        known = ", ".join(sorted(repo.specialists)) or "none"
        raise EvalError(f"no specialist {name!r} in {repo.root} (known: {known})")
    return spec


def find_evaluation(store: EventStore, specialist: str, ref: str) -> Event:
    """The EvalCompleted an argument names: an event id (or a unique prefix of 6+ chars),
    or a model/version reference (its latest full evaluation)."""
    matches = []
    latest = None
    for event in store.read(specialist):
        if event.type != "EvalCompleted":
            continue
        if len(ref) >= 6 and event.id.startswith(ref):
            matches.append(event)
        data = event.data
        if ref in (data.get("model"), data.get("version")) and not data.get("limit"):
            latest = event
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise EvalError(f"{ref!r} matches {len(matches)} evaluations; give more of the id")
    if latest is not None:
        return latest
    raise EvalError(
        f"no full evaluation {ref!r} for {specialist}: give an EvalCompleted event id or a "
        f"model that `modelsmith eval {specialist} --model {ref}` evaluated "
        "(see `modelsmith log --type EvalCompleted`)"
    )


def load_runs(store: EventStore, event: Event) -> list[ScenarioRun]:
    blobs = store.evidence(event.id)
    if RESULTS not in blobs:
        raise EvalError(f"evaluation {event.id} carries no {RESULTS} evidence")
    return runs_from_jsonl(blobs[RESULTS])


@dataclass
class Comparison:
    baseline: Event
    candidate: Event
    split: Split
    result: PairedComparison
    same_suite: bool
    deltas: list[dict[str, object]]  # scenarios whose score changed: id, baseline, candidate
    # Beside a core comparison: the same pair on what neither trained on (``unseen``: core
    # scenarios outside both lineages), on ``dev`` and on ``heldout``, where both ran them.
    also: dict[str, PairedComparison] = field(default_factory=dict)

    def disagreements(self) -> list[str]:
        """Splits whose verdict contradicts the main one (better on core, worse on
        held-out: the candidate learnt the evaluation rather than the task)."""
        main = self.result.verdict
        opposite = {"better": "worse", "worse": "better"}.get(main)
        return [name for name, r in self.also.items() if opposite and r.verdict == opposite]

    def to_dict(self) -> dict[str, object]:
        def who(e: Event) -> dict[str, object]:
            d = e.data
            return {"event_id": e.id, "model": d.get("model"), "version": d.get("version"),
                    "suite_hash": d.get("suite_hash"), "composite": d.get("composite")}

        return {"baseline": who(self.baseline), "candidate": who(self.candidate),
                "split": self.split, "same_suite": self.same_suite, **self.result.to_dict(),
                "deltas": self.deltas,
                "also": {name: r.to_dict() for name, r in self.also.items()},
                "disagree": self.disagreements()}


def compare(store: EventStore, specialist: str, a: str, b: str, *, split: Split = "core",
            n_resamples: int = 2000, seed: int = 0) -> Comparison:
    """Paired comparison of two recorded evaluations on the scenarios both ran."""
    base, cand = find_evaluation(store, specialist, a), find_evaluation(store, specialist, b)
    base_runs, cand_runs = load_runs(store, base), load_runs(store, cand)
    try:
        result = compare_runs(base_runs, cand_runs, split=split, n_resamples=n_resamples,
                              seed=seed)
    except ValueError as exc:
        raise EvalError(f"cannot compare {a} and {b} on {split}: {exc}") from None
    same = base.data.get("suite_hash") == cand.data.get("suite_hash")
    before, after = per_item_scores(base_runs, split), per_item_scores(cand_runs, split)
    deltas = [{"id": i, "baseline": before[i], "candidate": after[i],
               "delta": round(after[i] - before[i], 6)}
              for i in sorted(before.keys() & after.keys()) if after[i] != before[i]]
    deltas.sort(key=lambda d: (-abs(d["delta"]), d["id"]))
    also: dict[str, PairedComparison] = {}
    if split == "core":
        seen = set()
        for event in (base, cand):
            version = event.data.get("version")
            if version:
                seen |= seen_by(store, specialist, version)
        if seen:
            unseen_a = [r for r in base_runs if r.id not in seen]
            unseen_b = [r for r in cand_runs if r.id not in seen]
            _also(also, "unseen", unseen_a, unseen_b, "core", n_resamples, seed)
        for other in ("dev", "heldout"):
            _also(also, other, base_runs, cand_runs, other, n_resamples, seed)
    return Comparison(base, cand, split, result, same, deltas, also)


def _also(out: dict[str, PairedComparison], name: str, a: list[ScenarioRun],
          b: list[ScenarioRun], split: Split, n_resamples: int, seed: int) -> None:
    with contextlib.suppress(ValueError):  # nothing shared on that split: nothing to show
        out[name] = compare_runs(a, b, split=split, n_resamples=n_resamples, seed=seed)


def _interval(ci: list[float | None] | None) -> tuple[float, float] | None:
    return None if not ci or None in ci else (ci[0], ci[1])
