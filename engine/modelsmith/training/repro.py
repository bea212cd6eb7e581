"""Rebuild a registered candidate from its lineage: the stages ``dvc repro`` runs.

A candidate's events say everything it was made from: the evaluation whose runs became the
dataset (``DatasetBuilt.eval_event`` and ``seed``), the method, base model and profile as
run (``TrainingStarted``), and the hashes of the dataset and the weights
(``CandidateRegistered.lineage``). The three stages here read those events, redo the work
and write plain files for DVC to own (``dvc.yaml`` at the repository root):

- :func:`rebuild_dataset` — the evaluation's runs -> the same validated rows; the file's
  hash must equal the recorded ``dataset_hash`` (else the suite or its generator changed).
- :func:`retrain` — the same method, base and hyper-parameters on that file; the weights'
  DVC hash is compared with the recorded one (CPU training with a fixed seed and thread
  count is deterministic; another machine or library version may differ: reported, not
  fatal).
- :func:`reevaluate` — the suite on the rebuilt weights, written as a metrics file.

Nothing here appends events or tracks files with ``.dvc`` files: DVC owns the outputs.

Which candidates the pipeline rebuilds is ``params.yaml``'s ``rebuild`` map, specialist ->
version (:func:`set_rebuild`, ``modelsmith repro set``); each stage is a ``foreach`` over it,
so with the map empty there is no stage and ``dvc status`` in a fresh fork is clean.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelsmith.evaluation.results import EvalError
from modelsmith.evaluation.service import load_runs, specialist_or_error
from modelsmith.events.store import EventStore
from modelsmith.events.types import Event
from modelsmith.specs import HyperParams, Repository

#: The DVC parameters file holding ``rebuild``, at the repository root.
PARAMS_FILE = "params.yaml"
#: How a pipeline from before ``rebuild`` became a map names its one candidate.
LEGACY_REBUILD = "${rebuild.specialist}"


@dataclass(frozen=True)
class CandidateRecord:
    """The events that made one candidate version."""

    version: str
    registered: Event  # CandidateRegistered
    started: Event  # TrainingStarted
    dataset: Event  # DatasetBuilt
    evaluation: Event  # the EvalCompleted the dataset came from

    @property
    def lineage(self) -> dict[str, Any]:
        return dict(self.registered.data["lineage"])


def find_candidate(store: EventStore, specialist: str, version: str) -> CandidateRecord:
    """The events behind ``specialist`` ``version``; a clear error when any is missing."""
    events = list(store.read(specialist))
    registered = next((e for e in events if e.type == "CandidateRegistered"
                       and e.data.get("version") == version), None)
    if registered is None:
        known = [e.data["version"] for e in events if e.type == "CandidateRegistered"]
        raise EvalError(f"{specialist} has no candidate {version} "
                        f"(candidates: {', '.join(known) or 'none'})")
    lineage = registered.data["lineage"]
    started = next((e for e in events if e.type == "TrainingStarted"
                    and e.data.get("run_id") == lineage.get("run_id")), None)
    dataset = next((e for e in events if e.type == "DatasetBuilt"
                    and e.data.get("dataset_hash") == lineage.get("dataset_hash")), None)
    if started is None or dataset is None:
        raise EvalError(f"{specialist} {version}: the log lacks its TrainingStarted or "
                        "DatasetBuilt event; it cannot be rebuilt")
    if not started.data.get("hyperparams") or dataset.data.get("eval_event") is None:
        raise EvalError(f"{specialist} {version} was registered before runs recorded their "
                        "hyper-parameters and source evaluation; it cannot be rebuilt")
    eval_id = dataset.data["eval_event"]
    evaluation = next((e for e in events if e.id == eval_id), None)
    if evaluation is None:
        raise EvalError(f"{specialist} {version}: evaluation {eval_id} is not in the log")
    return CandidateRecord(version, registered, started, dataset, evaluation)


@dataclass(frozen=True)
class StageResult:
    path: Path
    hash: str
    expected: str | None

    @property
    def identical(self) -> bool:
        return self.expected is not None and self.hash == self.expected

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "hash": self.hash, "expected": self.expected,
                "identical": self.identical}


def rebuild_dataset(
    repo: Repository, store: EventStore, specialist: str, version: str, out: Path,
    *, fetch: Callable[[Path], None] | None = None,
) -> StageResult:
    """Rebuild the dataset ``version`` trained on into ``out``; an error when its hash is
    not the recorded one.

    A dataset with teacher rows cannot be regenerated (a model's sampling): its versioned
    file (``DatasetBuilt.path``, fetched from the DVC remote by ``fetch`` when missing) is
    copied instead, after the same hash check.
    """
    from modelsmith.training.dataset import dataset_hash, read_dataset, write_dataset
    from modelsmith.training.service import build_dataset

    record = find_candidate(store, specialist, version)
    expected = record.dataset.data["dataset_hash"]
    data = record.dataset.data
    # A loop dataset that rehearses the previous one holds rows of an earlier evaluation:
    # like teacher rows, it is not regenerated from this evaluation alone.
    rehearsed = data.get("new_rows") is not None and data["new_rows"] < data["rows"]
    if data.get("teacher") or rehearsed:
        source = repo.root / record.dataset.data["path"]
        if not source.is_file() and fetch is not None:
            fetch(source)
        if not source.is_file():
            why = "teacher rows" if data.get("teacher") else "rehearsed rows"
            raise EvalError(f"{version}'s dataset has {why} and its versioned file "
                            f"{source} is missing (dvc pull it)")
        rows = read_dataset(source)
        if dataset_hash(rows) != expected:
            raise EvalError(f"{source} is not the dataset {version} was trained on")
        return StageResult(write_dataset(rows, Path(out)), expected, expected)
    suite = repo.suite_for(specialist_or_error(repo, specialist))
    if record.evaluation.data.get("suite_hash") != suite.suite_hash:
        raise EvalError(f"{specialist} {version} was trained on another version of the suite "
                        f"({record.evaluation.data.get('suite_hash')}, now {suite.suite_hash}): "
                        "check out the commit it was built at")
    runs = load_runs(store, record.evaluation)
    _, report = build_dataset(repo, specialist, runs, seed=int(data["seed"]),
                              iteration=int(data.get("iteration") or 1))
    digest = dataset_hash(report.kept)
    if digest != expected:
        raise EvalError(f"rebuilt dataset {digest} differs from the recorded {expected}: the "
                        "suite's generator or the augmentation code changed")
    path = write_dataset(report.kept, Path(out))
    return StageResult(path, digest, expected)


def retrain(
    repo: Repository,
    store: EventStore,
    specialist: str,
    version: str,
    dataset: Path,
    out: Path,
    *,
    base_path: Callable[[str], Path],
    hash_of: Callable[[Path], str],
    progress: Callable[[dict], None] | None = None,
) -> StageResult:
    """Train again what ``version`` was trained with, on ``dataset``, into ``out``.

    ``base_path`` resolves the recorded base reference to a folder; ``hash_of`` computes
    the weights' DVC hash, compared with the recorded ``weights_hash``.
    """
    from modelsmith.training.dataset import dataset_hash, read_dataset
    from modelsmith.training.reward import make_reward_fn
    from modelsmith.training.trainers import train

    record = find_candidate(store, specialist, version)
    spec = specialist_or_error(repo, specialist)
    suite = repo.suite_for(spec)
    rows = read_dataset(Path(dataset))
    expected_data = record.dataset.data["dataset_hash"]
    if dataset_hash(rows) != expected_data:
        raise EvalError(f"{dataset} is not the dataset {version} was trained on "
                        f"({expected_data}); run the data stage first")
    started = record.started.data
    profile = HyperParams.model_validate(started["hyperparams"])
    base = started.get("base") or record.lineage["base_model"]
    result = train(started["method"], base_path(base), [r.to_dict() for r in rows],
                   make_reward_fn(spec, suite), profile, Path(out), progress=progress,
                   clusters=repo.clusters)
    return StageResult(result.out_dir, hash_of(result.out_dir), record.lineage.get("weights_hash"))


def write_json(path: Path, document: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def set_rebuild(root: Path, specialist: str, version: str | None) -> dict[str, str]:
    """Make ``params.yaml``'s ``rebuild`` name ``version`` of ``specialist`` (None: drop the
    specialist), keeping the file's comments; the map as written.

    A repository whose ``dvc.yaml`` still names one candidate (``${rebuild.specialist}``)
    gets that form written instead: ``{specialist, version}``.
    """
    import os

    from ruamel.yaml.comments import CommentedMap

    from modelsmith.specs.yamlio import (
        SPEC_MAX_BYTES,
        ParseFailure,
        decode_utf8,
        dump_yaml,
        parse_yaml_documents,
        read_bounded,
    )

    path = Path(root) / PARAMS_FILE
    try:
        docs = (parse_yaml_documents(decode_utf8(read_bounded(path, SPEC_MAX_BYTES)))
                if path.exists() else [])
    except ParseFailure as exc:
        where = f":{exc.line}:{exc.column}" if exc.line else ""
        raise EvalError(f"{PARAMS_FILE}{where}: {exc.message}") from None
    doc = docs[0] if docs and docs[0] is not None else CommentedMap()
    if not isinstance(doc, dict):
        raise EvalError(f"{PARAMS_FILE}: expected a mapping at the top, with a `rebuild` key")
    pipeline = Path(root) / "dvc.yaml"
    legacy = pipeline.is_file() and LEGACY_REBUILD in pipeline.read_text(encoding="utf-8",
                                                                          errors="replace")
    current = doc.get("rebuild")
    if legacy:
        if version is None:
            raise EvalError("this repository's dvc.yaml rebuilds one candidate "
                            "(${rebuild.specialist}); name another one instead, or take the "
                            "engine's dvc.yaml (a `rebuild` map) to rebuild none")
        doc["rebuild"] = CommentedMap([("specialist", specialist), ("version", version)])
    else:
        if not isinstance(current, dict) or set(current) == {"specialist", "version"}:
            current = CommentedMap()  # none yet, or the one-candidate form of old forks
            current.fa.set_flow_style()
        if version is None:
            current.pop(specialist, None)
        else:
            current[specialist] = version
        doc["rebuild"] = current
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dump_yaml(doc), encoding="utf-8")
    os.replace(tmp, path)
    return {str(k): str(v) for k, v in doc["rebuild"].items()}
