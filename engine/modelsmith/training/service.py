"""Train a candidate from an evaluation's failures and register it with its lineage.

eval evidence -> failures (FailuresExtracted) -> augmented, validated rows (DatasetBuilt,
DVC-tracked) -> TRL training (TrainingStarted / TrainingCompleted) -> weights tracked with
DVC -> one git commit of their pointer files -> CandidateRegistered(vN) whose lineage names
every input by hash.

Where the pointer files live: the content of a dataset and of the weights is in DVC (the
remote); git holds their pointer files (``data/<specialist>/<hash>.jsonl.dvc``,
``models/<specialist>/vN.dvc``, the ``.gitignore`` lines DVC writes beside them, and DVC's
setup files the first time Modelsmith initialised DVC in the fork). They are committed on
the branch the candidate was trained on, one commit per candidate (:func:`pointer_message`),
and nothing else goes into that commit: a user's own staged changes stay staged. The event
log (``modelsmith/events``) records the same hashes, so a candidate is found by its events
and its bytes by the commit's pointers; proposal branches only edit ``release`` and merge
without touching them. Without a branch to commit on (detached HEAD, no git work tree), the
pointers are left staged with a warning.
"""

from __future__ import annotations

import json
import logging
import platform
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelsmith.artifacts.registry import next_version, version_weights
from modelsmith.evaluation.results import EvalError
from modelsmith.evaluation.service import find_evaluation, load_runs, specialist_or_error
from modelsmith.events.store import EventStore, Recorder
from modelsmith.events.types import (
    CandidateRegistered,
    DatasetBuilt,
    Event,
    FailuresExtracted,
    Lineage,
    TrainingCompleted,
    TrainingStarted,
)
from modelsmith.specs import HyperParams, Repository

DATA_DIR = "data"
#: TrainingCompleted's evidence: one JSON line per logged step (phase, step, metrics).
TRAINING_LOG = "training_log.jsonl"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRequest:
    """One training run for a ``trainer``: the dataset is already written and versioned."""

    run_id: str
    method: str
    base_path: Path
    dataset_path: Path
    profile: HyperParams
    out_dir: Path
    profile_name: str | None = None  # for messages


@dataclass(frozen=True)
class TrainerOutput:
    result: Any  # modelsmith.training.trainers.TrainResult
    host: str  # where it ran
    profile: HyperParams  # as it finally ran (recovery may have halved the batch)


@dataclass
class TrainOutcome:
    version: str
    weights: Path
    dataset_hash: str
    metrics: dict[str, float]
    duration_s: float
    events: list[Event]
    #: The commit of the candidate's DVC pointer files (``modelsmith.artifacts.commits``).
    pointers: Any = None


def generate_rows(
    repo: Repository, specialist: str, runs: list[Any], failures: list[Any], *, seed: int,
    teacher: Callable[[str, int], list[str]] | None = None, iteration: int = 1,
    pool_taken: frozenset[str] = frozenset(),
) -> list[Any]:
    """Training rows (not yet validated) for an evaluation's failures (:mod:`.augment`):
    deterministic for the runs, the suite (with its generator and pool), ``seed`` and
    ``iteration`` -- unless a ``teacher`` rephrases the failed inputs too (:mod:`.teacher`).
    ``pool_taken``: pool rows an earlier dataset of the chain already holds."""
    from modelsmith.training.augment import augment
    from modelsmith.training.extraction import failed_scenario_ids
    from modelsmith.training.generator import load_generator
    from modelsmith.training.teacher import prefetch_for

    spec = specialist_or_error(repo, specialist)
    suite = repo.suite_for(spec)
    passing = [r for r in runs if r.split == "core" and r.passed]
    if teacher is not None:
        inputs = {s.id: s.input for s in suite.core}
        prefetch_for(teacher, [inputs[i] for i in failed_scenario_ids(failures) if i in inputs],
                     suite.suite.spec.training.rows_per_failure)
    per_failure = suite.suite.spec.training.rows_per_failure
    return augment(failures, suite, spec, passing=passing, generator=load_generator(suite),
                   per_failure=per_failure, teacher=teacher, seed=seed, iteration=iteration,
                   pool_taken=pool_taken)


