"""The local executor: output streamed and kept, a silent job stopped as stalled (its whole
process group), a heartbeat file keeps a quiet job alive, a memory limit yields a real OOM
that the classifier names."""

from __future__ import annotations

import sys
import textwrap
import time

from modelsmith.fleet.executors import Executor, Job, LocalExecutor
from modelsmith.fleet.failures import JobEnd, classify
from processes import assert_gone


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_a_job_runs_and_its_output_streams(tmp_path):
    executor = LocalExecutor()
    assert isinstance(executor, Executor)
    lines: list[str] = []
    result = executor.run(Job(py("""
        import os
        for i in range(3):
            print(f"step {i}", flush=True)
        print(os.getcwd(), os.environ["JOB_VAR"])
    """), cwd=tmp_path, env={"JOB_VAR": "set"}), on_line=lines.append)
    assert result.ok and result.returncode == 0 and not result.stalled
    assert lines == ["step 0", "step 1", "step 2", f"{tmp_path} set"]
    assert result.log_tail.splitlines()[-1] == f"{tmp_path} set" and result.host == "local"


def test_a_silent_job_is_stopped_with_its_children(tmp_path):
    marker = tmp_path / "child.pid"
    job = Job(py(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        open({str(marker)!r}, "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(300)
    """), cwd=tmp_path, heartbeat_timeout_s=1.0)
    started = time.monotonic()
    result = LocalExecutor().run(job)
    assert result.stalled and not result.ok and result.returncode is not None
    assert time.monotonic() - started < 60  # a hang guard, not a speed check
    assert "no progress for 1 s" in result.log_tail
    assert_gone(int(marker.read_text()), 5, "the job's child")  # it went with the group
    assert classify(JobEnd(result.returncode, result.log_tail,
                           stalled=result.stalled)).failure_class == "hang"


def test_a_heartbeat_file_keeps_a_quiet_job_alive(tmp_path):
    beat = tmp_path / "heartbeat"
    job = Job(py(f"""
        import pathlib, time
        beat = pathlib.Path({str(beat)!r})
        for _ in range(8):
            beat.touch()
            time.sleep(0.25)
    """), cwd=tmp_path, heartbeat=beat, heartbeat_timeout_s=1.0)
    result = LocalExecutor().run(job)
    assert result.ok, result.log_tail


def test_a_memory_limit_gives_a_real_oom(tmp_path):
    job = Job(py("""
        print("allocating", flush=True)
        blocks = [bytearray(64 * 1024 * 1024) for _ in range(64)]
    """), cwd=tmp_path, memory_limit_mb=512)
    result = LocalExecutor().run(job)
    assert result.returncode not in (0, None) and not result.stalled
    diagnosis = classify(JobEnd(result.returncode, result.log_tail))
    assert diagnosis.failure_class == "oom" and "MemoryError" in diagnosis.evidence


def test_a_command_that_cannot_start_is_reported(tmp_path):
    result = LocalExecutor().run(Job(["/nonexistent/trainer"], cwd=tmp_path))
    assert result.returncode is None and "cannot start" in result.log_tail
