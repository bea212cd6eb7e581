"""Training rows and the dataset file: one row per JSONL line, canonical, hashed for lineage.

A dataset is the validated rows written as canonical JSONL (keys sorted, one row per line,
in order); its hash is the sha256 of exactly those bytes, so the hash recorded in
``DatasetBuilt`` is the hash of the DVC-tracked file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modelsmith.errors import ModelsmithError

#: Where a training row came from: a failed core scenario's own input or variant, a passing
#: one replayed (those three only with ``training.use_eval_inputs``), the suite's
#: generator, a teacher's rephrasing of a failed input, or the suite's labelled pool.
SOURCES: tuple[str, ...] = ("failure", "variant", "generator", "teacher", "replay", "pool")
#: Sources whose rows are a core scenario's own text (or a rewording of it): training on
#: them makes that scenario *seen*.
EVAL_SOURCES: frozenset[str] = frozenset({"failure", "variant", "teacher", "replay"})
#: Sources whose rows are scored with their scenario's rubric (the eval scenario's, or the
#: pool scenario's); generator rows get their own rubric, else the suite's default.
SCENARIO_RUBRIC_SOURCES: frozenset[str] = EVAL_SOURCES | {"pool"}


class DataError(ModelsmithError):
    """Training data cannot be built (the message names the file or scenario at fault)."""


def completion_for(prompt: str, answer: str) -> str:
    """``answer`` as the model should write it after ``prompt``: a prompt that does not end
    in whitespace (``...Verdict:``) is followed by a space, so a label is its own
    word-initial token (`` ACCEPT``), as the tokenizer saw it in pre-training."""
    if not prompt or prompt[-1].isspace():
        return answer
    return " " + answer


@dataclass(frozen=True)
class TrainingRow:
    """One training example: the prompt the model sees and the answer the rubric wants.

    ``scenario_id`` names the suite scenario the row derives from (for generator and pool
    rows: the failed scenario it was made or picked for). The rubric that scores the row
    (in validation and as the GRPO reward) is :attr:`rubric` when the generator gave one,
    else the scenario's for eval and pool rows, else the suite's default
    (:attr:`rubric_from`).
    """

    id: str
    prompt: str
    input: str
    expected: Any
    source: str
    scenario_id: str
    rubric: list[dict[str, Any]] | None = None  # the row's own criteria (generator rows)

    @property
    def rubric_from(self) -> str:
        """``own``, ``scenario`` or ``suite``: whose rubric scores this row."""
        if self.rubric:
            return "own"
        return "scenario" if self.source in SCENARIO_RUBRIC_SOURCES else "suite"

    @property
    def answer(self) -> str:
        """The reference answer as text: a label or string as is, anything else as
        canonical JSON (keys sorted: the same answer however the row was read)."""
        from modelsmith.evaluation.references import reference_answer

        return reference_answer(self.expected)

    @property
    def completion(self) -> str:
        """The answer as the model should write it after the prompt (:func:`completion_for`)."""
        return completion_for(self.prompt, self.answer)

    def to_dict(self) -> dict[str, Any]:
        row = {**asdict(self), "completion": self.completion}
        if row["rubric"] is None:  # most rows: the file stays as it was
            del row["rubric"]
        return row

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingRow:
        """The row back from :meth:`to_dict` (``completion`` is derived, so ignored)."""
        return cls(**{name: data[name] for name in _ROW_FIELDS},
                   rubric=data.get("rubric"))


_ROW_FIELDS = ("id", "prompt", "input", "expected", "source", "scenario_id")


def dataset_jsonl(rows: Iterable[TrainingRow]) -> bytes:
    """The canonical JSONL of ``rows``: one row per line, in order, keys sorted."""
    return "".join(
        json.dumps(row.to_dict(), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        + "\n"
        for row in rows
    ).encode("utf-8")


def dataset_hash(rows: Iterable[TrainingRow]) -> str:
    """sha256 of :func:`dataset_jsonl`: the hash of the file :func:`write_dataset` writes."""
    return hashlib.sha256(dataset_jsonl(rows)).hexdigest()


def write_dataset(rows: Iterable[TrainingRow], path: Path | str) -> Path:
    """Write ``rows`` as canonical JSONL, atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dataset_jsonl(rows)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_dataset(path: Path | str) -> list[TrainingRow]:
    """Rows back from a file :func:`write_dataset` wrote; :class:`DataError` names the line
    of a bad one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the dataset: {exc}") from exc
    rows = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            rows.append(TrainingRow.from_dict(data))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{number}: not a training row: "
                            f"{type(exc).__name__}: {exc}") from exc
    return rows
