"""The ``ray`` executor: the job submitted to a Ray cluster (Ray Jobs), the way a team
scales past one machine.

The host's address is the cluster's job-submission (dashboard) URL,
``http://HEAD:8265``. The entrypoint is the same shell line the ssh executor runs
(``cd CWD && ulimit -v ... && exec env K=V ARGV``): inputs and outputs are on a shared
filesystem or in DVC. The entrypoint reserves the host's ``job_resources``
(``entrypoint_num_cpus``, ``entrypoint_num_gpus``, ``entrypoint_memory``; 1 CPU by default),
so the trainer is scheduled like any Ray workload instead of running unaccounted on the head;
the request is also in the job's metadata (Ray's job info does not return it).

The log is followed with Ray's log tail (a websocket streaming each new chunk once, read in
a thread); the job's status is polled once a second. New log lines are progress, as is
the heartbeat file; a stalled job is stopped with ``stop_job``, and so is an unfinished job
in the same folder left by a submitter that died. A job the cluster does not start within
the heartbeat timeout (it waits for resources the cluster lacks or has busy) is given up:
the result names what it asked for and the cluster's usage, and counts as an unreachable
host (the pool moves on). Ray cannot cancel a job that waits: ``stop_job`` reaches it only
when it starts, so the executor also leaves a marker in the job's folder that makes such a
late start exit at once (status 125) without running the command. A cluster that cannot be
reached, before or during the run, is reported as an unreachable host. ``ray`` is imported
only here, only when a ray host runs a job (``pip install -e '.[ray]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import shlex
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from .base import LOG_TAIL_LINES, Job, JobResult, LineFn
from .ssh import PID_MARK, remote_script

#: Seconds between status polls (the log itself streams).
POLL_S = 1.0
#: Exit status reported for a job Ray stopped (as if by SIGTERM).
STOPPED = -15
#: Exit status of a job that started after the executor gave up on it (see the docstring).
CANCELLED = 125
#: Times the log tail is reopened after its connection broke while the cluster answers.
TAIL_REOPENS = 5


def job_url(address: str) -> str:
    """The job-submission URL for a host address (``http://`` assumed when missing)."""
    return address if "://" in address else f"http://{address}"


def cancel_marker(cwd: Path, submission_id: str) -> Path:
    """The file that makes a late start of job ``submission_id`` exit without running."""
    return Path(cwd) / f".modelsmith-cancelled-{submission_id}"


def entrypoint(job: Job, submission_id: str) -> str:
    """The job's shell line: ``remote_script``, first checking (and removing) its cancel
    marker."""
    marker = shlex.quote(str(cancel_marker(job.cwd, submission_id)))
    guard = (f"if rm {marker} 2>/dev/null; then echo 'cancelled: this job was given up "
             f"while it waited to start'; exit {CANCELLED}; fi")
    prefix = f"cd {shlex.quote(str(job.cwd))} && "
    script = remote_script(job, watch_stdin=False)
    assert script.startswith(prefix)
    return f"{prefix}{guard} && {script[len(prefix):]}"


class RayExecutor:
    """Runs jobs on the Ray cluster at ``address``; each job reserves ``cpus``, ``gpus`` and
    ``memory_mb`` there."""

    def __init__(self, name: str, address: str, *, cpus: float = 1, gpus: float = 0,
                 memory_mb: int | None = None) -> None:
        self.name = name
        self.address = job_url(address)
        self.request: dict[str, Any] = {"entrypoint_num_cpus": float(cpus),
                                        "entrypoint_num_gpus": float(gpus)}
        if memory_mb is not None:
            self.request["entrypoint_memory"] = memory_mb * 1024 * 1024

    def _unreachable(self, started: float, why: object) -> JobResult:
        return JobResult(None, f"ray cluster at {self.address} unreachable: {why}", False,
                         time.monotonic() - started, self.name, host_reachable=False)

    @staticmethod
    def _stop_leftovers(client: object, job: Job, status: object) -> list[str]:
        """Stop the cluster's unfinished jobs that run in ``job``'s folder: runs of this
        job whose submitter died (a loop killed mid-run), which would race the new one.
        One still waiting to start gets its cancel marker too."""
        prefix = f"cd {shlex.quote(str(job.cwd))} && "
        live = {status.PENDING, status.RUNNING}  # type: ignore[attr-defined]
        stopped = []
        for info in client.list_jobs():  # type: ignore[attr-defined]
            if info.status in live and (info.entrypoint or "").startswith(prefix):
                with contextlib.suppress(Exception):
                    if info.status == status.PENDING:  # type: ignore[attr-defined]
                        cancel_marker(job.cwd, str(info.submission_id)).touch()
                    client.stop_job(info.submission_id)  # type: ignore[attr-defined]
                    stopped.append(str(info.submission_id))
        return stopped

    def describe_request(self) -> str:
        return ", ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                         for key, value in self.request.items())

    def run(self, job: Job, on_line: LineFn | None = None) -> JobResult:
        started = time.monotonic()
        try:
            from ray.job_submission import JobStatus, JobSubmissionClient
        except ImportError as exc:
            return JobResult(None, f"the ray executor needs ray: pip install "
                                   f"-e '.[ray]' ({exc})", False, 0.0, self.name)
        job_id = f"modelsmith-{job.name}-{uuid.uuid4().hex[:8]}"
        # The SDK logs each closed log tail at INFO.
        logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)
        try:
            client = JobSubmissionClient(self.address)
            leftovers = self._stop_leftovers(client, job, JobStatus)
            client.submit_job(
                entrypoint=entrypoint(job, job_id), submission_id=job_id,
                metadata={"modelsmith_job": job.name,
                          **{key: str(value) for key, value in self.request.items()}},
                **self.request,
            )
        except Exception as exc:  # connection errors come in many types
            return self._unreachable(started, exc)
        lines: list[str] = [f"[executor] stopped {left}, a run of this job left behind by "
                            "a process that died" for left in leftovers]
        watch = _Watch(client, job_id, job, JobStatus, lines, on_line)
        try:
            status = watch.follow()
        except _ClusterGone as gone:
            return self._unreachable(started, gone.cause)
        if status is None:  # it never started
            marker = cancel_marker(job.cwd, job_id)
            marker.touch()
            with contextlib.suppress(Exception):
                client.stop_job(job_id)
                if client.get_job_status(job_id) != JobStatus.PENDING:
                    marker.unlink(missing_ok=True)  # it started meanwhile: stopped instead
            lines.append(f"[executor] the cluster did not start job {job_id} within "
                         f"{job.heartbeat_timeout_s:g} s: it asks for "
                         f"{self.describe_request()}{_usage(self.address)}; "
                         f"Ray says: {_message(client, job_id)}")
            return JobResult(None, "\n".join(lines[-LOG_TAIL_LINES:]), False,
                             time.monotonic() - started, self.name, host_reachable=False)
        code = _exit_code(client, job_id, status, JobStatus, lines)
        return JobResult(code, "\n".join(lines[-LOG_TAIL_LINES:]), watch.stalled,
                         time.monotonic() - started, self.name)


