"""The ``ray`` executor: the job submitted to a Ray cluster (Ray Jobs), the way a team
scales past one machine.

The host's address is the cluster's job-submission (dashboard) URL,
``http://HEAD:8265``. The entrypoint is the same shell line the ssh executor runs
(``cd CWD && ulimit -v ... && exec env K=V ARGV``): inputs and outputs are on a shared
filesystem or in DVC. The executor polls the job's status and logs: new log lines are
progress, as is the heartbeat file; a stalled job is stopped with ``stop_job``, and so is
an unfinished job in the same folder left by a submitter that died. A
cluster that cannot be reached, before or during the run, is reported as an unreachable
host. ``ray`` is imported only here, only when a ray host runs a job
(``pip install -e '.[ray]'``).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
import uuid
from typing import Any

from .base import LOG_TAIL_LINES, Job, JobResult, LineFn
from .ssh import PID_MARK, remote_script

POLL_S = 0.25
#: Exit status reported for a job Ray stopped (as if by SIGTERM).
STOPPED = -15


def job_url(address: str) -> str:
    """The job-submission URL for a host address (``http://`` assumed when missing)."""
    return address if "://" in address else f"http://{address}"


class RayExecutor:
    """Runs jobs on the Ray cluster at ``address``."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = job_url(address)

    def _unreachable(self, started: float, why: object) -> JobResult:
        return JobResult(None, f"ray cluster at {self.address} unreachable: {why}", False,
                         time.monotonic() - started, self.name, host_reachable=False)

    @staticmethod
    def _stop_leftovers(client: object, job: Job, status: object) -> list[str]:
        """Stop the cluster's unfinished jobs that run in ``job``'s folder: runs of this
        job whose submitter died (a loop killed mid-run), which would race the new one."""
        prefix = f"cd {shlex.quote(str(job.cwd))} && "
        live = {status.PENDING, status.RUNNING}  # type: ignore[attr-defined]
        stopped = []
        for info in client.list_jobs():  # type: ignore[attr-defined]
            if info.status in live and (info.entrypoint or "").startswith(prefix):
                with contextlib.suppress(Exception):
                    client.stop_job(info.submission_id)  # type: ignore[attr-defined]
                    stopped.append(str(info.submission_id))
        return stopped

    def run(self, job: Job, on_line: LineFn | None = None) -> JobResult:
        started = time.monotonic()
        try:
            from ray.job_submission import JobStatus, JobSubmissionClient
        except ImportError as exc:
            return JobResult(None, f"the ray executor needs ray: pip install "
                                   f"-e '.[ray]' ({exc})", False, 0.0, self.name)
        try:
            client = JobSubmissionClient(self.address)
            leftovers = self._stop_leftovers(client, job, JobStatus)
            job_id = client.submit_job(
                entrypoint=remote_script(job, watch_stdin=False),
                submission_id=f"modelsmith-{job.name}-{uuid.uuid4().hex[:8]}",
            )
        except Exception as exc:  # connection errors come in many types
            return self._unreachable(started, exc)
        lines: list[str] = [f"[executor] stopped {left}, a run of this job left behind by "
                            "a process that died" for left in leftovers]
        finished = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
        try:
            status, stalled = _follow(client, job_id, job, finished, lines, on_line)
        except _ClusterGone as gone:
            return self._unreachable(started, gone.cause)
        code = _exit_code(client, job_id, status, JobStatus, lines)
        return JobResult(code, "\n".join(lines[-LOG_TAIL_LINES:]), stalled,
                         time.monotonic() - started, self.name)


class _ClusterGone(Exception):
    """The cluster stopped answering while a job ran."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _poll(client: Any, job_id: str) -> tuple[Any, str]:
    """The job's status and its whole log so far."""
    try:
        return client.get_job_status(job_id), client.get_job_logs(job_id)
    except Exception as exc:  # the cluster went away
        raise _ClusterGone(exc) from exc


def _follow(client: Any, job_id: str, job: Job, finished: set[Any], lines: list[str],
            on_line: LineFn | None) -> tuple[Any, bool]:
    """Watch the job to its end: each new complete log line goes to ``lines`` and
    ``on_line`` and counts as progress; a job without progress for its heartbeat timeout is
    stopped. Returns the final status and whether the job stalled."""
    seen = 0
    last_progress = time.time()
    stalled = False
    while True:
        status, logs = _poll(client, job_id)
        if status in finished:
            logs = _settled(client, job_id, logs)
        fresh = logs[seen:]
        complete = fresh[: fresh.rfind("\n") + 1] if status not in finished else fresh
        seen += len(complete)
        for line in complete.splitlines():
            if line.startswith(PID_MARK):
                continue
            lines.append(line)
            last_progress = time.time()
            if on_line is not None:
                on_line(line)
        if status in finished:
            return status, stalled
        if not stalled and time.time() - _last_beat(job, last_progress) > \
                job.heartbeat_timeout_s:
            stalled = True
            lines.append(f"[executor] no progress for {job.heartbeat_timeout_s:g} s: "
                         "stopping the job")
            with contextlib.suppress(Exception):
                client.stop_job(job_id)
        time.sleep(POLL_S)


def _settled(client: Any, job_id: str, logs: str, attempts: int = 20) -> str:
    """A finished job's whole log: Ray reports the end before its log agent has caught
    up (on a loaded machine the last lines come a moment later), so read again until two
    reads agree (at most ``attempts`` polls)."""
    for _ in range(attempts):
        time.sleep(POLL_S)
        try:
            again = client.get_job_logs(job_id)
        except Exception as exc:  # the cluster went away
            raise _ClusterGone(exc) from exc
        if again == logs:
            return logs
        logs = again
    return logs


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
