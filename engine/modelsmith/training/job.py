"""A training run as a job any executor can start: ``modelsmith job train SPEC.json``.

The iterate loop does not train in its own process: it writes a job spec (method, base
weights folder, dataset file, hyper-parameters, output folder, heartbeat file) and hands
``modelsmith job train SPEC`` to an executor (local, ssh, ray). The job prints one line per
training step and touches its heartbeat file, so the executor can tell progress from a
hang; when it ends, the output folder holds the merged weights and ``<out>.result.json``
beside it has the steps, duration, metrics, trainer versions and per-step log (beside, not
inside: the weights' content hash must not depend on timings). A failure leaves its
message on stderr for the failure classifier; a run is complete only when its result file
exists. A recovery may tell the job to skip GRPO (``skip_grpo``: why); the result's
``warnings`` then say what was kept.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path
from typing import Any

from modelsmith.errors import ModelsmithError
from modelsmith.specs import HyperParams, LoadedSuite, Specialist

RESULT_SUFFIX = ".result.json"


def result_path(out: Path) -> Path:
    """Where a job writes its result: ``<out>.result.json`` beside the weights folder."""
    out = Path(out)
    return out.with_name(out.name + RESULT_SUFFIX)


class JobSpecError(ModelsmithError, ValueError):
    """A job spec that cannot be run; the message names the file and the field."""


@dataclass(frozen=True)
class TrainJobSpec:
    specialist: str
    method: str
    base: str  # weights folder
    dataset: str  # JSONL written by write_dataset
    out: str  # output folder (must be empty or absent)
    hyperparams: dict[str, Any]
    repo: str  # the repository root (its suite gives the reward)
    heartbeat: str | None = None
    checkpoints: str | None = None  # resumable runs keep their checkpoints here
    profile: str | None = None  # the profile's name, for messages
    skip_grpo: str | None = None  # why GRPO does not run (set by the recovery)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: Path) -> TrainJobSpec:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise JobSpecError(f"{path}: cannot read the job spec: {exc}") from None
        if not isinstance(data, dict):
            raise JobSpecError(f"{path}: a job spec is a JSON object")
        fields = cls.__dataclass_fields__
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise JobSpecError(f"{path}: {unknown[0]}: unknown field")
        required = [n for n, f in fields.items() if f.default is MISSING and n not in data]
        if required:
            raise JobSpecError(f"{path}: {required[0]}: missing")
        for name in ("specialist", "method", "base", "dataset", "out", "repo"):
            if not isinstance(data[name], str) or not data[name]:
                raise JobSpecError(f"{path}: {name}: must be a non-empty string")
        if not isinstance(data["hyperparams"], dict):
            raise JobSpecError(f"{path}: hyperparams: must be an object")
        for name in ("heartbeat", "checkpoints", "profile", "skip_grpo"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise JobSpecError(f"{path}: {name}: must be a string or null")
        return cls(**data)


def run_train_job(spec: TrainJobSpec, say: Any = print) -> dict[str, Any]:
    """Train as the spec says; print one line per step and touch the heartbeat."""
    from pydantic import ValidationError

    from modelsmith.specs import load_repository
    from modelsmith.training.dataset import read_dataset
    from modelsmith.training.reward import make_reward_fn
    from modelsmith.training.trainers import train

    try:
        profile = HyperParams.model_validate(spec.hyperparams)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise JobSpecError(f"hyperparams.{'.'.join(map(str, first['loc']))}: "
                           f"{first['msg']}") from None
    repo = load_repository(Path(spec.repo))
    specialist: Specialist = repo.specialists[spec.specialist]
    suite: LoadedSuite = repo.suite_for(specialist)
    rows = [row.to_dict() for row in read_dataset(Path(spec.dataset))]
    heartbeat = Path(spec.heartbeat) if spec.heartbeat else None

    def progress(log: dict[str, Any]) -> None:
        if heartbeat is not None:
            heartbeat.touch()
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in log.items() if k in ("phase", "step", "total", "loss",
                                                          "reward"))
        say(f"progress {shown}")

    if heartbeat is not None:
        heartbeat.parent.mkdir(parents=True, exist_ok=True)
        heartbeat.touch()
    result = train(spec.method, Path(spec.base), rows, make_reward_fn(specialist, suite),
                   profile, Path(spec.out), progress=progress,
                   checkpoints=Path(spec.checkpoints) if spec.checkpoints else None, say=say,
                   profile_name=spec.profile, skip_grpo=spec.skip_grpo,
                   clusters=repo.clusters)
    for warning in result.warnings:
        say(f"warning: {warning}")
    summary = {"steps": result.steps, "duration_s": round(result.duration_s, 3),
               "metrics": result.metrics, "versions": result.versions,
               "history": result.history, "warnings": result.warnings}
    result_path(Path(spec.out)).write_text(json.dumps(summary, sort_keys=True) + "\n",
                                           encoding="utf-8")
    return summary
