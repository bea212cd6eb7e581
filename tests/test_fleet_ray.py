"""The ray executor against a local Ray head (Ray Jobs): a job runs with its folder,
environment and output; a stalled job is stopped; a memory limit gives a real OOM; a
cluster that is not there is an unreachable host."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from modelsmith.fleet.executors import Job, RayExecutor
from modelsmith.fleet.executors.local import stop_group
from modelsmith.fleet.failures import JobEnd, classify
from modelsmith.fleet.probe import probe_host
from modelsmith.specs.clusters import Host
from processes import assert_gone

RAY = Path(sys.executable).parent / "ray"
pytestmark = pytest.mark.skipif(not RAY.exists(), reason="needs ray: pip install '.[ray]'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster():
    """A one-node Ray cluster on 127.0.0.1 of its own (its own ports and temp folder,
    stopped by ending its `ray start --block` process group: other Ray clusters on the
    machine are left alone); yields its job-submission address."""
    temp = Path("/tmp") / f"ray-{os.getpid()}"  # Ray needs a short socket path
    dashboard = free_port()
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={free_port()}",
         f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
         f"--dashboard-agent-listen-port={free_port()}", "--node-ip-address=127.0.0.1",
         "--num-cpus=1", "--include-dashboard=true", "--disable-usage-stats",
         f"--temp-dir={temp}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 180
        while not probe_host("ray", Host(kind="ray", address=address), 1).up:
            assert head.poll() is None and time.monotonic() < deadline, "ray did not start"
            time.sleep(0.5)
        yield address
    finally:
        stop_group(head, grace_s=60)  # `ray start --block` stops its processes on SIGTERM
        shutil.rmtree(temp, ignore_errors=True)


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_jobs_on_a_local_ray_cluster(cluster, tmp_path):
    """One cluster for every check (a Ray head takes seconds and memory to start)."""
    executor = RayExecutor("ray", cluster)

    # A job runs with its folder, environment and output.
    lines: list[str] = []
    job = Job(py("""
        import os
        print("hello from", os.getcwd(), os.environ["JOB_VAR"], flush=True)
    """), cwd=tmp_path, env={"JOB_VAR": "on ray"})
    result = executor.run(job, on_line=lines.append)
    assert result.ok, result.log_tail
    assert f"hello from {tmp_path} on ray" in lines and result.host == "ray"

    # A stalled job is stopped, and its process is gone.
    pid_file = tmp_path / "job.pid"
    job = Job(py(f"""
        import os, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        print("working", flush=True)
        time.sleep(300)
    """), cwd=tmp_path, heartbeat_timeout_s=3.0)
    result = executor.run(job)
    assert result.stalled and not result.ok
    assert classify(JobEnd(result.returncode, result.log_tail, stalled=True)
                    ).failure_class == "hang"
    assert_gone(int(pid_file.read_text()), 30, "the job outlived stop_job")

    # A run left behind by a submitter that died is stopped before the job runs again.
    from ray.job_submission import JobStatus, JobSubmissionClient

    from modelsmith.fleet.executors.ssh import remote_script

    client = JobSubmissionClient(cluster)
    left = client.submit_job(entrypoint=remote_script(Job(py("""
        import time
        time.sleep(300)
    """), cwd=tmp_path), watch_stdin=False))
    while client.get_job_status(left) != JobStatus.RUNNING:
        time.sleep(0.2)
    result = executor.run(Job(py("print('again')"), cwd=tmp_path))
    assert result.ok and f"stopped {left}" in result.log_tail
    assert client.get_job_status(left) in (JobStatus.STOPPED, JobStatus.FAILED)

    # A memory limit gives a real out-of-memory failure.
    job = Job(py("blocks = [bytearray(64 * 1024 * 1024) for _ in range(64)]"), cwd=tmp_path,
              memory_limit_mb=512)
    result = executor.run(job)
    assert not result.ok and result.returncode not in (0, None)
    assert classify(JobEnd(result.returncode, result.log_tail)).failure_class == "oom", \
        result.log_tail


def test_a_cluster_that_is_not_there_is_unreachable(tmp_path):
    result = RayExecutor("ray", f"127.0.0.1:{free_port()}").run(
        Job(py("print(1)"), cwd=tmp_path))
    assert not result.host_reachable and result.returncode is None
    assert classify(JobEnd(result.returncode, result.log_tail,
                           host_reachable=result.host_reachable)
                    ).failure_class == "host_unreachable"
