"""Why a training job failed, and what to do about it.

:func:`classify` reads what a job left behind — exit status or the signal that ended it,
the tail of its log, whether the executor stopped it for want of a heartbeat, whether the
host answered — and names one class: ``oom``, ``host_unreachable``, ``hang``,
``corrupt_checkpoint``, ``no_signal`` or ``unknown``. :func:`recovery` maps a class and the
attempt number to an action the loop carries out:

- ``oom`` -> ``halve_batch``: half the batch, twice the gradient accumulation (the same
  effective batch); when the batch is already 1, ``stop``;
- ``host_unreachable`` -> ``next_host`` in the ranked pool;
- ``hang`` -> ``resume``: kill, and resume from the last good checkpoint;
- ``corrupt_checkpoint`` -> ``discard_checkpoint``: drop it and go back one;
- ``no_signal`` (GRPO's rewards did not vary: nothing to learn from) -> the first time
  ``double_completion`` (twice the ``max_completion_length`` the job reported, up to its
  cap: answers cut short all score alike), else ``skip_grpo`` (finish without GRPO);
- ``unknown`` -> ``retry`` once, then ``stop`` with the failure recorded.

Every decision comes with the evidence it rests on (the matched line), for the
``TrainingFailed`` event.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from typing import Literal

from modelsmith.events.types import FailureClass

Action = Literal["halve_batch", "next_host", "resume", "discard_checkpoint",
                 "double_completion", "skip_grpo", "retry", "stop"]

_OOM = re.compile(
    r"MemoryError|out of memory|OutOfMemoryError|Cannot allocate memory|std::bad_alloc"
    r"|can't allocate memory|DefaultCPUAllocator|Killed process \d+|oom-kill",
    re.IGNORECASE,
)
_UNREACHABLE = re.compile(
    r"Connection refused|Connection timed out|Operation timed out|No route to host"
    r"|Connection reset|Connection closed by|closed by remote host|Broken pipe"
    r"|Could not resolve hostname|Network is unreachable|Host is down|kex_exchange_identification",
    re.IGNORECASE,
)
_CORRUPT = re.compile(
    r"SafetensorError|Error while deserializing header|HeaderTooLarge|incomplete metadata"
    r"|invalid load key|unexpected EOF|PytorchStreamReader failed|checkpoint hash mismatch"
    # "truncated", but not a log collector saying it shortened the log (Ray's failure
    # message ends "last available logs (truncated to 20,000 chars)").
    r"|not a valid checkpoint|truncated(?! to [\d,]+ (?:chars|characters|bytes|lines))",
    re.IGNORECASE,
)
#: What a training job prints when GRPO stopped for want of a learning signal
#: (``modelsmith.training.trainers.NoSignalError``), and the completion length it reports.
_NO_SIGNAL = re.compile(r"no learning signal \(no_signal\)")
_COMPLETION = re.compile(r"max_completion_length (\d+) \(at most (\d+)\)")
#: ssh's own exit status when the connection (not the remote command) failed.
SSH_CONNECTION_FAILED = 255


@dataclass(frozen=True)
class JobEnd:
    """How a job ended, as its executor saw it."""

    returncode: int | None  # None: it never ended by itself (killed by the executor)
    log_tail: str = ""
    stalled: bool = False  # the executor killed it: no heartbeat within the timeout
    host_reachable: bool = True  # the host answered a probe after the failure
    via_ssh: bool = False

    @property
    def signal_name(self) -> str | None:
        if self.returncode is not None and self.returncode < 0:
            try:
                return signal.Signals(-self.returncode).name
            except ValueError:
                return f"signal {-self.returncode}"
        return None


@dataclass(frozen=True)
class Diagnosis:
    failure_class: FailureClass
    evidence: str  # the line or fact the class rests on


def _first_match(pattern: re.Pattern[str], text: str) -> str | None:
    for line in reversed(text.splitlines()):
        if pattern.search(line):
            return line.strip()[:300]
    return None


def classify(end: JobEnd) -> Diagnosis:
    """The failure class of a job that did not succeed (see the module docstring)."""
    if end.stalled:
        return Diagnosis("hang", "no progress heartbeat within the timeout; the job was killed")
    if not end.host_reachable:
        return Diagnosis("host_unreachable", "the host does not answer probes")
    if (line := _first_match(_NO_SIGNAL, end.log_tail)) is not None:
        return Diagnosis("no_signal", line)
    if (line := _first_match(_OOM, end.log_tail)) is not None:
        return Diagnosis("oom", line)
    if end.via_ssh and end.returncode == SSH_CONNECTION_FAILED:
        line = _first_match(_UNREACHABLE, end.log_tail)
        return Diagnosis("host_unreachable", line or "ssh exited 255: the connection failed")
    if (line := _first_match(_CORRUPT, end.log_tail)) is not None:
        return Diagnosis("corrupt_checkpoint", line)
    if end.signal_name == "SIGKILL":
        # Killed by someone else than us, with nothing in the log: the kernel's OOM killer
        # is the usual culprit on a training host.
        return Diagnosis("oom", "killed by SIGKILL without a message (the OOM killer?)")
    if (line := _first_match(_UNREACHABLE, end.log_tail)) is not None and end.via_ssh:
        return Diagnosis("host_unreachable", line)
    tail = end.log_tail.strip().splitlines()[-1:] or [""]
    how = end.signal_name or f"exit {end.returncode}"
    return Diagnosis("unknown", f"{how}: {tail[0][:300]}" if tail[0] else how)


@dataclass(frozen=True)
class Recovery:
    action: Action
    detail: str


def doubled_completion(evidence: str) -> tuple[int, int] | None:
    """The ``max_completion_length`` a ``no_signal`` failure reported and the one to retry
    with (twice as long, at most its cap); None when it reported none or was at its cap."""
    found = _COMPLETION.search(evidence)
    if found is None:
        return None
    current, cap = int(found.group(1)), int(found.group(2))
    return (current, min(2 * current, cap)) if current < cap else None


def recovery(diagnosis: Diagnosis, attempt: int, *, batch_size: int,
             grad_accum: int) -> Recovery:
    """What to do after ``attempt`` (1 = the first failure of this run) failed."""
    kind = diagnosis.failure_class
    if kind == "oom":
        if batch_size <= 1:
            return Recovery("stop", "out of memory at batch 1: this host cannot train it")
        return Recovery("halve_batch", f"batch {batch_size} -> {batch_size // 2}, "
                                       f"grad_accum {grad_accum} -> {grad_accum * 2}")
    if kind == "host_unreachable":
        return Recovery("next_host", "move the job to the next host in the pool")
    if kind == "hang":
        return Recovery("resume", "kill and resume from the last good checkpoint")
    if kind == "corrupt_checkpoint":
        return Recovery("discard_checkpoint", "drop the checkpoint and resume from the one "
                                              "before")
    if kind == "no_signal":
        doubled = doubled_completion(diagnosis.evidence)
        if attempt <= 1 and doubled is not None:
            return Recovery("double_completion", f"max_completion_length {doubled[0]} -> "
                                                 f"{doubled[1]}")
        return Recovery("skip_grpo", "no learning signal in GRPO: finish without it (sft+grpo "
                                     "keeps its SFT result, grpo the base weights)")
    if attempt <= 1:
        return Recovery("retry", "unknown failure: retry once")
    return Recovery("stop", "unknown failure twice: stopping with the failure recorded")
