"""The ``local`` executor: the job as a subprocess of this machine.

The job runs in its own session (process group), so stopping it stops everything it
started. Its stdout and stderr are read line by line on a thread (each line is progress);
the heartbeat file's modification time counts as progress too. A job silent for
``heartbeat_timeout_s`` gets SIGTERM, then SIGKILL after a grace period, and its result
says ``stalled``. A memory limit is applied with ``RLIMIT_AS`` in the child before exec,
and the child is set to die with its parent (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from .base import LOG_TAIL_LINES, Job, JobResult, LineFn

#: Seconds between SIGTERM and SIGKILL when stopping a stalled job.
KILL_GRACE_S = 5.0
POLL_S = 0.1
#: prctl(2): the signal a child gets when the thread that forked it dies (Linux).
PR_SET_PDEATHSIG = 1


def _child_setup(limit_mb: int | None):
    """What the child does before exec: die with the process that started it (a loop
    killed with SIGKILL leaves no training job behind to race its resumed self), and apply
    the memory limit."""
    def apply() -> None:  # runs in the child, before exec
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if limit_mb is not None:
            limit = limit_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def stop_group(process: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the job's process group, SIGKILL it if still there after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class LocalExecutor:
    """Runs jobs on this machine."""

    def __init__(self, name: str = "local") -> None:
        self.name = name

    def run(self, job: Job, on_line: LineFn | None = None,
            on_stall: Callable[[], None] | None = None) -> JobResult:
        """Run ``job``; ``on_stall`` runs before a stalled job is stopped (the ssh
        executor stops the remote side there)."""
        started = time.monotonic()
        tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        last_progress = [time.time()]  # wall clock: comparable with the heartbeat's mtime
        try:
            process = subprocess.Popen(
                job.argv, cwd=job.cwd, env={**os.environ, **job.env},
                stdin=subprocess.PIPE if job.hold_stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                start_new_session=True, preexec_fn=_child_setup(job.memory_limit_mb),
            )
        except OSError as exc:
            return JobResult(None, f"cannot start {job.argv[0]}: {exc}", False,
                             time.monotonic() - started, self.name)

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                last_progress[0] = time.time()
                if on_line is not None:
                    on_line(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        stalled = False
        while process.poll() is None:
            time.sleep(POLL_S)
            beat = last_progress[0]
            if job.heartbeat is not None:
                with contextlib.suppress(OSError):
                    beat = max(beat, os.stat(job.heartbeat).st_mtime)
            if time.time() - beat > job.heartbeat_timeout_s:
                stalled = True
                tail.append(f"[executor] no progress for {job.heartbeat_timeout_s:g} s: "
                            "stopping the job")
                if on_stall is not None:
                    on_stall()
                stop_group(process)
                break
        process.wait()
        reader.join(timeout=5)
        if process.stdin is not None:
            process.stdin.close()
        return JobResult(process.returncode, "\n".join(tail), stalled,
                         time.monotonic() - started, self.name)
