"""One contract for every Executor: the local, ssh and ray executors all pass it.

Each subclass provides an ``executor`` fixture (its host started once per module: sshd and
a Ray head are slow to start) and says how long a silent job may take there before it
counts as stalled."""

from __future__ import annotations

import sys
import textwrap
import time

from modelsmith.fleet.executors import Executor, Job
from modelsmith.fleet.executors.base import LOG_TAIL_LINES
from modelsmith.fleet.executors.ssh import PID_MARK
from modelsmith.fleet.failures import JobEnd, classify
from processes import assert_gone


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def diagnose(result) -> str:
    """The failure class the classifier gives ``result``."""
    return classify(JobEnd(result.returncode, result.log_tail, stalled=result.stalled,
                           via_ssh=result.via_ssh,
                           host_reachable=result.host_reachable)).failure_class


class ExecutorContract:
    """Subclasses provide the ``executor`` fixture and the attributes below; every test
    here holds for every executor."""

    #: Heartbeat timeout of the stall tests: long enough for the host to start a job.
    stall_timeout_s: float = 1.0
    #: How long the host may stay silent after the job's last output before the run ends.
    end_grace_s: float = 0.0
    #: Whether results say the job ran over ssh.
    via_ssh: bool = False
    #: Whether the host streams lines of its own before the job's (Ray's job supervisor).
    host_preamble: bool = False

    def test_a_job_runs_in_its_folder_with_its_environment_and_output(self, executor,
                                                                      tmp_path):
        assert isinstance(executor, Executor)
        lines: list[str] = []
        result = executor.run(Job(py("""
            import os
            for i in range(100):
                print(f"step {i}", flush=True)
            print(os.getcwd(), os.environ["JOB_VAR"])
        """), cwd=tmp_path, env={"JOB_VAR": "set"}), on_line=lines.append)
        assert result.ok and result.returncode == 0 and not result.stalled, result.log_tail
        expected = [f"step {i}" for i in range(100)] + [f"{tmp_path} set"]
        # Every line streams, in order; the result keeps the last ones.
        assert lines[len(lines) - len(expected):] == expected
        if not self.host_preamble:
            assert lines == expected
        assert result.log_tail.splitlines() == expected[-LOG_TAIL_LINES:]
        assert PID_MARK not in result.log_tail
        assert (result.host, result.via_ssh, result.host_reachable) == (
            executor.name, self.via_ssh, True)
        assert result.seconds > 0

    def test_a_silent_job_is_stopped_with_its_children(self, executor, tmp_path):
        job_pid, child_pid = tmp_path / "job.pid", tmp_path / "child.pid"
        job = Job(py(f"""
            import os, subprocess, sys, time
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
            open({str(child_pid)!r}, "w").write(str(child.pid))
            open({str(job_pid)!r}, "w").write(str(os.getpid()))
            print("started", flush=True)
            time.sleep(300)
        """), cwd=tmp_path, heartbeat_timeout_s=self.stall_timeout_s)
        started = time.monotonic()
        result = executor.run(job)
        assert time.monotonic() - started < 60  # a hang guard, not a speed check
        assert result.stalled and not result.ok and result.returncode is not None
        assert f"no progress for {self.stall_timeout_s:g} s" in result.log_tail
        assert diagnose(result) == "hang"
        assert_gone(int(job_pid.read_text()), 30, "the stalled job")
        assert_gone(int(child_pid.read_text()), 30, "the stalled job's child")

    def test_a_heartbeat_file_keeps_a_quiet_job_alive(self, executor, tmp_path):
        beat = tmp_path / "heartbeat"
        # Room for the host to start and to end the job, and a quiet spell longer than that.
        timeout_s = self.stall_timeout_s + self.end_grace_s + 1.0
        job = Job(py(f"""
            import pathlib, time
            print("started", flush=True)
            beat = pathlib.Path({str(beat)!r})
            for _ in range({round((timeout_s + 1) / 0.25)}):
                beat.touch()
                time.sleep(0.25)
        """), cwd=tmp_path, heartbeat=beat, heartbeat_timeout_s=timeout_s)
        result = executor.run(job)
        assert result.ok, result.log_tail

    def test_a_memory_limit_gives_a_real_oom(self, executor, tmp_path):
        job = Job(py("""
            print("allocating", flush=True)
            blocks = [bytearray(64 * 1024 * 1024) for _ in range(64)]
        """), cwd=tmp_path, memory_limit_mb=512)
        result = executor.run(job)
        assert result.returncode not in (0, None) and not result.stalled
        diagnosis = classify(JobEnd(result.returncode, result.log_tail, via_ssh=result.via_ssh))
        assert diagnosis.failure_class == "oom" and "MemoryError" in diagnosis.evidence, \
            result.log_tail

    def test_a_job_ended_by_a_signal_reports_the_signal(self, executor, tmp_path):
        job = Job(py("import os, signal; print('about to die', flush=True); "
                     "os.kill(os.getpid(), signal.SIGKILL)"), cwd=tmp_path)
        result = executor.run(job)
        assert result.returncode == -9, result
        assert diagnose(result) == "oom"  # SIGKILL: what the kernel's OOM killer sends

    def test_a_command_that_cannot_start_fails_naming_it(self, executor, tmp_path):
        result = executor.run(Job(["/nonexistent/trainer"], cwd=tmp_path))
        assert not result.ok and not result.stalled
        assert "/nonexistent/trainer" in result.log_tail