class _ClusterGone(Exception):
    """The cluster stopped answering while a job ran."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


_END = object()


class _Tail:
    """Ray's log tail of one job in a thread of its own: each chunk goes to ``out`` once,
    the first ``skip`` characters (already delivered by an earlier tail) left out; then
    ``_END``, or the exception that broke it."""

    def __init__(self, client: Any, job_id: str, skip: int, out: queue.Queue) -> None:
        self.client, self.job_id, self.skip, self.out = client, job_id, skip, out
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None
        threading.Thread(target=self._run, daemon=True, name=f"tail {job_id}").start()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
            self.out.put(_END)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # the connection broke
            self.out.put(exc)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        skip = self.skip
        async for chunk in self.client.tail_job_logs(self.job_id):
            if skip:
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
            if chunk:
                self.out.put(chunk)

    def cancel(self) -> None:
        if self.loop is not None and self.task is not None:
            with contextlib.suppress(RuntimeError):  # its loop has ended
                self.loop.call_soon_threadsafe(self.task.cancel)


class _Watch:
    """Watches one job to its end: each new complete log line goes to ``lines`` and
    ``on_line`` and counts as progress; a job without progress for its heartbeat timeout
    is stopped (``stalled``), one that has not started by then is given up."""

    def __init__(self, client: Any, job_id: str, job: Job, job_status: Any,
                 lines: list[str], on_line: LineFn | None) -> None:
        self.client, self.job_id, self.job, self.lines, self.on_line = (
            client, job_id, job, lines, on_line)
        self.finished = {job_status.SUCCEEDED, job_status.FAILED, job_status.STOPPED}
        self.pending = job_status.PENDING
        self.stalled = False
        self.delivered = 0  # characters of the log received
        self.partial = ""  # the last line, until its newline comes

    def _status(self) -> Any:
        try:
            return self.client.get_job_status(self.job_id)
        except Exception as exc:  # the cluster went away
            raise _ClusterGone(exc) from exc

    def _take(self, chunk: str) -> None:
        self.delivered += len(chunk)
        *complete, self.partial = (self.partial + chunk).split("\n")
        for line in complete:
            self._emit(line)

    def _emit(self, line: str) -> None:
        if line.startswith(PID_MARK):
            return
        self.lines.append(line)
        if self.on_line is not None:
            self.on_line(line)

    def follow(self) -> Any:
        """The job's final status; None when it never started within the timeout."""
        chunks: queue.Queue = queue.Queue()
        tail = _Tail(self.client, self.job_id, 0, chunks)
        reopened = 0
        last_progress = time.time()
        next_poll = 0.0
        status = self.pending
        try:
            while True:
                try:
                    item = chunks.get(timeout=POLL_S)
                except queue.Empty:
                    item = None
                if isinstance(item, str):
                    self._take(item)
                    last_progress = time.time()
                    continue  # drain what came before polling
                if item is not None:  # the tail ended (_END) or broke
                    status = self._status()
                    if status in self.finished:
                        break
                    if reopened >= TAIL_REOPENS:
                        raise _ClusterGone(item if isinstance(item, Exception) else
                                           RuntimeError("the log tail keeps closing"))
                    reopened += 1
                    tail = _Tail(self.client, self.job_id, self.delivered, chunks)
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + POLL_S
                    status = self._status()
                quiet = time.time() - _last_beat(self.job, last_progress)
                if quiet > self.job.heartbeat_timeout_s and not self.stalled:
                    if status == self.pending and not self.delivered:
                        return None
                    self.stalled = True
                    self.lines.append(f"[executor] no progress for "
                                      f"{self.job.heartbeat_timeout_s:g} s: stopping the job")
                    with contextlib.suppress(Exception):
                        self.client.stop_job(self.job_id)
        finally:
            tail.cancel()
        if self.partial:
            self._emit(self.partial)
            self.partial = ""
        return status


