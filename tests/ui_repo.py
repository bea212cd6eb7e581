"""A fork with a log the dashboard has something to show for, written with the real store
(no model, no training): rtb-quality's versions v1..v4 with their lineage, a dataset, a
training run, evaluations carrying ``results.jsonl`` evidence whose failing scenarios have
criterion reasons, promotions through shadow, canary and production, a canary rolled back
on live metrics, a proposal and a rejection; and a second specialist whose name is at the
63-character limit and whose evaluation's scenario input is hostile HTML."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from evaluations import recorded_event, suite_runs
from modelsmith.evaluation.composite import compute_report
from modelsmith.evaluation.results import CriterionResult, ScenarioRun
from modelsmith.events.gitstore import GitEventStore
from modelsmith.events.types import (
    CandidateRegistered,
    DatasetBuilt,
    Event,
    Lineage,
    MetricsObserved,
    Promoted,
    PromotionProposed,
    PromotionRejected,
    RolledBack,
    TrainingCompleted,
    TrainingStarted,
)

NAME = "rtb-quality"
#: A specialist name at the log's limit (63 characters: lowercase letters, digits, '-').
LONG_NAME = "hostile-" + "x" * 53 + "-9"
#: A scenario input that runs script wherever it is not escaped.
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
#: The criterion reason a failing scenario's run carries (with the scenario's id after it).
REASON = "wanted the label of the reference answer, the output has none"


@dataclass
class Built:
    root: Path
    evaluations: dict[str, str] = field(default_factory=dict)  # version -> EvalCompleted id
    hostile_eval: str = ""
    failing: dict[str, list[str]] = field(default_factory=dict)  # eval id -> failing ids


def _runs(root: Path, fail_every: int) -> tuple[list[ScenarioRun], object]:
    """The suite's runs: a failing one says why (:data:`REASON`), a passing one answers the
    reference."""
    return suite_runs(
        root, fail_every, specialist=NAME,
        criteria=lambda sc, ok: [CriterionResult(
            kind="exact", score=float(ok), weight=1.0, required=True,
            reason="matches the reference" if ok else f"{REASON} ({sc.id})")],
        output=lambda sc, ok: str(sc.expected) if ok else "x")


def _evaluation(runs: list[ScenarioRun], suite, version: str, at: datetime) -> Event:
    report = compute_report(runs, suite.suite, n_resamples=200)
    return recorded_event(runs, suite, version, actor="ci", at=at, report=report,
                          core=report.to_dict().get("core"), scenarios=len(runs),
                          failed=sum(not r.passed for r in runs))


def build(root: Path) -> Built:
    """Append the log to ``root`` (a git repository holding the demo's files)."""
    store = GitEventStore(root)
    built = Built(root)
    start = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    clock = iter(start + timedelta(minutes=7 * i) for i in range(1000))
    events: list[Event] = []

    def add(payload, actor: str = "modelsmith-iterate", cause: str | None = None,
            evidence: dict[str, bytes] | None = None) -> Event:
        event = Event.new(payload, actor=actor, cause=cause, at=next(clock),
                          evidence=evidence)
        events.append(event)
        return event

    parent = None
    for n, fail_every in enumerate((5, 10, 20, 20), start=1):
        version = f"v{n}"
        dataset = f"{n:02d}" * 32
        lineage = Lineage(base_model="tiny-test", parent=parent)
        if parent is not None:
            add(DatasetBuilt(dataset_hash=dataset, rows=40 * n,
                             sources={"failures": 10 * n, "augmented": 30 * n},
                             iteration=n - 1, new_rows=40))
            run_id = f"run-{n}"
            add(TrainingStarted(run_id=run_id, method="sft", profile="tiny-test",
                                host="local", parent=parent, dataset_hash=dataset))
            add(TrainingCompleted(run_id=run_id, method="sft", host="local",
                                  duration_s=12.5, metrics={"loss": 1.0 / n}))
            lineage = Lineage(base_model="tiny-test", parent=parent, dataset_hash=dataset,
                              run_id=run_id, host="local", duration_s=12.5)
        add(CandidateRegistered(version=version, lineage=lineage))
        runs, suite = _runs(root, fail_every)
        evaluation = _evaluation(runs, suite, version, next(clock))
        events.append(evaluation)
        built.evaluations[version] = evaluation.id
        built.failing[evaluation.id] = [r.id for r in runs if not r.passed]
        parent = version
    proposed = add(PromotionProposed(version="v1", stage="shadow", reason="target met"))
    add(Promoted(version="v1", stage="shadow"), actor="reconcile", cause=proposed.id)
    add(Promoted(version="v1", stage="canary", traffic=0.1), actor="reconcile")
    add(Promoted(version="v1", stage="production", previous=None), actor="reconcile")
    add(Promoted(version="v2", stage="shadow"), actor="reconcile")
    add(Promoted(version="v2", stage="canary", traffic=0.2), actor="reconcile")
    now = next(clock)
    observed = add(MetricsObserved(version="v2", stage="canary", window_start=now,
                                   window_end=now + timedelta(minutes=5), requests=250,
                                   metrics={"score_mean": 0.2, "format_rate": 1.0}),
                   actor="serve")
    add(RolledBack(stage="canary", from_version="v2", to_version=None,
                   reason="score_mean 0.200 < 0.8 over 250 requests of v2 in canary",
                   metric="score_mean", value=0.2, threshold=0.8),
        actor="reconcile", cause=observed.id)
    add(PromotionRejected(version="v2", stage="canary", gate="rolled-back",
                          reason="v2 was rolled back from canary", numbers={"value": 0.2}),
        actor="reconcile")
    add(Promoted(version="v3", stage="shadow"), actor="reconcile")
    add(Promoted(version="v3", stage="canary", traffic=0.1), actor="reconcile")
    add(Promoted(version="v4", stage="shadow"), actor="reconcile")
    store.append(NAME, events, 0)

    runs, suite = _runs(root, 5)
    runs[1].input = HOSTILE
    runs[1].outputs = [HOSTILE]
    registered = Event.new(CandidateRegistered(version="v1", lineage=Lineage(
        base_model="tiny-test")), actor="<b>ci</b>", at=next(clock))
    hostile = _evaluation(runs, suite, "v1", next(clock))
    store.append(LONG_NAME, [registered, hostile], 0)
    built.hostile_eval = hostile.id
    built.failing[hostile.id] = [r.id for r in runs if not r.passed]
    return built


def fork(where: Path) -> Path:
    """A git repository at ``where`` holding a copy of the demo's declarative files."""
    import shutil

    import pygit2

    from conftest import DEMO_PARTS, REPO_ROOT

    for part in DEMO_PARTS:
        shutil.copytree(REPO_ROOT / part, where / part)
    pygit2.init_repository(str(where))
    return where


class UiProcess:
    """``modelsmith ui --port 0`` on ``root`` as a real process; :attr:`url` is the address
    it printed. Its stderr is kept in :attr:`lines` (read on a thread)."""

    def __init__(self, root: Path, *, token: str | None = None, timeout: float = 120.0):
        import os
        import queue
        import re
        import subprocess
        import sys
        import threading

        env = dict(os.environ, MODELSMITH_NO_FETCH="1")
        env.pop("MODELSMITH_UI_TOKEN", None)
        if token is not None:
            env["MODELSMITH_UI_TOKEN"] = token
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelsmith", "-C", str(root), "--no-fetch", "ui",
             "--port", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=env)
        self.lines: list[str] = []
        found: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                address = re.search(r"dashboard on (http://\S+?)/? ", line)
                if address:
                    found.put(address.group(1))
            found.put(None)

        threading.Thread(target=read, daemon=True).start()
        try:
            url = found.get(timeout=timeout)
        except queue.Empty:
            url = None
        if url is None:
            self.stop()
            raise AssertionError("modelsmith ui printed no address:\n" + "\n".join(self.lines))
        self.url: str = url

    def stop(self, timeout: float = 30.0) -> int:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def __enter__(self) -> UiProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
