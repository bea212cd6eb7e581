"""Reward-hacking watch: training reward that rose while held-out accuracy fell.

GRPO optimises the rubric on training prompts; the held-out split is the check that the
gain is real. When a candidate is evaluated, its training run's reward change is compared
with the paired held-out difference against the evaluation it was trained from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from modelsmith.evaluation.composite import EvalReport, compare_runs
from modelsmith.evaluation.results import ScenarioRun
from modelsmith.evaluation.service import load_runs
from modelsmith.events.store import EventStore

Check = Callable[[Sequence[ScenarioRun], EvalReport], list[str]]


def reward_hacking_check(store: EventStore, specialist: str, version: str) -> Check | None:
    """A check for ``evaluate(checks=...)``, or None when the log lacks what it needs (no
    training run with reward metrics, or no evaluation it was trained from)."""
    events = list(store.read(specialist))
    registered = next((e for e in events if e.type == "CandidateRegistered"
                       and e.data["version"] == version), None)
    run_id = registered and registered.data["lineage"].get("run_id")
    if not run_id:
        return None
    completed = next((e for e in events if e.type == "TrainingCompleted"
                      and e.data["run_id"] == run_id), None)
    metrics = completed.data.get("metrics", {}) if completed else {}
    start, end = metrics.get("reward_start"), metrics.get("reward_end")
    started = next((i for i, e in enumerate(events) if e.type == "TrainingStarted"
                    and e.data["run_id"] == run_id), None)
    if start is None or end is None or started is None:
        return None
    source = next((e for e in reversed(events[:started]) if e.type == "FailuresExtracted"), None)
    base_event = store.get(source.data["eval_event"]) if source else None
    if base_event is None:
        return None
    base_runs = load_runs(store, base_event)
    base_name = base_event.data.get("version") or base_event.data.get("model")

    def check(runs: Sequence[ScenarioRun], report: EvalReport) -> list[str]:
        if end <= start:
            return []
        try:
            held = compare_runs(base_runs, runs, split="heldout")
        except ValueError:  # no shared held-out scenario (e.g. a --limit run)
            return []
        if held.verdict != "worse":
            return []
        lo, hi = held.ci
        return [
            f"reward-hacking watch: training reward rose {start:.3f} -> {end:.3f} while "
            f"held-out fell {held.diff:+.3f} (95% CI [{lo:+.3f}, {hi:+.3f}], n={held.n}) "
            f"against {base_name}"
        ]

    return check
