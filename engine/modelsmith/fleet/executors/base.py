"""What every executor takes and returns.

A :class:`Job` is a command line plus what watching it needs: a working folder, extra
environment, a memory limit, and the heartbeat rule — the job proves it is alive by
printing a line or touching its heartbeat file; an executor that sees neither for
``heartbeat_timeout_s`` kills it and says so (``stalled``). The :class:`JobResult` carries
what :func:`modelsmith.fleet.failures.classify` needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

#: Lines of output kept for the failure classifier and the TrainingFailed event.
LOG_TAIL_LINES = 60


@dataclass(frozen=True)
class Job:
    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    heartbeat: Path | None = None  # a file the job touches on progress (besides printing)
    heartbeat_timeout_s: float = 300.0
    memory_limit_mb: int | None = None  # address-space limit of the job (RLIMIT_AS)
    name: str = "job"
    # Give the job a stdin pipe that stays open while this process lives, and never write
    # to it: its end tells the job (an ssh session's remote side) that we are gone.
    # Otherwise the job's stdin is /dev/null.
    hold_stdin: bool = False


@dataclass(frozen=True)
class JobResult:
    returncode: int | None  # negative: the signal that ended it; None: never started
    log_tail: str
    stalled: bool  # killed by the executor: no heartbeat within the timeout
    seconds: float
    host: str
    via_ssh: bool = False
    host_reachable: bool = True  # False: the executor could not reach the host at all

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.stalled


LineFn = Callable[[str], None]


@runtime_checkable
class Executor(Protocol):
    """Runs a job on one host and watches it until it ends."""

    name: str

    def run(self, job: Job, on_line: LineFn | None = None) -> JobResult:
        """Run ``job`` to its end; ``on_line`` gets every output line as it comes."""
        ...
