"""The iterate loop's own memory: ``.iterate/<specialist>/state.json`` and its lock.

The state file says where a loop is: which iteration, which phase, whether that phase
finished, and the ids the phases produced (evaluation events, dataset hash, training run,
candidate, host). It is rewritten at every phase change, atomically: the new content goes
to a temporary file in the same folder, is fsynced, renamed over the old one and the
folder is fsynced, so a crash at any instant leaves either the old state or the new one,
never a mixture. The event log stays the source of truth: a phase recorded as done whose
event is missing from the log is run again (the loop checks; this module only remembers).

One loop per specialist: :class:`LoopLock` holds an exclusive ``flock`` on
``.iterate/<specialist>/lock`` for the loop's lifetime. The kernel drops the lock when the
process dies, however it dies (SIGKILL included), so a crashed loop never blocks the next
one; a live one is named in the error (pid, host, start time).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer

from modelsmith.errors import ModelsmithError

#: The phases of one iteration, in order.
PHASES: tuple[str, ...] = ("eval", "extract", "generate", "validate", "train", "reeval",
                           "decide")
Phase = Literal["eval", "extract", "generate", "validate", "train", "reeval", "decide"]
STATE_DIR = ".iterate"
STATE_FILE = "state.json"
LOCK_FILE = "lock"
SCHEMA_VERSION = 1
#: A state file larger than this is not one this module wrote.
MAX_STATE_BYTES = 4 * 1024 * 1024


class StateError(ModelsmithError):
    """A state file that cannot be used, or a loop that is already running."""


def _now() -> datetime:
    return datetime.now(UTC)


class IterationRecord(BaseModel):
    """What one finished iteration measured."""

    model_config = ConfigDict(extra="forbid")
    iteration: int = Field(ge=1)
    candidate: str | None = None
    composite: float | None = None
    heldout: float | None = None
    eval_event: str | None = None
    duration_s: float | None = None
    discarded: str | None = None  # the model it could not train from (corrupt checkpoint)
    # What the loop steers by (never trained on): the dev or the unseen composite.
    decision_metric: str | None = None
    decision: float | None = None
    decision_n: int | None = None
    dataset_rows: int | None = None
    new_rows: int | None = None  # rows no earlier dataset of the chain had
    overfitting: str | None = None  # why the candidate is overfitting (never proposed)


class PhaseOutputs(BaseModel):
    """What the phases of the current iteration produced so far (each set by its phase)."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None  # the model this iteration evaluates and trains from
    eval_event: str | None = None  # eval: its EvalCompleted (or the previous re-evaluation)
    base_eval: str | None = None  # the base model's evaluation: the held-out gate's baseline
    previous_dataset: str | None = None  # the last iteration's dataset, rehearsed
    failures: int | None = None  # extract
    failed_scenarios: int | None = None
    rows_generated: int | None = None  # generate
    rows_hash: str | None = None
    dataset_hash: str | None = None  # validate
    dataset: str | None = None  # its path, relative to the work tree
    dataset_rows: int | None = None
    new_rows: int | None = None
    candidate: str | None = None  # train
    run_id: str | None = None
    host: str | None = None
    reeval_event: str | None = None  # reeval
    composite: float | None = None
    heldout: float | None = None
    decision_metric: str | None = None  # dev | unseen (None: the suite has too few)
    decision_value: float | None = None
    decision_n: int | None = None
    overfitting: str | None = None
    decision: str | None = None  # decide: continue, target, budget, no-gain, gate-failed, ...

    def to_dict(self) -> dict[str, Any]:
        """The outputs set so far (state.json and the loop's --json lines hold these)."""
        return self.model_dump(mode="json", exclude_none=True)