def validate(repo: Repository, specialist: str, rows: list[Any]) -> Any:
    """The rows that pass validation (a ``ValidationReport``); none left is an error."""
    from modelsmith.training.validation import validate_rows

    spec = specialist_or_error(repo, specialist)
    suite = repo.suite_for(spec)
    if not rows:
        raise EvalError(
            f"no training rows for the failures of {specialist}: suite {suite.name!r} has no "
            "generator (spec.generator), no training pool (split: train scenarios) and no "
            "teacher was given, and it does not train on its own core inputs "
            "(spec.training.use_eval_inputs, which makes those scenarios count as seen)")
    report = validate_rows(rows, suite, spec)
    if not report.kept:
        raise EvalError("no training rows survived validation: "
                        f"{report.to_dict()['removed']}")
    return report


def build_dataset(
    repo: Repository, specialist: str, runs: list[Any], *, seed: int,
    teacher: Callable[[str, int], list[str]] | None = None, iteration: int = 1,
) -> tuple[list[Any], Any]:
    """An evaluation's runs -> (its failures, the validated augmented rows)."""
    from modelsmith.training.extraction import extract_failures

    failures = extract_failures(runs)
    rows = generate_rows(repo, specialist, runs, failures, seed=seed, teacher=teacher,
                         iteration=iteration)
    return failures, validate(repo, specialist, rows)


def _override(profile: HyperParams, name: str, overrides: dict[str, Any]) -> HyperParams:
    from pydantic import ValidationError

    try:
        return HyperParams.model_validate({**profile.model_dump(), **overrides})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'profile'}: {e['msg']}"
                             for e in exc.errors())
        raise EvalError(f"profile {name!r} with {overrides}: {problems}") from None


@dataclass
class TrainingPlan:
    """What a training run is built from, resolved and checked before anything runs."""

    specialist: str
    method: str
    profile_name: str
    profile: HyperParams
    evaluation: Event  # the EvalCompleted whose failures it trains on
    base_ref: str


