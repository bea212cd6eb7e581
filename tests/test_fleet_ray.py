"""The ray executor against a local Ray head (Ray Jobs): the executor contract (a job runs
with its folder, environment and output; a stalled job is stopped; a memory limit gives a
real OOM; ...), a run left behind by a submitter that died is stopped, a cluster that is not
there is an unreachable host."""

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

from executor_contract import ExecutorContract
from modelsmith.fleet.executors import Job, RayExecutor
from modelsmith.fleet.executors.local import stop_group
from modelsmith.fleet.failures import JobEnd, classify
from modelsmith.fleet.probe import probe_host
from modelsmith.specs.clusters import Host

RAY = Path(sys.executable).parent / "ray"
pytestmark = [
    pytest.mark.skipif(not RAY.exists(), reason="needs ray: pip install '.[ray]'"),
    # One worker runs them all, so one Ray head serves the module (pyproject: loadgroup).
    pytest.mark.xdist_group("ray-head"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster on 127.0.0.1, shared by the module (a Ray head takes seconds
    and memory to start, and half a minute to stop), of its own (its own ports and temp folder,
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


class TestRayExecutor(ExecutorContract):
    stall_timeout_s = 3.0
    host_preamble = True  # Ray logs the runtime env and the entrypoint first

    @pytest.fixture
    def executor(self, cluster):
        return RayExecutor("ray", cluster)


def test_a_run_left_behind_by_a_dead_submitter_is_stopped_first(cluster, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from modelsmith.fleet.executors.ssh import remote_script

    client = JobSubmissionClient(cluster)
    left = client.submit_job(entrypoint=remote_script(Job(py("""
        import time
        time.sleep(300)
    """), cwd=tmp_path), watch_stdin=False))
    while client.get_job_status(left) != JobStatus.RUNNING:
        time.sleep(0.2)
    result = RayExecutor("ray", cluster).run(Job(py("print('again')"), cwd=tmp_path))
    assert result.ok and f"stopped {left}" in result.log_tail
    assert client.get_job_status(left) in (JobStatus.STOPPED, JobStatus.FAILED)


def test_a_cluster_that_is_not_there_is_unreachable(tmp_path):
    result = RayExecutor("ray", f"127.0.0.1:{free_port()}").run(
        Job(py("print(1)"), cwd=tmp_path))
    assert not result.host_reachable and result.returncode is None
    assert classify(JobEnd(result.returncode, result.log_tail,
                           host_reachable=result.host_reachable)
                    ).failure_class == "host_unreachable"
