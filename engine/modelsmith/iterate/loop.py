"""``modelsmith iterate``: evaluate -> train on the failures -> re-evaluate -> decide, until
the composite target holds for ``target.sustained`` iterations, the budget ends, or
iterations stop bringing a significant gain.

Each iteration's phases are ``eval`` (the current model: the base at first, then the
latest candidate, whose re-evaluation is reused), ``train`` (failures -> validated rows ->
training as a job on the host pool with self-healing, :mod:`.heal`), ``reeval`` and
``decide``. The loop's position is saved in ``.iterate/<specialist>/state.json`` at every
phase change; a second loop on the same specialist is refused (:class:`~.state.LoopLock`).

Resuming: a phase recorded as done is skipped; a phase that was running is looked up in
the event log by its actor tag (``iterate/<loop>/<iteration>/<phase>``): its
``EvalCompleted`` or ``CandidateRegistered`` is reused when present, so a result is never
recorded twice, and the phase runs again when it is absent (no phantom results).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelsmith.events.types import Event, TrainingFailed
from modelsmith.workspace import Workspace

from .state import IterateState, IterationRecord, LoopLock, StateFile


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


class IterateLoop:
    def __init__(self, ws: Workspace, specialist: str, options: LoopOptions, *,
                 emit: Emit = lambda _e: None, say: Callable[[str], None] = lambda _m: None,
                 fail_after: Callable[[str, int], None] | None = None) -> None:
        self.ws = ws
        self.specialist = specialist
        self.options = options
        self.emit = emit
        self.say = say
        # Tests use it to crash the loop right after a phase is saved.
        self.fail_after = fail_after or (lambda _phase, _iteration: None)
        self.state_file = StateFile(ws.root, specialist)
        self.repo: Any = None  # the specs, loaded once when the loop runs

    # -- helpers --------------------------------------------------------------------------

    def _tag(self, state: IterateState, phase: str) -> str:
        return f"iterate/{state.loop_id}/{state.iteration}/{phase}"

    def _find(self, event_type: str, actor: str) -> Event | None:
        return next((e for e in self.ws.store.read(self.specialist)
                     if e.type == event_type and e.actor == actor), None)

    def _save(self, state: IterateState) -> IterateState:
        self.state_file.save(state)
        self.emit({"event": "phase", "iteration": state.iteration, "phase": state.phase,
                   "done": state.done, "outputs": state.outputs})
        if state.done:
            self.fail_after(state.phase, state.iteration)
        return state

    def _evaluate(self, state: IterateState, phase: str, model_ref: str) -> Event:
        """Evaluate ``model_ref`` (a profile or a candidate version) once, tagged."""
        from modelsmith.evaluation.runner import EvalSettings
        from modelsmith.evaluation.service import VERSION_RE, evaluate
        from modelsmith.inference import make_backend

        tag = self._tag(state, phase)
        found = self._find("EvalCompleted", tag)
        if found is not None:
            self.say(f"  {phase}: reusing evaluation {found.id[:12]} from the log")
            return found
        repo = self.repo
        version = model_ref if VERSION_RE.match(model_ref) else None
        load, chat = model_ref, None
        if version:
            cand = self.ws.candidate(repo, self.specialist, version, say=self.say)
            load, chat = str(cand.path), cand.base.chat_template
        backend = make_backend(load, repo.clusters, threads=self.options.eval_threads,
                               batch_size=self.options.eval_batch_size,
                               repo_root=self.ws.root, chat_template=chat)
        try:
            outcome = evaluate(repo, self.specialist, backend, model_ref=model_ref,
                               version=version, store=self.ws.store, settings=EvalSettings(),
                               actor=tag, commit=self.ws.head_commit())
        finally:
            backend.close()
        assert outcome.event is not None
        return outcome.event

    def _train(self, state: IterateState, eval_event: str, base_ref: str) -> str:
        """Train a candidate from ``eval_event``'s failures; return its version."""
        tag = self._tag(state, "train")
        found = self._find("CandidateRegistered", tag)
        if found is not None:
            self.say(f"  train: reusing candidate {found.data['version']} from the log")
            return str(found.data["version"])
        from modelsmith.artifacts.dvc import ArtifactStore
        from modelsmith.fleet.pool import Pool
        from modelsmith.training.service import train_candidate

        repo = self.repo
        base_path = self.ws.weights_path(repo, self.specialist, base_ref, say=self.say)
        pool = Pool.from_config(repo.clusters, self.options.hosts)
        trainer = _pool_trainer(self.ws, self.specialist, pool, tag,
                                repo.clusters.thresholds.heartbeat_timeout_s, self.say)
        outcome = train_candidate(repo, self.specialist, store=self.ws.store,
                                  artifacts=ArtifactStore(self.ws.root), base_path=base_path,
                                  base_ref=base_ref, from_eval=eval_event,
                                  method=self.options.method,
                                  profile_name=self.options.profile, trainer=trainer,
                                  actor=tag, cause=self.ws.head_commit(), host="pool",
                                  say=lambda m: self.say(f"  {m}"))
        return outcome.version

    def _gate(self, state: IterateState, candidate: str, candidate_eval: str,
              why: str) -> tuple[str, str]:
        """The held-out gate at the target: the candidate against production (or the base
        model's evaluation when nothing is in production), paired, on held-out; within the
        policy's ``max_regression`` it proposes promotion to the first stage."""
        from modelsmith.evaluation.service import compare
        from modelsmith.events.store import append_observation
        from modelsmith.events.types import PromotionProposed

        repo = self.repo
        policy = repo.policy_for(repo.specialists[self.specialist]).spec
        fleet = self.ws.fleet().specialists.get(self.specialist)
        production = fleet.holder("production") if fleet else None
        baseline, against = state.outputs.get("base_eval"), "the base model"
        if production is not None:
            held = fleet.candidates.get(production.version) if fleet else None
            latest = held.latest() if held else None
            if latest is not None:
                baseline, against = latest.event_id, f"production {production.version}"
        if baseline is None:
            return "target", f"{why}; no baseline evaluation for the held-out gate"
        result = compare(self.ws.store, self.specialist, baseline, candidate_eval,
                         split="heldout").result
        allowed = policy.gates.heldout.max_regression
        numbers = (f"held-out {result.mean_b:.3f} vs {against} {result.mean_a:.3f} "
                   f"({result.diff:+.3f}, 95% CI [{result.ci[0]:+.3f}, {result.ci[1]:+.3f}])")
        if result.diff < -allowed:
            return "gate-failed", (f"{why}, but the held-out gate failed: {numbers} trails "
                                   f"by more than {allowed}")
        stage = policy.stages[0].name
        tag = self._tag(state, "decide")
        if self._find("PromotionProposed", tag) is None:
            proposal = PromotionProposed(version=candidate, stage=stage,
                                         evidence=[candidate_eval, baseline],
                                         reason=f"{why}; {numbers}")
            append_observation(self.ws.store, self.specialist,
                               [Event.new(proposal, actor=tag, cause=self.ws.head_commit())])
        return "target", f"{why}; {numbers}; proposed {candidate} for {stage}"

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> LoopResult:
        with LoopLock(self.ws.root, self.specialist):
            return self._run()

    def _run(self) -> LoopResult:
        repo = self.repo = self.ws.specs()  # loaded once per run
        spec = repo.specialists[self.specialist]
        target = self.options.target if self.options.target is not None \
            else spec.spec.target.composite
        sustained = self.options.sustained or spec.spec.target.sustained
        state = self.state_file.load()
        if state is not None and state.phase == "decide" and state.done \
                and state.outputs.get("decision") not in (None, "continue"):
            self.say(f"loop {state.loop_id} ended ({state.outputs['decision']}); "
                     "starting a new one")
            state = None
        if state is None:
            state = IterateState(specialist=self.specialist, loop_id=uuid.uuid4().hex[:12],
                                 options=dict(vars(self.options)),
                                 outputs={"model": self.options.model or spec.spec.base})
            state = self._save(state)
        else:
            self.say(f"resuming loop {state.loop_id} at iteration {state.iteration}, "
                     f"phase {state.phase}{' (done)' if state.done else ''}")
        while True:
            started = time.perf_counter()
            model = state.outputs["model"]
            if not state.completed("eval"):
                state = self._save(state.advanced("eval", done=False))
                if "eval_event" in state.outputs:  # the previous re-evaluation, reused
                    event_id = state.outputs["eval_event"]
                else:
                    self.say(f"iteration {state.iteration}: evaluating {model}")
                    event_id = self._evaluate(state, "eval", model).id
                base_eval = state.outputs.get("base_eval", event_id)
                state = self._save(state.advanced("eval", done=True, eval_event=event_id,
                                                  base_eval=base_eval))
            if not state.completed("train"):
                state = self._save(state.advanced("train", done=False))
                self.say(f"iteration {state.iteration}: training from {model}")
                version = self._train(state, state.outputs["eval_event"], model)
                state = self._save(state.advanced("train", done=True, candidate=version))
            candidate = state.outputs["candidate"]
            if not state.completed("reeval"):
                state = self._save(state.advanced("reeval", done=False))
                self.say(f"iteration {state.iteration}: evaluating {candidate}")
                event = self._evaluate(state, "reeval", candidate)
                state = self._save(state.advanced(
                    "reeval", done=True, reeval_event=event.id,
                    composite=event.data.get("composite"), heldout=event.data.get("heldout")))
            record = IterationRecord(iteration=state.iteration, candidate=candidate,
                                     composite=state.outputs.get("composite"),
                                     heldout=state.outputs.get("heldout"),
                                     eval_event=state.outputs["reeval_event"],
                                     duration_s=round(time.perf_counter() - started, 2))
            history = [*state.history, record]
            self.emit({"event": "iteration", **record.model_dump(mode="json")})
            self.say(f"iteration {state.iteration}: {candidate} composite "
                     f"{record.composite:.3f}, held-out {record.heldout}")
            verdict = _decide(history, target, sustained, self.options)
            if verdict is not None and verdict[0] == "target":
                verdict = self._gate(state, candidate, record.eval_event, verdict[1])
            if verdict is not None:
                reason, message = verdict
                state = self._save(state.advanced("decide", done=True, decision=reason)
                                   .model_copy(update={"history": history}))
                return LoopResult(self.specialist, reason, message, history, candidate, target)
            state = self._save(state.advanced("decide", done=True, decision="continue"))
            base_eval = state.outputs.get("base_eval")  # the base model's, for the gate
            state = state.next_iteration(record)
            state = self._save(state.model_copy(update={"outputs": {
                "model": candidate, "eval_event": record.eval_event, "base_eval": base_eval}}))


