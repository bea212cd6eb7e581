"""Train a candidate from an evaluation's failures and register it with its lineage.

eval evidence -> failures (FailuresExtracted) -> augmented, validated rows (DatasetBuilt,
DVC-tracked) -> TRL training (TrainingStarted / TrainingCompleted) -> weights tracked with
DVC -> CandidateRegistered(vN) whose lineage names every input by hash.
"""

from __future__ import annotations

import json
import platform
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelsmith.evaluation.results import EvalError
from modelsmith.evaluation.service import find_evaluation, load_runs, specialist_or_error
from modelsmith.events.store import EventStore, append_observation
from modelsmith.events.types import (
    CandidateRegistered,
    DatasetBuilt,
    Event,
    FailuresExtracted,
    Lineage,
    TrainingCompleted,
    TrainingStarted,
)
from modelsmith.specs import HyperParams, ModelProfile, Repository

DATA_DIR = "data"
MODELS_DIR = "models"
#: Generated and teacher rows per failed scenario.
PER_FAILURE = 4
#: TrainingCompleted's evidence: one JSON line per logged step (phase, step, metrics).
TRAINING_LOG = "training_log.jsonl"


@dataclass(frozen=True)
class TrainRequest:
    """One training run for a ``trainer``: the dataset is already written and versioned."""

    run_id: str
    method: str
    base_path: Path
    dataset_path: Path
    profile: HyperParams
    out_dir: Path


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


def next_version(store: EventStore, specialist: str) -> str:
    taken = [int(e.data["version"][1:]) for e in store.read(specialist)
             if e.type == "CandidateRegistered"]
    return f"v{max(taken, default=0) + 1}"


def version_weights(root: Path, specialist: str, version: str) -> Path:
    """Where a candidate's weights live in the work tree (DVC-tracked)."""
    return root / MODELS_DIR / specialist / version


@dataclass
class CandidateModel:
    path: Path  # the weights folder, present in the work tree
    base: ModelProfile  # the profile it descends from: how it is prompted


def candidate_model(
    repo: Repository,
    specialist: str,
    version: str,
    candidates: dict[str, Any],
    pull: Callable[[Path], None],
) -> CandidateModel:
    """A registered candidate's weights (``pull`` fetches them when missing) and the model
    profile it descends from through its parents: it is prompted as that profile was
    trained (plain text or chat template), whatever its saved tokenizer could do."""
    if version not in candidates:
        known = ", ".join(candidates) or "none"
        raise EvalError(f"{specialist} has no candidate {version} (candidates: {known}); "
                        f"train one with `modelsmith train {specialist}`")
    seen, ref = set(), version
    while ref in candidates and ref not in seen:
        seen.add(ref)
        ref = candidates[ref].lineage.get("base_model") or ""
    base = repo.clusters.models.get(ref)
    if base is None:
        raise EvalError(f"{specialist} {version} descends from {ref!r}, which is not a model "
                        "profile in config/clusters.json")
    path = version_weights(repo.root, specialist, version)
    if not (path / "config.json").is_file():
        pull(path)
    return CandidateModel(path, base)


def build_dataset(
    repo: Repository, specialist: str, runs: list[Any], *, seed: int,
    teacher: Callable[[str, int], list[str]] | None = None,
) -> tuple[list[Any], Any]:
    """An evaluation's runs -> (its failures, the validated augmented rows): deterministic
    for the runs, the suite (with its generator) and ``seed`` -- unless a ``teacher``
    rephrases the failed inputs too (see :mod:`.teacher`)."""
    from modelsmith.training.data import (
        augment,
        extract_failures,
        failed_scenario_ids,
        load_generator,
        validate_rows,
    )
    from modelsmith.training.teacher import prefetch_for

    spec = specialist_or_error(repo, specialist)
    suite = repo.suite_for(spec)
    failures = extract_failures(runs)
    passing = [r for r in runs if r.split == "core" and r.passed]
    if teacher is not None:
        inputs = {s.id: s.input for s in suite.core}
        prefetch_for(teacher, [inputs[i] for i in failed_scenario_ids(failures) if i in inputs],
                     PER_FAILURE)
    rows = augment(failures, suite, spec, passing=passing, generator=load_generator(suite),
                   per_failure=PER_FAILURE, teacher=teacher, seed=seed)
    report = validate_rows(rows, suite, spec)
    if not report.kept:
        raise EvalError("no training rows survived validation: "
                        f"{report.to_dict()['removed']}")
    return failures, report


