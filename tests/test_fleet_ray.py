"""The ray executor against a local Ray head (Ray Jobs): the executor contract (a job runs
with its folder, environment and output; a stalled job is stopped; a memory limit gives a
real OOM; ...), the job reserves the host's resources and its lines stream once each, a job
the cluster cannot start is given up saying why (and does not run when it starts later), a
run left behind by a submitter that died is stopped, a cluster that is not there is an
unreachable host."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from executor_contract import ExecutorContract
from modelsmith.fleet.executors import Job, RayExecutor
from modelsmith.fleet.executors.local import stop_group
from modelsmith.fleet.executors.ray import CANCELLED, cancel_marker
from modelsmith.fleet.failures import JobEnd, classify
from modelsmith.fleet.probe import probe_host
from modelsmith.specs.clusters import Host

RAY = Path(sys.executable).parent / "ray"
CLUSTER_CPUS = 2
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
         f"--num-cpus={CLUSTER_CPUS}", "--include-dashboard=true", "--disable-usage-stats",
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


def submitted(client, name: str):
    """The job info of the one job submitted under ``Job(name=name)``."""
    [info] = [i for i in client.list_jobs() if (i.metadata or {}).get("modelsmith_job") == name]
    return info


def test_a_job_reserves_the_hosts_resources_and_streams_each_line_once(cluster, tmp_path,
                                                                      monkeypatch):
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors

    reads = []  # the whole log is never read: it streams
    whole_log = JobSubmissionClient.get_job_logs
    monkeypatch.setattr(JobSubmissionClient, "get_job_logs",
                        lambda self, job_id: reads.append(job_id) or whole_log(self, job_id))
    client = JobSubmissionClient(cluster)
    seen: list[str] = []
    reserved = []

    def on_line(line: str) -> None:
        seen.append(line)
        if line.startswith("step "):
            if not reserved:  # what the job's supervisor (it runs the entrypoint) holds
                job_id = submitted(client, "reserve").submission_id
                reserved.extend(a.required_resources for a in list_actors(
                    address=cluster, filters=[("state", "=", "ALIVE")], detail=True)
                    if a.name.endswith(job_id))
            (tmp_path / f"ack-{line.split()[1]}").touch()

    # Each step waits for the executor to have passed the one before on: lines stream.
    result = RayExecutor("ray", cluster, cpus=1, memory_mb=64).run(Job(py(f"""
        import pathlib, sys, time
        for i in range(3):
            print(f"step {{i}}", flush=True)
            ack, deadline = pathlib.Path({str(tmp_path)!r}) / f"ack-{{i}}", time.time() + 60
            while not ack.exists():
                if time.time() > deadline:
                    sys.exit(f"step {{i}} never reached the executor")
                time.sleep(0.1)
        print("done", end="")  # no newline: the last line still comes, once
    """), cwd=tmp_path, name="reserve"), on_line=on_line)
    assert result.ok, result.log_tail
    steps = [line for line in seen if line.startswith(("step ", "done"))]
    assert steps == ["step 0", "step 1", "step 2", "done"]
    assert reserved == [{"CPU": 1.0, "memory": 64 * 1024 * 1024}]
    metadata = submitted(client, "reserve").metadata
    assert (metadata["entrypoint_num_cpus"], metadata["entrypoint_memory"]) == (
        "1.0", str(64 * 1024 * 1024))
    assert reads == []


def test_a_job_asking_more_than_the_cluster_has_is_given_up_saying_so(cluster, tmp_path):
    result = RayExecutor("ray", cluster, cpus=CLUSTER_CPUS + 1).run(
        Job(py("print('ran')"), cwd=tmp_path, heartbeat_timeout_s=3, name="too-big"))
    assert (result.returncode, result.stalled, result.host_reachable) == (None, False, False)
    assert "did not start job modelsmith-too-big-" in result.log_tail
    assert f"entrypoint_num_cpus={CLUSTER_CPUS + 1}" in result.log_tail
    assert f"/{CLUSTER_CPUS}.0 CPU" in result.log_tail  # the cluster's size
    assert "waiting for resources" in result.log_tail  # Ray's word for it
    assert classify(JobEnd(result.returncode, result.log_tail,
                           host_reachable=result.host_reachable)
                    ).failure_class == "host_unreachable"  # the pool moves on


def test_a_job_given_up_while_the_cluster_was_busy_does_not_run_when_it_starts(cluster,
                                                                             tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(cluster)
    release = tmp_path / "release"
    busy = client.submit_job(entrypoint=shlex.join(py(f"""
        import pathlib, time
        while not pathlib.Path({str(release)!r}).exists():
            time.sleep(0.1)
    """)), entrypoint_num_cpus=CLUSTER_CPUS)
    try:
        while client.get_job_status(busy) != JobStatus.RUNNING:
            time.sleep(0.2)
        result = RayExecutor("ray", cluster).run(Job(py("open('ran', 'w')"), cwd=tmp_path,
                                                     heartbeat_timeout_s=3, name="waits"))
    finally:
        release.touch()
    assert result.returncode is None and not result.host_reachable, result.log_tail
    assert "entrypoint_num_cpus=1" in result.log_tail
    waited = submitted(client, "waits").submission_id
    assert cancel_marker(tmp_path, waited).exists()
    # Ray cannot cancel a waiting job: it starts once the cluster is free, and exits.
    deadline = time.monotonic() + 120
    while (status := client.get_job_status(waited)) not in (JobStatus.FAILED,
                                                             JobStatus.STOPPED):
        assert status != JobStatus.SUCCEEDED and time.monotonic() < deadline, status
        time.sleep(0.5)
    assert not (tmp_path / "ran").exists()
    info = client.get_job_info(waited)
    if status == JobStatus.FAILED and info.driver_exit_code is not None:
        # The guard ran (and took its marker) before the stop.
        assert info.driver_exit_code == CANCELLED, info.message
        assert not cancel_marker(tmp_path, waited).exists()
    # Else Ray stopped it, or failed it before its driver started (seen under load: FAILED
    # with no exit code): either way the work never ran, which is asserted above.


def test_the_host_entry_says_what_each_job_reserves():
    from modelsmith.fleet.pool import executor_for

    host = Host(kind="ray", address="ray-head:8265", gpus=1,
                job_resources={"cpus": 4, "memory_mb": 2048})
    assert executor_for("gpu", host).request == {
        "entrypoint_num_cpus": 4.0, "entrypoint_num_gpus": 1.0,  # gpus: the host's
        "entrypoint_memory": 2048 * 1024 * 1024}
    assert executor_for("plain", Host(kind="ray", address="ray-head:8265")).request == {
        "entrypoint_num_cpus": 1.0, "entrypoint_num_gpus": 0.0}
    with pytest.raises(ValidationError, match="job_resources applies to ray hosts only"):
        Host(kind="ssh", address="box", job_resources={"cpus": 2})
    with pytest.raises(ValidationError, match="asks for 2 GPUs, more than the host's gpus"):
        Host(kind="ray", address="ray-head:8265", gpus=1, job_resources={"gpus": 2})