def _decide(history: list[IterationRecord], target: float, sustained: int,
            options: LoopOptions) -> tuple[str, str] | None:
    scores = [r.composite or 0.0 for r in history]
    streak = 0
    for score in reversed(scores):
        if score < target:
            break
        streak += 1
    if streak >= sustained:
        return "target", (f"composite >= {target} for {streak} consecutive iterations "
                          f"(last {scores[-1]:.3f})")
    if len(history) >= options.max_iterations:
        return "budget", (f"budget of {options.max_iterations} iterations spent; best "
                          f"composite {max(scores):.3f}, target {target}")
    if len(scores) > options.patience:
        before = max(scores[:-options.patience])
        recent = max(scores[-options.patience:])
        if recent <= before + 0.01:
            return "no-gain", (f"{options.patience} iterations without a gain: best "
                               f"{before:.3f} before, {recent:.3f} since")
    return None


def _pool_trainer(ws: Workspace, specialist: str, pool: Any, tag: str,
                  heartbeat_timeout_s: float, say: Callable[[str], None]) -> Callable:
    """A ``trainer`` for :func:`~modelsmith.training.service.train_candidate`: the run as
    a job on the pool, self-healing, each failure a ``TrainingFailed`` event."""
    from modelsmith.events.store import append_observation
    from modelsmith.specs import HyperParams
    from modelsmith.training.job import TrainJobSpec, result_path
    from modelsmith.training.service import TrainerOutput
    from modelsmith.training.trainers import TrainResult

    from .heal import run_training

    def trainer(request: Any) -> TrainerOutput:
        folder = ws.root / ".iterate" / specialist / "jobs" / request.run_id
        spec = TrainJobSpec(specialist=specialist, method=request.method,
                            base=str(request.base_path), dataset=str(request.dataset_path),
                            out=str(request.out_dir),
                            hyperparams=request.profile.model_dump(mode="json"),
                            repo=str(ws.root), heartbeat=str(folder / "heartbeat"))

        def failed(attempt: Any) -> None:
            say(f"  training failed on {attempt.host}: {attempt.diagnosis.failure_class} "
                f"({attempt.diagnosis.evidence}) -> {attempt.recovery.action}")
            payload = TrainingFailed(run_id=request.run_id, host=attempt.host,
                                     failure_class=attempt.diagnosis.failure_class,
                                     action=attempt.recovery.action, attempt=attempt.number,
                                     log_tail=attempt.result.log_tail[-4000:])
            append_observation(ws.store, specialist, [Event.new(payload, actor=tag)])

        healed = run_training(spec, folder / "spec.json", pool,
                              heartbeat_timeout_s=heartbeat_timeout_s, on_failure=failed,
                              on_line=lambda line: say(f"  {line}")
                              if line.startswith("progress") else None)
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
