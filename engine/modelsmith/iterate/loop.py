"""``modelsmith iterate``: evaluate -> extract failures -> generate rows -> validate them
-> train -> re-evaluate -> decide, until the composite target holds for
``target.sustained`` iterations, the budget ends, or iterations stop bringing a
significant gain.

The phases of one iteration:

- ``eval``: the current model (the base at first; later the previous candidate, whose
  re-evaluation is reused) -> ``EvalStarted``/``EvalCompleted``;
- ``extract``: its failed core scenarios -> ``FailuresExtracted``;
- ``generate``: training rows for them (the suite's generator, variants, replay rows),
  written to ``.iterate/<specialist>/<iteration>/rows.jsonl``;
- ``validate``: the rows that pass validation, versioned with DVC -> ``DatasetBuilt``;
- ``train``: a job on the host pool, self-healing (:mod:`.heal`) -> ``TrainingStarted``,
  ``TrainingFailed`` per failure, ``TrainingCompleted``, ``CandidateRegistered``;
- ``reeval``: the candidate -> ``EvalStarted``/``EvalCompleted``;
- ``decide``: target held (then the held-out gate and ``PromotionProposed``), budget spent,
  no gain, or on to the next iteration.

The loop's position is saved in ``.iterate/<specialist>/state.json`` at every phase change
(atomically); a second loop on the same specialist is refused (:class:`~.state.LoopLock`).

Resuming: the same command picks up at the last phase recorded as done. Each phase's
events have replay-safe ids derived from ``iterate/<loop>/<iteration>/<phase>``
(:class:`~modelsmith.events.store.Recorder`): a phase killed half way and run again adopts
what it had recorded (an ``EvalStarted`` and its run id, a ``TrainingStarted``) instead of
recording it twice, and an ``EvalCompleted`` or ``CandidateRegistered`` in the log is
reused rather than recomputed -- and only when it is in the log (no phantom results).
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelsmith.errors import ModelsmithError
from modelsmith.events.store import Recorder
from modelsmith.events.types import Event, TrainingFailed

from .progress import LoopProgress
from .state import (
    IterateState,
    IterationRecord,
    LoopLock,
    PhaseOutputs,
    StateFile,
    write_atomically,
)

if TYPE_CHECKING:
    from modelsmith.artifacts.dvc import ArtifactStore
    from modelsmith.artifacts.registry import ModelRegistry
    from modelsmith.events.projection import FleetState
    from modelsmith.events.store import EventStore
    from modelsmith.inference.base import Backend
    from modelsmith.specs import Repository


@dataclass
class LoopOptions:
    max_iterations: int = 5
    model: str | None = None  # the base model ref (default: the specialist's base)
    method: str | None = None
    profile: str | None = None
    hosts: list[str] | None = None  # default: defaults.training_hosts
    patience: int = 2  # iterations without a significant gain before stopping
    target: float | None = None  # default: the specialist's target.composite
    sustained: int | None = None  # default: the specialist's target.sustained
    eval_threads: int | None = None
    eval_batch_size: int = 16
    rehearse: bool = True  # train on the previous iteration's dataset too
    overrides: dict[str, Any] = field(default_factory=dict)  # profile fields (max_steps, ...)
    fresh: bool = False  # after a loop that ended: start from the base, not its candidate


@dataclass
class LoopResult:
    specialist: str
    reason: str  # "target" | "budget" | "no-gain"
    message: str
    iterations: list[IterationRecord] = field(default_factory=list)
    candidate: str | None = None
    target: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"specialist": self.specialist, "reason": self.reason, "message": self.message,
                "candidate": self.candidate, "target": self.target,
                "iterations": [r.model_dump(mode="json") for r in self.iterations]}


Emit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class LoopParts:
    """What the loop works with: the work tree (``.iterate/`` state, datasets), the specs
    (loaded once per run), the event log and its fold, the model registry, the DVC store,
    the inference backend factory (``make_backend``'s signature) and the commit recorded
    as its events' cause."""

    root: Path
    repo: Repository
    store: EventStore
    fleet: Callable[[], FleetState]
    registry: ModelRegistry
    artifacts: ArtifactStore
    backends: Callable[..., Backend]
    # (specialist, version, stage) -> the gates `plan` would decide before any traffic or
    # approval (suite, composite along the lineage, overfitting, held-out, order): the loop
    # proposes only a version that passes them all.
    gates: Callable[[str, str, str], list[Any]]
    cause: str | None = None


class IterateLoop:
    def __init__(self, parts: LoopParts, specialist: str, options: LoopOptions, *,
                 emit: Emit = lambda _e: None, say: Callable[[str], None] = lambda _m: None,
                 progress: LoopProgress | None = None,
                 fail_after: Callable[[str, int], None] | None = None,
                 on_proposed: Callable[[str, str], str | None] | None = None) -> None:
        self.parts = parts
        self.specialist = specialist
        self.options = options
        self.emit = emit
        self.progress = progress or LoopProgress(max_iterations=options.max_iterations,
                                                 emit=lambda _e: None)
        self._say = say
        # Tests use it to crash the loop right after a phase is saved.
        self.fail_after = fail_after or (lambda _phase, _iteration: None)
        # Opens the change asking for (version, stage) on the forge; returns where it is.
        self.on_proposed = on_proposed
        self.state_file = StateFile(parts.root, specialist)
        self._shown: tuple[int, str] | None = None  # the phase the progress display shows
        self._previous: tuple[str, list[Any]] | None = None  # (path, rows) last read

    # -- helpers --------------------------------------------------------------------------

    @property
    def repo(self) -> Repository:
        """The specs, loaded once for the run."""
        return self.parts.repo

    def say(self, message: str) -> None:
        self.progress.clear()
        self._say(message)

    def _tag(self, state: IterateState, phase: str) -> str:
        return f"iterate/{state.loop_id}/{state.iteration}/{phase}"

    def _recorder(self, state: IterateState, phase: str) -> Recorder:
        tag = self._tag(state, phase)
        return Recorder(self.parts.store, self.specialist, actor=tag,
                        cause=self.parts.cause, scope=tag)

    def _save(self, state: IterateState) -> IterateState:
        self.state_file.save(state)
        self.emit({"event": "phase", "iteration": state.iteration, "phase": state.phase,
                   "done": state.done, "outputs": state.outputs.to_dict()})
        if state.done:
            self.fail_after(state.phase, state.iteration)
        elif self._shown != (state.iteration, state.phase):
            self._shown = (state.iteration, state.phase)
            self.progress.start_phase(state.phase)
        return state

    def _plan(self, state: IterateState) -> Any:
        from modelsmith.training.service import plan_training

        return plan_training(self.repo, self.specialist, self.parts.store,
                             base_ref=state.outputs.model,
                             from_eval=state.outputs.eval_event,
                             method=self.options.method, profile_name=self.options.profile,
                             overrides=self.options.overrides or None)

    def _runs(self, state: IterateState) -> list[Any]:
        from modelsmith.evaluation.service import load_runs

        event = self.parts.store.get(state.outputs.eval_event or "")
        if event is None:  # state.json names an evaluation the log does not hold
            raise LoopError(f"evaluation {state.outputs.eval_event} named in "
                            f"{self.state_file.path} is not in the event log; remove the "
                            "state file to start afresh")
        return load_runs(self.parts.store, event)

    # -- phases -----------------------------------------------------------------------------

    def _evaluate(self, state: IterateState, phase: str, model_ref: str) -> Event:
        """Evaluate ``model_ref`` (a profile or a candidate version) once, replay-safe."""
        from modelsmith.artifacts.refs import is_version
        from modelsmith.evaluation.runner import EvalSettings
        from modelsmith.evaluation.service import evaluate

        recorder = self._recorder(state, phase)
        found = recorder.recorded("EvalCompleted")
        if found is not None:
            self.say(f"  {phase}: reusing evaluation {found.id[:12]} from the log")
            return found
        repo = self.repo
        version = model_ref if is_version(model_ref) else None
        if version is None:
            earlier = self._zero_shot(model_ref)
            if earlier is not None:
                self.say(f"  {phase}: {model_ref} was evaluated on this suite already "
                         f"(event {earlier.id[:12]}); greedy decoding would repeat it")
                return earlier
        load, chat, weights = model_ref, None, None
        if version:
            cand = self.parts.registry.candidate(self.specialist, version)
            load, chat = str(cand.path), cand.base.chat_template
            weights = self.parts.artifacts.weights_hash(cand.path)
        backend = self.parts.backends(load, repo.clusters, threads=self.options.eval_threads,
                                      batch_size=self.options.eval_batch_size,
                                      repo_root=self.parts.root, chat_template=chat)
        try:
            outcome = evaluate(repo, self.specialist, backend, model_ref=model_ref,
                               version=version, store=self.parts.store, settings=EvalSettings(),
                               actor=recorder.actor, commit=recorder.cause,
                               scope=recorder.scope, weights_hash=weights,
                               progress=lambda done, total: self.progress.steps(
                                   done, total, "generations"))
        finally:
            backend.close()
        assert outcome.event is not None
        return outcome.event

    def _zero_shot(self, model_ref: str) -> Event | None:
        """The latest full evaluation of the pretrained ``model_ref`` on the current suite
        (``modelsmith eval``'s zero-shot run), greedy like the loop's own: its numbers, not
        a second run that could only repeat them."""
        suite_hash = self.repo.suite_for(self.repo.specialists[self.specialist]).suite_hash
        for event in reversed(list(self.parts.store.read(self.specialist))):
            data = event.data
            if event.type == "EvalCompleted" and data.get("model") == model_ref \
                    and not data.get("version") and data.get("suite_hash") == suite_hash \
                    and not data.get("limit"):
                return event
        return None

    def _extract(self, state: IterateState) -> dict[str, Any]:
        from modelsmith.training.extraction import extract_failures
        from modelsmith.training.service import record_failures

        failures = extract_failures(self._runs(state))
        event = record_failures(self._plan(state), failures, self._recorder(state, "extract"))
        self.say(f"  extract: {len(failures)} failed inputs in "
                 f"{len(event.data['scenario_ids'])} core scenarios")
        return {"failures": len(failures), "failed_scenarios": len(event.data["scenario_ids"])}

    def _rows_file(self, state: IterateState) -> Path:
        return self.state_file.folder / str(state.iteration) / "rows.jsonl"

    def _generate(self, state: IterateState) -> dict[str, Any]:
        from modelsmith.training.dataset import dataset_hash, dataset_jsonl
        from modelsmith.training.extraction import extract_failures
        from modelsmith.training.service import generate_rows

        runs = self._runs(state)
        previous = self._previous_rows(state)
        rows = generate_rows(self.repo, self.specialist, runs, extract_failures(runs),
                             seed=self._plan(state).profile.seed,
                             iteration=self._round(state.outputs.model or ""),
                             pool_taken=frozenset(r.id for r in previous if r.source == "pool"))
        new = len(rows)
        if self.options.rehearse and previous:
            rows = rehearsed(rows, previous)
        write_atomically(self._rows_file(state), dataset_jsonl(rows))
        self.say(f"  generate: {new} rows for the failures" + (
            f", {len(rows) - new} rehearsed from the previous dataset" if len(rows) > new
            else ""))
        return {"rows_generated": len(rows), "rows_hash": dataset_hash(rows)}

    def _round(self, model: str) -> int:
        """The generation round of rows for ``model``'s failures: 1 + the versions along its
        chain. It seeds the generator, so every round -- in this loop or a later one going
        on from its candidate -- asks for new rows, and a resumed round for the same."""
        fleet = self.parts.fleet().specialists.get(self.specialist)
        candidates = fleet.candidates if fleet else {}
        depth, seen = 0, set()
        while model in candidates and model not in seen:
            seen.add(model)
            depth += 1
            model = candidates[model].lineage.base_model
        return depth + 1

    def _previous_rows(self, state: IterateState) -> list[Any]:
        """The previous iteration's dataset (pulled from the DVC remote when missing; read
        once, for generate and validate); none in a loop's first iteration."""
        from modelsmith.training.dataset import read_dataset

        if not state.outputs.previous_dataset:
            return []
        if self._previous is None or self._previous[0] != state.outputs.previous_dataset:
            path = self.parts.root / state.outputs.previous_dataset
            if not path.is_file():
                self.parts.artifacts.pull([path])
            self._previous = (state.outputs.previous_dataset, read_dataset(path))
        return self._previous[1]

    def _generated_rows(self, state: IterateState) -> list[Any]:
        """The generate phase's rows; generated again when the file is gone or is not the
        one the phase wrote (generation is deterministic)."""
        from modelsmith.training.dataset import DataError, dataset_hash, read_dataset

        path = self._rows_file(state)
        try:
            rows = read_dataset(path)
            if dataset_hash(rows) == state.outputs.rows_hash:
                return rows
        except (OSError, DataError):
            pass
        self.say(f"  {path} is missing or changed; generating the rows again")
        self._generate(state)
        return read_dataset(path)

    def _validate(self, state: IterateState) -> dict[str, Any]:
        from modelsmith.training.service import record_dataset, validate

        report = validate(self.repo, self.specialist, self._generated_rows(state))
        previous = self._previous_rows(state)
        dataset = record_dataset(self.repo, self._plan(state), report,
                                 artifacts=self.parts.artifacts,
                                 recorder=self._recorder(state, "validate"),
                                 previous=previous,
                                 iteration=self._round(state.outputs.model or ""))
        built = self._recorder(state, "validate").recorded("DatasetBuilt")
        fresh = built.data.get("new_rows") if built is not None else None
        removed = {k: v for k, v in report.removed.items() if v}
        self.say(f"  validate: kept {len(report.kept)} of {report.total} rows, "
                 f"{fresh} new (by source {report.sources}; removed {removed or 'none'}); "
                 f"dataset {dataset.hash[:12]}")
        if fresh == 0:
            self.say("  validate: no row is new: nothing to learn that the last candidate "
                     "did not already train on")
        return {"dataset_hash": dataset.hash, "dataset": str(dataset.path.relative_to(
            self.parts.root)), "dataset_rows": len(report.kept), "new_rows": fresh}

    def _train(self, state: IterateState) -> dict[str, Any]:
        """Train a candidate on the validated dataset; its version, run and host."""
        from modelsmith.fleet.pool import Pool
        from modelsmith.training.dataset import dataset_hash, read_dataset
        from modelsmith.training.service import Dataset, train_on

        recorder = self._recorder(state, "train")
        found = recorder.recorded("CandidateRegistered")
        if found is not None:
            self.say(f"  train: reusing candidate {found.data['version']} from the log")
            return _trained(found)
        repo = self.repo
        path = self.parts.root / (state.outputs.dataset or "")
        rows = read_dataset(path)
        if dataset_hash(rows) != state.outputs.dataset_hash:
            raise LoopError(f"{path} does not hash to {state.outputs.dataset_hash} "
                            "(changed since the validate phase); restore it with `dvc "
                            "checkout`")
        dataset = Dataset(state.outputs.dataset_hash, path, rows)
        model = state.outputs.model or ""
        artifacts = self.parts.artifacts
        base_path = self.parts.registry.weights_path(self.specialist, model)
        corrupt = self._corrupt(model, base_path, artifacts)
        if corrupt:
            from .heal import CheckpointDiscarded

            self._record_failure(state, model, "corrupt_checkpoint", "discard_checkpoint",
                                 corrupt)
            raise CheckpointDiscarded(model, [])
        pool = Pool.from_config(repo.clusters, self.options.hosts)
        trainer = _pool_trainer(self.parts, self.specialist, pool, recorder.actor,
                                repo.clusters.thresholds.heartbeat_timeout_s, self.say,
                                self.progress.job_line)
        outcome = train_on(repo, self._plan(state), dataset, store=self.parts.store,
                           artifacts=artifacts, base_path=base_path, recorder=recorder,
                           trainer=trainer, host="pool")
        return _trained(outcome.events[-1])

    def _corrupt(self, model: str, path: Path, artifacts: Any) -> str | None:
        """Why ``model``'s weights cannot be trained from (a candidate whose files no longer
        hash to what its lineage recorded), or None."""
        from modelsmith.artifacts.refs import is_version

        if not is_version(model):
            return None
        fleet = self.parts.fleet().specialists.get(self.specialist)
        candidate = fleet.candidates.get(model) if fleet else None
        expected = candidate.lineage.weights_hash if candidate else None
        if not expected:
            return None
        actual = artifacts.content_hash(path)
        if actual == expected:
            return None
        return (f"{model}'s weights in {path} hash to {actual}, not the {expected} recorded "
                "in its lineage")

    def _record_failure(self, state: IterateState, host: str, failure_class: str,
                        action: str, evidence: str) -> None:
        from modelsmith.events.store import append_observation

        payload = TrainingFailed(run_id=f"iter-{state.iteration}", host=host,
                                 failure_class=failure_class, action=action, attempt=1,
                                 log_tail=evidence[-4000:])
        tag = self._tag(state, "train")
        append_observation(self.parts.store, self.specialist,
                           [Event.new(payload, actor=tag, cause=self.parts.cause)])

    def _judge(self, state: IterateState, candidate: str, candidate_eval: str,
               verdict: tuple[str, str] | None) -> tuple[str, str] | None:
        """Decide with the gates ``plan`` applies before traffic (the same meaning of
        "sustained": one evaluation per version along the candidate's lineage): when they
        all pass, propose the candidate for the first stage; when the loop's own count
        says the target holds but a gate does not, stop and say which. ``verdict`` is the
        loop's own decision (None: go on)."""
        from modelsmith.events.types import PromotionProposed

        stage = self._policy().stages[0].name
        gates = self.parts.gates(self.specialist, candidate, stage)
        composite = next((g for g in gates if g.name == "composite"), None)
        if verdict is None and (composite is None or not composite.passed):
            return None  # not sustained yet: the next iteration
        why = verdict[1] if verdict is not None else (
            f"the target holds along the lineage: {composite.detail}" if composite else "")
        failing = [g for g in gates if not g.passed]
        if failing:
            return "gate-failed", (f"{why}, but " + "; ".join(
                f"the {g.name} gate fails: {g.detail}" for g in failing))
        held = next((g.detail for g in gates if g.name == "heldout"), "")
        recorder = self._recorder(state, "decide")
        first_time = recorder.recorded("PromotionProposed") is None
        recorder.record(PromotionProposed(
            version=candidate, stage=stage, evidence=[candidate_eval],
            reason=f"{why}; {held}" if held else why))
        opened = ""
        if first_time and self.on_proposed is not None:
            where = self.on_proposed(candidate, stage)
            opened = f" ({where})" if where else ""
        return "target", (f"{why}; {held}; every gate before traffic passes; proposed "
                          f"{candidate} for {stage}{opened}")

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> LoopResult:
        with LoopLock(self.parts.root, self.specialist):
            return self._run()

    def _phase(self, state: IterateState, phase: str,
               work: Callable[[IterateState], dict[str, Any]]) -> IterateState:
        """Run ``phase`` unless it is recorded as done; save its start and its outputs."""
        if state.completed(phase):
            return state
        state = self._save(state.advanced(phase, done=False))
        return self._save(state.advanced(phase, done=True, **work(state)))

    def _run(self) -> LoopResult:
        spec = self.repo.specialists[self.specialist].spec
        target = self._target()
        # The gate's count is the floor: proposing sooner would propose what plan rejects.
        sustained = max(self.options.sustained or spec.target.sustained,
                        self._policy().gates.composite.sustained or 0)
        state = self._start_or_resume(spec.base)
        while True:
            state, result = self._iteration(state, target, sustained)
            if result is not None:
                return result

    def _start_or_resume(self, base: str) -> IterateState:
        """The saved loop to go on with, or a new one. After a loop that ended, the new one
        goes on from its latest candidate (its evaluation reused, its dataset rehearsed),
        unless ``fresh`` is set or ``model`` names another start than the ended loop's."""
        state = self.state_file.load()
        outputs = PhaseOutputs(model=self.options.model or base)
        if state is not None and state.phase == "decide" and state.done \
                and state.outputs.decision not in (None, "continue"):
            last = next((r for r in reversed(state.history) if r.candidate), None)
            same_base = self.options.model in (None, state.options.get("model"))
            if last is not None and not self.options.fresh and same_base:
                self.say(f"loop {state.loop_id} ended ({state.outputs.decision}); starting "
                         f"a new one from its latest candidate {last.candidate} (--fresh "
                         "starts from the base model)")
                outputs = PhaseOutputs(model=last.candidate, eval_event=last.eval_event,
                                       base_eval=state.outputs.base_eval,
                                       previous_dataset=state.outputs.dataset)
            else:
                self.say(f"loop {state.loop_id} ended ({state.outputs.decision}); starting "
                         f"a new one from {outputs.model}")
            state = None
        if state is None:
            return self._save(IterateState(
                specialist=self.specialist, loop_id=uuid.uuid4().hex[:12],
                options=dict(vars(self.options)), outputs=outputs))
        self.say(f"resuming loop {state.loop_id} at iteration {state.iteration}, "
                 f"phase {state.phase}{' (done)' if state.done else ''}")
        return state

    def _iteration(self, state: IterateState, target: float,
                   sustained: int) -> tuple[IterateState, LoopResult | None]:
        """One iteration from wherever ``state`` stands: the state the next one starts
        from, or the loop's result when this one decided to stop."""
        from .heal import CheckpointDiscarded

        started = time.perf_counter()
        self.progress.start_iteration(state.iteration, state.history)
        model = state.outputs.model or ""
        state = self._phase(state, "eval", lambda s: self._evaluate_current(s, model))
        state = self._phase(state, "extract", self._extract)
        if state.outputs.failures == 0:
            return self._stop(state, state.history, "no-failures", (
                f"none needed: {model} fails no core scenario, so there is nothing to train "
                "on" + _streak_note(state.history)))
        state = self._phase(state, "generate", self._generate)
        state = self._phase(state, "validate", self._validate)
        if state.outputs.new_rows == 0 and not state.completed("train"):
            return self._stop(state, state.history, "no-new-data", (
                f"iteration {state.iteration} found no new training row for the "
                f"{state.outputs.failures} failures of {model} (the generator, pool and "
                "teacher gave only rows the previous dataset holds): training on the same "
                "rows again would only confirm; give the suite a generator, a larger "
                "training pool or a teacher" + _streak_note(state.history)))
        try:
            if not state.completed("train"):
                self.say(f"iteration {state.iteration}: training from {model}")
            state = self._phase(state, "train", self._train)
        except CheckpointDiscarded as discarded:
            return self._go_back(state, discarded, started), None
        candidate = state.outputs.candidate or ""
        state = self._phase(state, "reeval", lambda s: self._reevaluate(s, candidate))
        out = state.outputs
        record = IterationRecord(iteration=state.iteration, candidate=candidate,
                                 composite=out.composite, heldout=out.heldout,
                                 eval_event=out.reeval_event,
                                 duration_s=round(time.perf_counter() - started, 2),
                                 decision_metric=out.decision_metric,
                                 decision=out.decision_value, decision_n=out.decision_n,
                                 dataset_rows=out.dataset_rows, new_rows=out.new_rows,
                                 overfitting=out.overfitting)
        history = [*state.history, record]
        self.progress.finished_iteration(record.composite, record.duration_s or 0.0, record)
        self.emit({"event": "iteration", **record.model_dump(mode="json")})
        shown = (f"{record.decision_metric} {record.decision:.3f} (n={record.decision_n})"
                 if record.decision_metric and record.decision is not None
                 else "no decision metric")
        self.say(f"iteration {state.iteration}: {candidate} {shown}, composite "
                 f"{record.composite:.3f}, held-out "
                 f"{'-' if record.heldout is None else f'{record.heldout:.3f}'}"
                 + (f"; OVERFITTING: {record.overfitting}" if record.overfitting else ""))
        return self._decide_phase(state, record, history, target, sustained)

    def _evaluate_current(self, state: IterateState, model: str) -> dict[str, Any]:
        if state.outputs.eval_event:  # the previous re-evaluation, reused
            event_id = state.outputs.eval_event
        else:
            self.say(f"iteration {state.iteration}: evaluating {model}")
            event_id = self._evaluate(state, "eval", model).id
        return {"eval_event": event_id, "base_eval": state.outputs.base_eval or event_id}

    def _reevaluate(self, state: IterateState, candidate: str) -> dict[str, Any]:
        self.say(f"iteration {state.iteration}: evaluating {candidate}")
        event = self._evaluate(state, "reeval", candidate)
        flagged = self._recorder(state, "reeval").recorded("OverfittingDetected")
        data = event.data
        return {"reeval_event": event.id, "composite": data.get("composite"),
                "heldout": data.get("heldout"), "decision_metric": data.get("decision_metric"),
                "decision_value": data.get("decision"), "decision_n": data.get("decision_n"),
                "overfitting": flagged.data["reason"] if flagged is not None else None}

    def _decide_phase(self, state: IterateState, record: IterationRecord,
                      history: list[IterationRecord], target: float,
                      sustained: int) -> tuple[IterateState, LoopResult | None]:
        """Stop (target held and gated, budget spent, no gain) or carry on from the
        candidate."""
        candidate = record.candidate or ""
        state = self._save(state.advanced("decide", done=False))
        verdict = _decide(history, target, sustained, self.options, self._min_unseen())
        if verdict is None:
            verdict = self._watch(state, history)
        if candidate and (verdict is None or verdict[0] == "target"):
            verdict = self._judge(state, candidate, record.eval_event or "", verdict)
        if verdict is not None:
            return self._stop(state, history, *verdict)
        state = self._save(state.advanced("decide", done=True, decision="continue"))
        carried = PhaseOutputs(  # the base model's evaluation stays the gate's baseline
            model=candidate, eval_event=record.eval_event,
            base_eval=state.outputs.base_eval, previous_dataset=state.outputs.dataset)
        state = state.next_iteration(record)
        return self._save(state.model_copy(update={"outputs": carried})), None

    def _stop(self, state: IterateState, history: list[IterationRecord], reason: str,
              message: str) -> tuple[IterateState, LoopResult]:
        """End the loop with ``reason``; its candidate is the last iteration's."""
        state = self._save(state.advanced("decide", done=False)) \
            if state.phase != "decide" else state
        self._save(state.advanced("decide", done=True, decision=reason)
                   .model_copy(update={"history": history}))
        candidate = history[-1].candidate if history else None
        return state, LoopResult(self.specialist, reason, message, history, candidate,
                                 self._target())

    def _target(self) -> float:
        spec = self.repo.specialists[self.specialist].spec
        return self.options.target if self.options.target is not None \
            else spec.target.composite

    def _policy(self) -> Any:
        return self.repo.policy_for(self.repo.specialists[self.specialist]).spec

    def _min_unseen(self) -> int:
        return self._policy().gates.decision.min_unseen

    def _watch(self, state: IterateState,
               history: list[IterationRecord]) -> tuple[str, str] | None:
        """The overfitting watch on the evaluation side: the decision metric falling while
        the core composite rises stops the loop, with an ``OverfittingDetected``."""
        from modelsmith.events.types import OverfittingDetected

        why = overfitting_trend(history)
        if why is None:
            return None
        last = history[-1]
        self._recorder(state, "decide").record(OverfittingDetected(
            version=last.candidate, eval_event=last.eval_event or "",
            metric=last.decision_metric or "unseen", decision=last.decision,
            composite=last.composite or 0.0, margin=self._policy().gates.decision.overfit_margin,
            reason=why))
        return "overfitting", f"stopped: {why}"

    def _go_back(self, state: IterateState, discarded: Exception,
                 started: float) -> IterateState:
        """The model this iteration trains from is corrupt: the iteration ends without a
        candidate and the next one trains from the model before it."""
        model = state.outputs.model
        earlier = [r for r in state.history if r.candidate and r.candidate != model]
        previous = earlier[-1] if earlier else None
        back_to = previous.candidate if previous else state.options.get("model") \
            or self.repo.specialists[self.specialist].spec.base
        back_eval = previous.eval_event if previous else state.outputs.base_eval
        self.say(f"iteration {state.iteration}: {discarded}; discarded, going back to "
                 f"{back_to}")
        record = IterationRecord(iteration=state.iteration, candidate=None,
                                 discarded=model,
                                 duration_s=round(time.perf_counter() - started, 2))
        self.emit({"event": "iteration", **record.model_dump(mode="json")})
        state = self._save(state.advanced("decide", done=True, decision="continue"))
        outputs = PhaseOutputs(model=back_to, base_eval=state.outputs.base_eval,
                               eval_event=back_eval)
        state = state.next_iteration(record)
        return self._save(state.model_copy(update={"outputs": outputs}))


#: ``<phase>:<iteration>``: the loop SIGKILLs itself right after saving that phase as done.
FAILPOINT_ENV = "MODELSMITH_ITERATE_KILL_AFTER"


def failpoint_from_env() -> Callable[[str, int], None] | None:
    """The crash tests' fault injection: with ``MODELSMITH_ITERATE_KILL_AFTER=train:1`` the
    process kills itself (SIGKILL: no cleanup, no flush) at that phase boundary."""
    wanted = os.environ.get(FAILPOINT_ENV)
    if not wanted:
        return None

    def kill(phase: str, iteration: int) -> None:
        if f"{phase}:{iteration}" == wanted:
            os.kill(os.getpid(), signal.SIGKILL)

    return kill


def rehearsed(rows: list[Any], previous: list[Any]) -> list[Any]:
    """``rows`` then the previous dataset's rows (rehearsal: a model trained only on its
    latest failures forgets what it had learnt). A previous row whose id is taken gets a
    fresh one; its text, if repeated, is dropped by validation as an exact duplicate."""
    from dataclasses import replace

    taken = {r.id for r in rows}
    out = list(rows)
    for row in previous:
        row_id, k = row.id, 1
        while row_id in taken:
            row_id, k = f"{row.id}~{k}", k + 1
        taken.add(row_id)
        out.append(row if row_id == row.id else replace(row, id=row_id))
    return out


class LoopError(ModelsmithError):
    """The loop cannot go on without a person: the message says what to do."""


def _trained(registered: Event) -> dict[str, Any]:
    lineage = registered.data["lineage"]
    return {"candidate": registered.data["version"], "run_id": lineage.get("run_id"),
            "host": lineage.get("host")}


def _steering(record: IterationRecord) -> float | None:
    """The number an iteration is judged by: its decision metric (the composite for
    records from before the loop had one)."""
    if record.decision_metric is not None:
        return record.decision
    return record.composite if record.decision_n is None else None


def _decide(history: list[IterationRecord], target: float, sustained: int,
            options: LoopOptions, min_unseen: int = 30) -> tuple[str, str] | None:
    """Stop or go on, judged by the decision metric (never trained on): the target held
    for ``sustained`` iterations -- each with new training rows and not overfitting --, no
    metric left to decide on, the budget spent, or no gain for ``patience`` iterations."""
    trained = [r for r in history if r.composite is not None]  # not discarded
    if not trained:
        if len(history) >= options.max_iterations:
            return "budget", f"budget of {options.max_iterations} iterations spent; no candidate"
        return None
    last = trained[-1]
    if _steering(last) is None:
        return "undecidable", (
            f"{last.candidate} has composite {last.composite:.3f}, but only "
            f"{last.decision_n} core scenarios are left that it never trained on (the policy "
            f"needs {min_unseen}) and the suite has no dev split: nothing it has not seen can "
            "confirm the target. Add `split: dev` scenarios, or more core scenarios, or stop "
            "training on the suite's own inputs (training.use_eval_inputs)")
    metric = last.decision_metric or "composite"
    streak = 0
    for record in reversed(trained):
        if record.new_rows == 0:  # trained on nothing new: neither counts nor breaks
            continue
        score = _steering(record)
        if record.overfitting or score is None or score < target - 1e-9:
            break
        streak += 1
    if streak >= sustained:
        return "target", (f"{metric} composite >= {target} for {streak} consecutive "
                          f"iterations (last {_steering(last):.3f}, n={last.decision_n}; "
                          f"composite {last.composite:.3f})")
    scores = [s for s in map(_steering, trained) if s is not None]
    if len(history) >= options.max_iterations:
        return "budget", (f"budget of {options.max_iterations} iterations spent; best "
                          f"{metric} composite {max(scores):.3f}, target {target}")
    # Above the target the loop waits for it to hold, not for a gain.
    if len(scores) > options.patience and scores[-1] < target:
        before = max(scores[:-options.patience])
        recent = max(scores[-options.patience:])
        if recent <= before + 0.01:
            return "no-gain", (f"{options.patience} iterations without a gain in the "
                               f"{metric} composite: best {before:.3f} before, "
                               f"{recent:.3f} since")
    return None


#: The overfitting watch: core up and the decision metric down by at least this much,
#: over the last two iterations (or each of the last three).
TREND_STEP = 0.02


def overfitting_trend(history: list[IterationRecord]) -> str | None:
    """Why the loop should stop because its candidates learn the evaluation rather than
    the task -- the decision metric falling while the core composite rises -- or None."""
    trained = [r for r in history if r.composite is not None and r.decision is not None
               and r.decision_metric is not None]
    if len(trained) < 2:
        return None
    a, b = trained[-2], trained[-1]
    core_up = (b.composite or 0.0) - (a.composite or 0.0)
    metric_down = (a.decision or 0.0) - (b.decision or 0.0)
    if core_up >= 2 * TREND_STEP and metric_down >= 2 * TREND_STEP:
        return (f"from {a.candidate} to {b.candidate} the composite rose {core_up:+.3f} "
                f"({a.composite:.3f} -> {b.composite:.3f}) while the {b.decision_metric} "
                f"composite fell {-metric_down:+.3f} ({a.decision:.3f} -> "
                f"{b.decision:.3f}): the training rows teach the evaluation, not the task")
    if len(trained) >= 3:
        z = trained[-3]
        steps = [(a.composite - z.composite, z.decision - a.decision),
                 (b.composite - a.composite, a.decision - b.decision)]
        if all(up >= TREND_STEP and down >= TREND_STEP for up, down in steps):
            return (f"over {z.candidate}, {a.candidate}, {b.candidate} the composite rose "
                    f"({z.composite:.3f} -> {b.composite:.3f}) while the "
                    f"{b.decision_metric} composite fell ({z.decision:.3f} -> "
                    f"{b.decision:.3f}): the training rows teach the evaluation, not the task")
    return None


def _streak_note(history: list[IterationRecord]) -> str:
    if not history:
        return ""
    last = history[-1]
    score = _steering(last)
    shown = f"{last.decision_metric or 'composite'} {score:.3f}" if score is not None \
        else "no decision metric"
    return f"; the last candidate {last.candidate} has {shown}"


def _pool_trainer(parts: LoopParts, specialist: str, pool: Any, tag: str,
                  heartbeat_timeout_s: float, say: Callable[[str], None],
                  on_line: Callable[[str], None]) -> Callable:
    """A ``trainer`` for :func:`~modelsmith.training.service.train_candidate`: the run as
    a job on the pool, self-healing, each failure a ``TrainingFailed`` event."""
    from modelsmith.events.store import append_observation
    from modelsmith.specs import HyperParams
    from modelsmith.training.job import TrainJobSpec, result_path
    from modelsmith.training.service import TrainerOutput
    from modelsmith.training.trainers import TrainResult

    from .heal import run_training

    def trainer(request: Any) -> TrainerOutput:
        folder = parts.root / ".iterate" / specialist / "jobs" / request.run_id
        spec = TrainJobSpec(specialist=specialist, method=request.method,
                            base=str(request.base_path), dataset=str(request.dataset_path),
                            out=str(request.out_dir),
                            hyperparams=request.profile.model_dump(mode="json"),
                            profile=request.profile_name,
                            repo=str(parts.root), heartbeat=str(folder / "heartbeat"),
                            checkpoints=str(folder / "checkpoints"))

        def failed(attempt: Any) -> None:
            say(f"  training failed on {attempt.host}: {attempt.diagnosis.failure_class} "
                f"({attempt.diagnosis.evidence}) -> {attempt.recovery.action}")
            payload = TrainingFailed(run_id=request.run_id, host=attempt.host,
                                     failure_class=attempt.diagnosis.failure_class,
                                     action=attempt.recovery.action, attempt=attempt.number,
                                     log_tail=attempt.result.log_tail[-4000:])
            append_observation(parts.store, specialist, [Event.new(payload, actor=tag)])

        healed = run_training(spec, folder / "spec.json", pool,
                              heartbeat_timeout_s=heartbeat_timeout_s, on_failure=failed,
                              on_line=on_line)
        produced = result_path(request.out_dir)
        summary = json.loads(produced.read_text(encoding="utf-8"))
        produced.replace(folder / "result.json")  # beside the weights, it would be clutter
        result = TrainResult(out_dir=Path(request.out_dir), method=request.method,
                             steps=summary["steps"], duration_s=summary["duration_s"],
                             metrics=summary["metrics"], history=summary["history"],
                             versions=summary["versions"])
        return TrainerOutput(result, healed.host,
                             HyperParams.model_validate(healed.spec.hyperparams))

    return trainer