class IterateState(BaseModel):
    """Where a loop stands. ``phase`` is the current phase of ``iteration``; ``done`` says
    whether it finished (its outputs are in ``outputs``)."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = SCHEMA_VERSION
    specialist: str
    loop_id: str  # one per loop: the prefix of its replay-safe event ids
    iteration: int = Field(1, ge=1)
    phase: Phase = "eval"
    done: bool = False
    outputs: PhaseOutputs = Field(default_factory=PhaseOutputs)  # this iteration's so far
    history: list[IterationRecord] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)  # what the loop was started with
    host: str | None = None
    started_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)

    def advanced(self, phase: str, *, done: bool, **outputs: Any) -> IterateState:
        """A copy at ``phase`` (``done`` or just started) with ``outputs`` merged in."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r} (phases: {', '.join(PHASES)})")
        return self.model_copy(update={"phase": phase, "done": done,
                                       "outputs": PhaseOutputs.model_validate(
                                           {**self.outputs.to_dict(), **outputs}),
                                       "updated_at": _now()})

    def next_iteration(self, record: IterationRecord) -> IterateState:
        """A copy at the start of the next iteration, ``record`` appended to the history."""
        return self.model_copy(update={"iteration": self.iteration + 1, "phase": PHASES[0],
                                       "done": False, "outputs": PhaseOutputs(),
                                       "history": [*self.history, record],
                                       "updated_at": _now()})

    @field_serializer("outputs")
    def _outputs_set(self, outputs: PhaseOutputs) -> dict[str, Any]:
        return outputs.to_dict()

    def completed(self, phase: str) -> bool:
        """Whether ``phase`` of the current iteration finished."""
        index = PHASES.index(phase)
        current = PHASES.index(self.phase)
        return index < current or (index == current and self.done)


def state_dir(root: Path, specialist: str) -> Path:
    return Path(root) / STATE_DIR / specialist


def _ensure_folder(folder: Path) -> None:
    """Create ``folder``; ``.iterate/`` ignores itself in git (machine-local state)."""
    folder.mkdir(parents=True, exist_ok=True)
    ignore = folder.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# machine-local iterate loop state\n*\n", encoding="utf-8")


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash at any instant leaves the old content
    or the new, never a mixture: a temporary file in the same folder, fsync, rename, fsync
    of the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class StateFile:
    """``.iterate/<specialist>/state.json`` of one repository."""

    def __init__(self, root: Path, specialist: str) -> None:
        self.folder = state_dir(root, specialist)
        self.path = self.folder / STATE_FILE
        self.specialist = specialist

    def load(self) -> IterateState | None:
        """The saved state, or None when the loop never ran. A file that is not a state
        this module wrote raises :class:`StateError` naming the file and the field."""
        if not self.path.exists() and not self.path.is_symlink():
            return None
        if self.path.is_symlink() or not self.path.is_file():
            raise StateError(f"{self.path}: not a regular file; remove it to start afresh")
        size = self.path.stat().st_size
        if size > MAX_STATE_BYTES:
            raise StateError(f"{self.path}: {size} bytes is not a state file (limit "
                             f"{MAX_STATE_BYTES}); remove it to start afresh")
        try:
            data = json.loads(self.path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            line = getattr(exc, "lineno", None)
            where = f"{self.path}:{line}" if line else str(self.path)
            raise StateError(f"{where}: not valid JSON ({exc}); remove it to start "
                             "afresh") from None
        try:
            state = IterateState.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}"
                                 for e in exc.errors()[:5])
            raise StateError(f"{self.path}: {problems}") from None
        if state.specialist != self.specialist:
            raise StateError(f"{self.path}: specialist: {state.specialist!r} is not "
                             f"{self.specialist!r}")
        return state

    def save(self, state: IterateState) -> None:
        """Replace the file atomically (:func:`write_atomically`)."""
        _ensure_folder(self.folder)
        write_atomically(self.path, (state.model_dump_json(indent=2) + "\n").encode("utf-8"))

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class LoopLock:
    """An exclusive, crash-safe lock on one specialist's loop (``flock``)."""

    def __init__(self, root: Path, specialist: str) -> None:
        self.folder = state_dir(root, specialist)
        self.path = self.folder / LOCK_FILE
        self.specialist = specialist
        self._fd: int | None = None

    def holder(self) -> dict[str, Any] | None:
        """Who wrote the lock file last (pid, host, since), if readable."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        _ensure_folder(self.folder)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            who = self.holder() or {}
            raise StateError(
                f"another iterate loop holds {self.specialist} (pid {who.get('pid', '?')} on "
                f"{who.get('host', '?')}, since {who.get('since', '?')}); wait for it or "
                "stop it"
            ) from None
        mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": _now().isoformat()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, mine, 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LoopLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked(root: Path, specialist: str) -> Iterator[LoopLock]:
    """``with locked(root, name):`` — the loop's lock for the block."""
    with LoopLock(root, specialist) as lock:
        yield lock