def _override(profile: HyperParams, name: str, overrides: dict[str, Any]) -> HyperParams:
    from pydantic import ValidationError

    try:
        return HyperParams.model_validate({**profile.model_dump(), **overrides})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'profile'}: {e['msg']}"
                             for e in exc.errors())
        raise EvalError(f"profile {name!r} with {overrides}: {problems}") from None


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
    ``trainer`` runs the training elsewhere (the iterate loop: a job on the host pool,
    self-healing); by default it runs in this process.
    """
    from modelsmith.artifacts.models import model_fingerprint
    from modelsmith.training.config import config_hash
    from modelsmith.training.data import dataset_hash, write_dataset
    from modelsmith.training.reward import make_reward_fn
    from modelsmith.training.trainers import train

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
    events: list[Event] = []

    def record(payload, **kw) -> Event:
        (event,) = append_observation(store, specialist,
                                      [Event.new(payload, actor=actor, cause=cause, **kw)])
        events.append(event)
        return event

    runs = load_runs(store, evaluation)
    failures, report = build_dataset(repo, specialist, runs, seed=profile.seed,
                                     teacher=teacher)
    record(FailuresExtracted(eval_event=evaluation.id, version=evaluation.data.get("version"),
                             scenario_ids=sorted({f.id for f in failures})))
    say(f"{len(failures)} failed core inputs in evaluation {evaluation.id[:12]}")
    digest = dataset_hash(report.kept)
    path = write_dataset(report.kept, repo.root / DATA_DIR / specialist / f"{digest[:16]}.jsonl")
    artifacts.ensure_initialised()
    artifacts.track(path)
    artifacts.push([path])
    record(DatasetBuilt(dataset_hash=digest, rows=len(report.kept), sources=report.sources,
                        removed=report.removed, balance=report.balance,
                        path=str(path.relative_to(repo.root)), eval_event=evaluation.id,
                        seed=profile.seed, teacher=teacher_ref if teacher else None))
    say(f"dataset {digest[:12]}: {len(report.kept)} rows, removed {report.removed}")

    version = next_version(store, specialist)
    run_id = uuid.uuid4().hex[:12]
    parent = evaluation.data.get("version")
    record(TrainingStarted(run_id=run_id, method=method, profile=profile_name, host=host,
                           parent=parent, dataset_hash=digest, base=base_ref,
                           hyperparams=profile.model_dump(mode="json")))
    out_dir = version_weights(repo.root, specialist, version)
    started = time.perf_counter()
    if trainer is None:
        result = train(method, base_path, [r.to_dict() for r in report.kept],
                       make_reward_fn(spec, suite), profile, out_dir, progress=progress)
    else:
        ran = trainer(TrainRequest(run_id=run_id, method=method, base_path=base_path,
                                   dataset_path=path, profile=profile, out_dir=out_dir))
        result, host, profile = ran.result, ran.host, ran.profile
    duration = time.perf_counter() - started
    weights = artifacts.track(out_dir)
    artifacts.push([out_dir])
    # Every step's log (loss, reward, KL, entropy, ...) is the run's learning curve.
    curve = "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in result.history)
    record(TrainingCompleted(run_id=run_id, method=method, host=host,
                             duration_s=round(duration, 2), metrics=result.metrics,
                             checkpoint_hash=weights.md5),
           evidence={TRAINING_LOG: curve.encode("utf-8")})
    lineage = Lineage(
        base_model=base_ref,
        base_hash=model_fingerprint(base_path),
        parent=parent,
        eval_event=evaluation.id,
        dataset_hash=digest,
        suite_hash=suite.suite_hash,
        config_hash=config_hash(method, profile, {"base": base_ref}),
        trainer_versions={**result.versions, "python": platform.python_version()},
        run_id=run_id,
        host=host,
        duration_s=round(duration, 2),
        weights_hash=weights.md5,
    )
    record(CandidateRegistered(version=version, lineage=lineage))
    return TrainOutcome(version, out_dir, digest, result.metrics, duration, events)
