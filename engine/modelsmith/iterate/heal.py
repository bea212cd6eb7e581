"""Self-healing training: run a training job on the pool, diagnose every failure, apply its
recovery, try again.

Per attempt: choose the best host (:class:`~modelsmith.fleet.pool.Pool`), write the job
spec, run ``modelsmith job train SPEC`` there, and when it fails classify the failure
(:mod:`modelsmith.fleet.failures`) and act:

- ``halve_batch`` (out of memory): half the batch (GRPO's too, when it stays a multiple of
  the generations), twice the gradient accumulation; the effective batch is unchanged;
- ``next_host`` (unreachable): exclude the host; the next attempt probes the rest;
- ``resume`` (hang): run again; a profile with ``checkpoint_steps`` resumes from the
  newest intact checkpoint (:mod:`modelsmith.training.checkpoints`);
- ``discard_checkpoint`` (corrupt checkpoint): the run's newest checkpoint is removed and
  the run resumes from the one before; with none left the base weights are the corrupt
  ones: :class:`CheckpointDiscarded`, and the loop goes back one model;
- ``double_completion`` (GRPO had no learning signal, the first time): run again with
  twice the ``max_completion_length`` the job reported (up to what the prompts leave room
  for); the GRPO checkpoints go, an SFT warm start is kept;
- ``skip_grpo`` (no learning signal again, or already at the longest completion): run again
  without GRPO: ``sft+grpo`` keeps its SFT result, ``grpo`` the base weights, and the
  result's warnings say so;
- ``retry`` (unknown, first time): run again; ``stop``: :class:`TrainingAbandoned`.

Every failure reaches ``on_failure`` with its class, evidence and action before the
recovery is applied: the loop records it as a ``TrainingFailed`` event.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from modelsmith.errors import ModelsmithError
from modelsmith.fleet.executors import Job, JobResult
from modelsmith.fleet.failures import (
    Diagnosis,
    JobEnd,
    Recovery,
    classify,
    doubled_completion,
    recovery,
)
from modelsmith.fleet.pool import Pool
from modelsmith.specs import HyperParams
from modelsmith.training.checkpoints import discard_newest
from modelsmith.training.job import TrainJobSpec, result_path

#: The job command, before the spec's path.
JOB_COMMAND: tuple[str, ...] = (sys.executable, "-m", "modelsmith", "job", "train")


class TrainingAbandoned(ModelsmithError, RuntimeError):
    """Recovery ran out: the attempts say what happened."""

    def __init__(self, message: str, attempts: list[Attempt]) -> None:
        super().__init__(message)
        self.attempts = attempts


class CheckpointDiscarded(ModelsmithError, RuntimeError):
    """The base checkpoint is corrupt: the caller goes back one."""

    def __init__(self, checkpoint: str, attempts: list[Attempt]) -> None:
        super().__init__(f"checkpoint {checkpoint} is corrupt")
        self.checkpoint = checkpoint
        self.attempts = attempts


@dataclass(frozen=True)
class Attempt:
    number: int
    host: str
    result: JobResult
    diagnosis: Diagnosis | None = None
    recovery: Recovery | None = None


@dataclass
class HealedRun:
    host: str
    spec: TrainJobSpec  # as it finally ran (a halved batch shows here)
    attempts: list[Attempt] = field(default_factory=list)


def halved(hyperparams: dict) -> dict:
    """The hyper-parameters with half the batch and twice the accumulation (the effective
    batch kept). GRPO's batch is halved too when it still holds whole groups of
    ``num_generations``; otherwise it keeps its size."""
    profile = HyperParams.model_validate(hyperparams)
    grpo = profile.grpo_batch // 2
    update = {"batch_size": max(1, profile.batch_size // 2),
              "grad_accum": profile.grad_accum * 2,
              "grpo_batch_size": grpo if grpo and grpo % profile.num_generations == 0
              else profile.grpo_batch}
    return HyperParams.model_validate({**hyperparams, **update}).model_dump(mode="json")


def _without_signal(spec: TrainJobSpec, action: Recovery, diagnosis: Diagnosis,
                    attempt: int) -> TrainJobSpec:
    """The spec to run after a ``no_signal`` failure: a longer completion, or no GRPO."""
    if action.action == "double_completion":
        doubled = doubled_completion(diagnosis.evidence)
        assert doubled is not None  # recovery() chose it for that reason
        hyperparams = HyperParams.model_validate(
            {**spec.hyperparams, "max_completion_length": doubled[1]}).model_dump(mode="json")
        if spec.checkpoints:  # GRPO's were made with the shorter completions
            shutil.rmtree(Path(spec.checkpoints) / "grpo", ignore_errors=True)
        return replace(spec, hyperparams=hyperparams)
    return replace(spec, skip_grpo=f"no learning signal in GRPO at attempt {attempt}")


def run_training(
    spec: TrainJobSpec,
    spec_path: Path,
    pool: Pool,
    *,
    heartbeat_timeout_s: float = 300.0,
    memory_limit_mb: int | None = None,
    max_attempts: int = 6,
    command: Sequence[str] = JOB_COMMAND,
    on_line: Callable[[str], None] | None = None,
    on_failure: Callable[[Attempt], None] = lambda _attempt: None,
) -> HealedRun:
    """Run ``spec`` until it succeeds or recovery gives up (see the module docstring)."""
    attempts: list[Attempt] = []
    failures_by_class: dict[str, int] = {}
    out = Path(spec.out)
    for number in range(1, max_attempts + 1):
        host, executor = pool.choose()
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(spec.to_json(), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)  # a failed attempt's partial output is never used
        result_path(out).unlink(missing_ok=True)
        limit = memory_limit_mb or pool.hosts[host].memory_limit_mb
        job = Job([*command, str(spec_path)], cwd=spec_path.parent,
                  heartbeat=Path(spec.heartbeat) if spec.heartbeat else None,
                  heartbeat_timeout_s=heartbeat_timeout_s, memory_limit_mb=limit,
                  name=f"train-{number}")
        result = executor.run(job, on_line=on_line)
        if result.ok and result_path(out).is_file():
            attempts.append(Attempt(number, host, result))
            return HealedRun(host, spec, attempts)
        diagnosis = classify(JobEnd(result.returncode, result.log_tail, result.stalled,
                                    result.host_reachable, result.via_ssh))
        seen = failures_by_class[diagnosis.failure_class] = (
            failures_by_class.get(diagnosis.failure_class, 0) + 1)
        profile = HyperParams.model_validate(spec.hyperparams)
        action = recovery(diagnosis, seen, batch_size=profile.batch_size,
                          grad_accum=profile.grad_accum)
        attempt = Attempt(number, host, result, diagnosis, action)
        attempts.append(attempt)
        on_failure(attempt)
        if action.action == "stop":
            raise TrainingAbandoned(f"training stopped after {number} attempts: "
                                    f"{diagnosis.failure_class}: {diagnosis.evidence}",
                                    attempts)
        if action.action == "discard_checkpoint":
            dropped = discard_newest(Path(spec.checkpoints)) if spec.checkpoints else None
            if dropped is None:  # no checkpoint of this run: the base itself is corrupt
                raise CheckpointDiscarded(spec.base, attempts)
            continue  # back one: the run resumes from the checkpoint before
        if action.action == "halve_batch":
            spec = replace(spec, hyperparams=halved(spec.hyperparams))
            if spec.checkpoints:  # saved at the old batch size: not resumable as is
                shutil.rmtree(spec.checkpoints, ignore_errors=True)
        elif action.action == "next_host":
            pool.exclude(host, diagnosis.evidence)
        elif action.action in ("double_completion", "skip_grpo"):
            spec = _without_signal(spec, action, diagnosis, number)
    raise TrainingAbandoned(f"training failed {max_attempts} times", attempts)