def _message(client: Any, job_id: str) -> str:
    try:
        return client.get_job_info(job_id).message or "(no message)"
    except Exception as exc:  # the cluster went away meanwhile
        return f"(no job info: {exc})"


def _usage(address: str) -> str:
    """The cluster's resource usage as its dashboard reports it (``used/total`` per
    resource), or nothing when it does not say."""
    with contextlib.suppress(Exception):
        with urllib.request.urlopen(f"{address}/api/cluster_status", timeout=5) as response:
            status = json.load(response)["data"]["autoscalingStatus"]
        for line in status.splitlines():
            if "ResourceUsage:" in line:
                return f" (the cluster uses {line.split('ResourceUsage:', 1)[1].strip()})"
    return ""


def _last_beat(job: Job, last_output: float) -> float:
    """When the job last showed progress: its last output line or its heartbeat file's
    modification, whichever is later."""
    beat = last_output
    if job.heartbeat is not None:
        with contextlib.suppress(OSError):
            beat = max(beat, os.stat(job.heartbeat).st_mtime)
    return beat


def _exit_code(client: Any, job_id: str, status: Any, job_status: Any,
               lines: list[str]) -> int | None:
    """The job's exit status from how it finished; Ray's message for a failed job is
    added to ``lines``."""
    if status == job_status.SUCCEEDED:
        return 0
    if status == job_status.STOPPED:
        return STOPPED
    info = client.get_job_info(job_id)
    code = getattr(info, "driver_exit_code", None)
    if info.message:
        lines.append(f"[ray] {info.message}")
    return 1 if code in (None, 0) else code
