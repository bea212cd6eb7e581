"""The ``ssh`` executor: the same job command on another machine, over OpenSSH.

The remote side runs ``cd CWD && ulimit -v ... && env K=V ARGV`` in the session sshd
creates for the command, after printing its pid; job inputs and outputs live on a shared
filesystem or move through DVC (the paths in the job are the same on both sides). Output
lines stream back and count as progress, as does the heartbeat file (read through the
shared filesystem). A stalled job is stopped by signalling its remote process group over a
second connection, then the local ssh process is ended.

The job never outlives the process that started it: beside the job, a watcher reads the
session's stdin, a pipe the local side holds open and never writes. When the local side
dies (a loop killed with SIGKILL takes its ssh client with it) the connection closes, the
watcher reads end-of-file and ends the job's remote process group (SIGTERM, then SIGKILL).
A remote job ended by a signal reports it as a signal (``-N``), as a local one does, not as
ssh's 255, which means the connection failed.

Connection settings come from OpenSSH itself: ``~/.ssh/config`` or the file named by
``$MODELSMITH_SSH_CONFIG`` (passed as ``ssh -F``), so keys, users, ports and jump hosts
are configured the way a team already does. ssh exits 255 when the connection fails or
drops: the failure classifier reads that as an unreachable host.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess

from modelsmith.fleet.probe import ssh_command

from .base import Job, JobResult, LineFn
from .local import KILL_GRACE_S, LocalExecutor

PID_MARK = "[modelsmith-job-pid]"


def remote_script(job: Job, *, watch_stdin: bool = True) -> str:
    """The shell line the remote side runs for ``job`` (see the module docstring).
    ``watch_stdin=False`` (Ray, which supervises its jobs itself) runs the job in place of
    the shell, without the watcher."""
    parts = [f"cd {shlex.quote(str(job.cwd))}", f'echo "{PID_MARK} $$"']
    if job.memory_limit_mb is not None:
        parts.append(f"ulimit -v {job.memory_limit_mb * 1024}")
    env = [f"{k}={v}" for k, v in job.env.items()]
    command = shlex.join(["env", *env, *job.argv] if env else job.argv)
    if not watch_stdin:
        return " && ".join([*parts, f"exec {command}"])
    watcher = (f"trap '' TERM; cat <&3 >/dev/null 2>&1; kill -TERM -- -$$ 2>/dev/null; "
               f"sleep {KILL_GRACE_S:g}; kill -KILL -- -$$ 2>/dev/null")
    parts.append(f"{{ exec 3<&0; {command} </dev/null & job=$!; ({watcher}) & watch=$!; "
                 f"wait $job; code=$?; kill $watch 2>/dev/null; exit $code; }}")
    return " && ".join(parts)


#: Exit codes the remote shell gives a job ended by signal N: 128 + N.
SIGNALLED = range(129, 129 + 64)


class SshExecutor:
    """Runs jobs on ``address`` (``[user@]host[:port]`` or a host alias of the ssh config)."""

    def __init__(self, name: str, address: str, *, connect_timeout_s: float = 5.0) -> None:
        self.name = name
        self.address = address
        self.connect_timeout_s = connect_timeout_s

    def _ssh(self, script: str) -> list[str]:
        return ssh_command(self.address, script, self.connect_timeout_s)

    def run(self, job: Job, on_line: LineFn | None = None) -> JobResult:
        remote_pid: list[int] = []

        def watch(line: str) -> None:
            if line.startswith(PID_MARK) and not remote_pid:
                remote_pid.append(int(line.split()[-1]))
                return
            if on_line is not None:
                on_line(line)

        local = Job(argv=self._ssh(remote_script(job)), cwd=job.cwd,
                    heartbeat=job.heartbeat, heartbeat_timeout_s=job.heartbeat_timeout_s,
                    name=job.name, hold_stdin=True)
        result = LocalExecutor(self.name).run(local, on_line=watch, on_stall=lambda: (
            self._stop_remote(remote_pid[0]) if remote_pid else None))
        tail = "\n".join(line for line in result.log_tail.splitlines()
                         if not line.startswith(PID_MARK))
        code = result.returncode
        if code in SIGNALLED:
            code = -(code - 128)
        return JobResult(code, tail, result.stalled, result.seconds, self.name, via_ssh=True)

    def _stop_remote(self, pid: int) -> None:
        """SIGTERM the remote job's process group, SIGKILL it after the grace period."""
        group = f"-{pid}"
        script = (f"kill -TERM -- {group} 2>/dev/null; sleep {KILL_GRACE_S:g}; "
                  f"kill -KILL -- {group} 2>/dev/null; true")
        # A host that is gone too has nothing left to stop.
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(self._ssh(script), capture_output=True, check=False,
                           timeout=KILL_GRACE_S + 3 * self.connect_timeout_s + 5)
