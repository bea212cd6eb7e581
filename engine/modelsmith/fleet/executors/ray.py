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
(``pip install 'modelsmith[ray]'``).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
import uuid

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
                                   f"'modelsmith[ray]' ({exc})", False, 0.0, self.name)
        try:
            client = JobSubmissionClient(self.address)
            leftovers = self._stop_leftovers(client, job, JobStatus)
            job_id = client.submit_job(
                entrypoint=remote_script(job, watch_stdin=False),
                submission_id=f"modelsmith-{job.name}-{uuid.uuid4().hex[:8]}",
            )
        except Exception as exc:  # connection errors come in many types
            return self._unreachable(started, exc)
        finished = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
        seen = 0
        lines: list[str] = [f"[executor] stopped {job_id}, a run of this job left behind by "
                            "a process that died" for job_id in leftovers]
        last_progress = time.time()
        stalled = False
        status = JobStatus.PENDING
        while True:
            try:
                status = client.get_job_status(job_id)
                logs = client.get_job_logs(job_id)
            except Exception as exc:  # the cluster went away
                return self._unreachable(started, exc)
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
                break
            beat = last_progress
            if job.heartbeat is not None:
                with contextlib.suppress(OSError):
                    beat = max(beat, os.stat(job.heartbeat).st_mtime)
            if not stalled and time.time() - beat > job.heartbeat_timeout_s:
                stalled = True
                lines.append(f"[executor] no progress for {job.heartbeat_timeout_s:g} s: "
                             "stopping the job")
                with contextlib.suppress(Exception):
                    client.stop_job(job_id)
            time.sleep(POLL_S)
        if status == JobStatus.SUCCEEDED:
            code: int | None = 0
        elif status == JobStatus.STOPPED:
            code = STOPPED
        else:
            info = client.get_job_info(job_id)
            code = getattr(info, "driver_exit_code", None)
            code = 1 if code in (None, 0) else code
            if info.message:
                lines.append(f"[ray] {info.message}")
        return JobResult(code, "\n".join(lines[-LOG_TAIL_LINES:]), stalled,
                         time.monotonic() - started, self.name)