def plan_training(
    repo: Repository, specialist: str, store: EventStore, *, base_ref: str,
    from_eval: str | None = None, method: str | None = None, profile_name: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainingPlan:
    spec = specialist_or_error(repo, specialist)
    suite = repo.suite_for(spec)
    method = method or spec.spec.training.method
    profile_name = profile_name or spec.spec.training.profile
    profile = repo.clusters.profiles.get(profile_name)
    if profile is None:
        raise EvalError(f"no hyper-parameter profile {profile_name!r} in config/clusters.json "
                        f"(profiles: {', '.join(sorted(repo.clusters.profiles))})")
    if overrides:
        profile = _override(profile, profile_name, overrides)
    evaluation = find_evaluation(store, specialist, from_eval or base_ref)
    if evaluation.data.get("suite_hash") != suite.suite_hash:
        raise EvalError(f"evaluation {evaluation.id} ran on another version of the suite; "
                        f"evaluate again (`modelsmith eval {specialist} --model {base_ref}`)")
    return TrainingPlan(specialist, method, profile_name, profile, evaluation, base_ref)


def record_failures(plan: TrainingPlan, failures: list[Any], recorder: Recorder) -> Event:
    """``FailuresExtracted`` for the plan's evaluation."""
    evaluation = plan.evaluation
    return recorder.record(FailuresExtracted(
        eval_event=evaluation.id, version=evaluation.data.get("version"),
        scenario_ids=sorted({f.id for f in failures})))


@dataclass(frozen=True)
class Dataset:
    hash: str
    path: Path  # in the work tree, DVC-tracked
    rows: list[Any]  # the validated TrainingRows


def new_rows(rows: list[Any], previous: list[Any]) -> int:
    """How many of ``rows`` say something ``previous`` did not (normalised input, answer)."""
    from modelsmith.training.similarity import normalise

    def key(row: Any) -> tuple[str, str]:
        return normalise(row.input), row.answer

    before = {key(row) for row in previous}
    return sum(key(row) not in before for row in rows)


def record_dataset(repo: Repository, plan: TrainingPlan, report: Any, *, artifacts: Any,
                   recorder: Recorder, teacher_ref: str | None = None,
                   previous: list[Any] | None = None, iteration: int | None = None) -> Dataset:
    """Write the validated rows, track and push them with DVC, record ``DatasetBuilt`` with
    its contamination accounting and how many rows are new against ``previous`` (the
    chain's previous dataset)."""
    from modelsmith.training.dataset import dataset_hash, write_dataset

    digest = dataset_hash(report.kept)
    path = write_dataset(report.kept,
                         repo.root / DATA_DIR / plan.specialist / f"{digest[:16]}.jsonl")
    artifacts.ensure_initialised()
    artifacts.track(path)
    artifacts.push([path])
    recorder.record(DatasetBuilt(
        dataset_hash=digest, rows=len(report.kept), sources=report.sources,
        removed=report.removed, balance=report.balance, path=str(path.relative_to(repo.root)),
        eval_event=plan.evaluation.id, seed=plan.profile.seed, teacher=teacher_ref,
        iteration=iteration, new_rows=new_rows(report.kept, previous or []),
        scenarios=list(report.scenarios), restated=list(report.restated)))
    return Dataset(digest, path, list(report.kept))


def train_on(
    repo: Repository, plan: TrainingPlan, dataset: Dataset, *, store: EventStore,
    artifacts: Any, base_path: Path, recorder: Recorder,
    trainer: Callable[[TrainRequest], TrainerOutput] | None = None, host: str = "local",
    progress: Callable[[dict], None] | None = None, say: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """Train on ``dataset``, track the weights, commit the dataset's and the weights' DVC
    pointer files on the checked-out branch (:func:`commit_pointers`), register the next
    candidate version.

    Under a replaying ``recorder`` a run cut short keeps its ``TrainingStarted`` (and run
    id); a ``TrainingCompleted`` already recorded is reused only when the weights in the
    work tree still hash to its ``checkpoint_hash`` -- a half-written checkpoint is never
    used, the run trains again.
    """
    from modelsmith.training.reward import make_reward_fn
    from modelsmith.training.trainers import train

    spec = specialist_or_error(repo, plan.specialist)
    suite = repo.suite_for(spec)
    version = next_version(e.data["version"] for e in store.read(plan.specialist)
                           if e.type == "CandidateRegistered")
    run_id = _record_started(plan, dataset, recorder, host)
    out_dir = version_weights(repo.root, plan.specialist, version)
    completed = recorder.recorded("TrainingCompleted")
    started = time.perf_counter()
    ran = _reusable(completed, out_dir, artifacts, plan)
    if ran is not None:
        started -= ran.result.duration_s
    elif trainer is None:
        ran = TrainerOutput(train(plan.method, base_path, [r.to_dict() for r in dataset.rows],
                                  make_reward_fn(spec, suite), plan.profile, out_dir,
                                  progress=progress, profile_name=plan.profile_name,
                                  clusters=repo.clusters),
                            host, plan.profile)
    else:
        ran = trainer(TrainRequest(run_id=run_id, method=plan.method, base_path=base_path,
                                   dataset_path=dataset.path, profile=plan.profile,
                                   out_dir=out_dir, profile_name=plan.profile_name))
    duration = time.perf_counter() - started
    weights = artifacts.track(out_dir)
    artifacts.push([out_dir])
    done = _record_completed(run_id, plan.method, ran, duration, weights.md5, recorder)
    # Committed before the candidate is registered: a run cut short in between commits
    # nothing twice (the pointers are unchanged) and registers on its next try.
    pointers = commit_pointers(artifacts, plan.specialist, version, dataset, weights,
                               run_id=run_id, say=say)
    lineage = _lineage(plan, dataset, suite.suite_hash, ran, done, run_id=run_id,
                       base_path=base_path, weights_hash=weights.md5,
                       seen=_seen(store, plan, dataset))
    recorder.record(CandidateRegistered(version=version, lineage=lineage))
    return TrainOutcome(version, out_dir, dataset.hash, ran.result.metrics,
                        float(done.data["duration_s"]), recorder.events, pointers)


def pointer_message(specialist: str, version: str, dataset_hash: str, weights_hash: str,
                    run_id: str) -> str:
    """The commit message of a candidate's pointer files: a summary line naming the version
    and both hashes, then trailers with them in full."""
    return (f"modelsmith: version {specialist} {version} (dataset {dataset_hash[:8]}, "
            f"weights {weights_hash[:8]})\n\n"
            "The DVC pointer files of the candidate's dataset and weights; the event log\n"
            "(modelsmith/events) records the same hashes.\n\n"
            f"Specialist: {specialist}\nVersion: {version}\nDataset: {dataset_hash}\n"
            f"Weights: {weights_hash}\nRun: {run_id}\n")


def commit_pointers(artifacts: Any, specialist: str, version: str, dataset: Dataset,
                    weights: Any, *, run_id: str,
                    say: Callable[[str], None] | None = None) -> Any:
    """Commit the DVC pointer files of ``dataset`` and ``weights`` (a ``TrackedArtifact``)
    on the checked-out branch, and only them; a ``PathsCommit``. Without a branch to commit
    on they stay staged and ``say`` (else this module's logger) warns."""
    paths = [*artifacts.pointer_files(dataset.path), *weights.git_paths]
    message = pointer_message(specialist, version, dataset.hash, weights.md5, run_id)
    result = artifacts.commit(paths, message)
    if result.committed:
        note = (f"committed the DVC pointer files of {specialist} {version} on "
                f"{result.branch} ({result.commit[:12]})")
        (say or log.info)(note)
    elif result.reason:
        note = (f"warning: the DVC pointer files of {specialist} {version} are staged, not "
                f"committed ({result.reason}): commit {', '.join(result.paths)} yourself")
        (say or log.warning)(note)
    return result


def _record_started(plan: TrainingPlan, dataset: Dataset, recorder: Recorder,
                    host: str) -> str:
    """``TrainingStarted``; its run id is the one already recorded when replaying."""
    started_before = recorder.recorded("TrainingStarted")
    run_id = str(started_before.data["run_id"]) if started_before else uuid.uuid4().hex[:12]
    recorder.record(TrainingStarted(run_id=run_id, method=plan.method,
                                    profile=plan.profile_name, host=host,
                                    parent=plan.evaluation.data.get("version"),
                                    dataset_hash=dataset.hash, base=plan.base_ref,
                                    hyperparams=plan.profile.model_dump(mode="json")))
    return run_id


def _reusable(completed: Event | None, out_dir: Path, artifacts: Any,
              plan: TrainingPlan) -> TrainerOutput | None:
    """What a run cut short after training made, when its weights still check out."""
    from modelsmith.training.trainers import TrainResult

    if completed is None or not out_dir.is_dir() \
            or artifacts.content_hash(out_dir) != completed.data["checkpoint_hash"]:
        return None
    data = completed.data
    result = TrainResult(out_dir=out_dir, method=plan.method, steps=0,
                         duration_s=data["duration_s"], metrics=data["metrics"],
                         history=[], versions={})
    return TrainerOutput(result, data["host"], plan.profile)


def _record_completed(run_id: str, method: str, ran: TrainerOutput, duration: float,
                      weights_hash: str, recorder: Recorder) -> Event:
    """``TrainingCompleted``, with the run's learning curve as its evidence."""
    # Every step's log (loss, reward, KL, entropy, ...) is the run's learning curve.
    curve = "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in ran.result.history)
    return recorder.record(TrainingCompleted(run_id=run_id, method=method, host=ran.host,
                                             duration_s=round(duration, 2),
                                             metrics=ran.result.metrics,
                                             checkpoint_hash=weights_hash),
                           evidence={TRAINING_LOG: curve.encode("utf-8")})


def _seen(store: EventStore, plan: TrainingPlan, dataset: Dataset) -> list[str]:
    """The core scenarios the new candidate has trained on: its parent's, and those its
    dataset came from or restates (``DatasetBuilt.scenarios``)."""
    from modelsmith.evaluation.service import seen_by

    parent = plan.evaluation.data.get("version")
    seen = set(seen_by(store, plan.specialist, parent)) if parent else set()
    built = None
    for event in store.read(plan.specialist):
        if event.type == "DatasetBuilt" and event.data.get("dataset_hash") == dataset.hash:
            built = event
    if built is not None:
        seen.update(built.data.get("scenarios") or ())
    else:  # a dataset the log does not describe: count its eval rows at least
        from modelsmith.training.dataset import EVAL_SOURCES

        seen.update(r.scenario_id for r in dataset.rows if r.source in EVAL_SOURCES)
    return sorted(seen)


def _lineage(plan: TrainingPlan, dataset: Dataset, suite_hash: str, ran: TrainerOutput,
             done: Event, *, run_id: str, base_path: Path, weights_hash: str,
             seen: list[str]) -> Lineage:
    """Every input of the candidate by hash; the config hash covers the profile as it ran."""
    from modelsmith.artifacts.models import model_fingerprint
    from modelsmith.training.config import config_hash
    from modelsmith.training.trainers import trainer_versions

    # Weights reused from before a cut were made in this environment.
    versions = ran.result.versions or trainer_versions()
    return Lineage(
        base_model=plan.base_ref,
        base_hash=model_fingerprint(base_path),
        parent=plan.evaluation.data.get("version"),
        eval_event=plan.evaluation.id,
        dataset_hash=dataset.hash,
        suite_hash=suite_hash,
        config_hash=config_hash(plan.method, ran.profile, {"base": plan.base_ref}),
        trainer_versions={**versions, "python": platform.python_version()},
        run_id=run_id,
        host=str(done.data["host"]),
        duration_s=float(done.data["duration_s"]),
        weights_hash=weights_hash,
        seen=seen,
    )


def train_candidate(
    repo: Repository,
    specialist: str,
    *,
    store: EventStore,
    artifacts: Any,  # modelsmith.artifacts.dvc.ArtifactStore
    base_path: Path,
    base_ref: str,
    from_eval: str | None = None,
    method: str | None = None,
    profile_name: str | None = None,
    overrides: dict[str, Any] | None = None,
    teacher: Callable[[str, int], list[str]] | None = None,
    teacher_ref: str | None = None,
    trainer: Callable[[TrainRequest], TrainerOutput] | None = None,
    actor: str = "cli",
    cause: str | None = None,
    host: str = "local",
    progress: Callable[[dict], None] | None = None,
    say: Callable[[str], None] = lambda _msg: None,
) -> TrainOutcome:
    """The whole pipeline for one candidate; every step appends its event.

    ``overrides`` replace fields of the hyper-parameter profile for this run (``max_steps``,
    ``sft_steps``, ...); the result is validated as a profile and enters the config hash.
    ``teacher`` (named ``teacher_ref`` in the log) adds rephrasings of the failed inputs.
    ``trainer`` runs the training elsewhere; by default it runs in this process. The iterate
    loop runs the same steps one phase at a time (:mod:`modelsmith.iterate.loop`).
    """
    from modelsmith.training.extraction import extract_failures

    plan = plan_training(repo, specialist, store, base_ref=base_ref, from_eval=from_eval,
                         method=method, profile_name=profile_name, overrides=overrides)
    recorder = Recorder(store, specialist, actor=actor, cause=cause)
    runs = load_runs(store, plan.evaluation)
    failures = extract_failures(runs)
    rows = generate_rows(repo, specialist, runs, failures, seed=plan.profile.seed,
                         teacher=teacher)
    report = validate(repo, specialist, rows)
    record_failures(plan, failures, recorder)
    say(f"{len(failures)} failed core inputs in evaluation {plan.evaluation.id[:12]}")
    dataset = record_dataset(repo, plan, report, artifacts=artifacts, recorder=recorder,
                             teacher_ref=teacher_ref if teacher else None)
    say(f"dataset {dataset.hash[:12]}: {len(report.kept)} rows, removed {report.removed}")
    return train_on(repo, plan, dataset, store=store, artifacts=artifacts,
                    base_path=base_path, recorder=recorder, trainer=trainer, host=host,
                    progress=progress, say=say)
