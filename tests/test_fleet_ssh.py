"""The ssh executor and probe against a real OpenSSH server on 127.0.0.1: the executor
contract (a job runs there with its output streamed, a stalled job is stopped on the remote
side, ...), a remote job dies with the process that started it, a host that goes down
mid-run is classified unreachable and the pool fails over to the next host."""

from __future__ import annotations

import sys
import textwrap
import time

import pytest

import sshd
from executor_contract import ExecutorContract
from modelsmith.fleet.executors import Job, LocalExecutor, SshExecutor
from modelsmith.fleet.executors.local import KILL_GRACE_S
from modelsmith.fleet.failures import JobEnd, classify, recovery
from modelsmith.fleet.probe import probe_all, probe_host, rank
from modelsmith.specs.clusters import Host
from processes import assert_gone

pytestmark = pytest.mark.skipif(not sshd.available(),
                                reason="needs OpenSSH's sshd (apt-get install openssh-server)")


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for the tests that leave it running."""
    with sshd.LocalSshd(tmp_path_factory.mktemp("sshd")) as running, \
            pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODELSMITH_SSH_CONFIG", str(running.config))
        yield running


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A server of the test's own, which it may stop."""
    with sshd.LocalSshd(tmp_path / "sshd") as running:
        monkeypatch.setenv("MODELSMITH_SSH_CONFIG", str(running.config))
        yield running


class TestSshExecutor(ExecutorContract):
    stall_timeout_s = 2.0
    # The remote watcher outlives a job that ended by its grace period, holding the session
    # open that long.
    end_grace_s = KILL_GRACE_S
    via_ssh = True

    @pytest.fixture
    def executor(self, shared_server):
        return SshExecutor("remote", shared_server.alias)


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_the_probe_reaches_the_host_over_ssh(shared_server):
    result = probe_host("remote", Host(kind="ssh", address=shared_server.alias), 10)
    assert result.up, result.reason
    assert result.cpus >= 1 and result.mem_free_mb > 0


def test_a_host_that_goes_down_mid_run_fails_over_to_the_next(server, tmp_path):
    started = tmp_path / "started"
    job = Job(py(f"""
        import pathlib, time
        pathlib.Path({str(started)!r}).touch()
        for i in range(600):
            print("step", i, flush=True)
            time.sleep(0.1)
    """), cwd=tmp_path, heartbeat_timeout_s=60)
    import threading

    def stop_when_started():
        while not started.exists():
            time.sleep(0.05)
        time.sleep(0.5)
        server.stop()

    threading.Thread(target=stop_when_started, daemon=True).start()
    result = SshExecutor("remote", server.alias).run(job)
    assert result.returncode == 255 and not result.stalled, result.log_tail
    diagnosis = classify(JobEnd(result.returncode, result.log_tail, via_ssh=True))
    assert diagnosis.failure_class == "host_unreachable"
    assert recovery(diagnosis, 1, batch_size=16, grad_accum=1).action == "next_host"

    # The pool, probed again: the ssh host is down, the local one takes the job.
    hosts = {"remote": Host(kind="ssh", address=server.alias), "local": Host(kind="local")}
    ranked = rank(probe_all(hosts, ["remote", "local"], 2.0))
    assert [r.host for r in ranked] == ["local"]
    again = LocalExecutor().run(Job(py("print('done')"), cwd=tmp_path))
    assert again.ok


def test_a_remote_job_dies_with_the_process_that_started_it(shared_server, tmp_path):
    """The loop is killed with SIGKILL mid-job: its ssh client dies with it, the remote
    watcher sees the connection's input end, and the remote job's process group goes."""
    import os
    import signal
    import subprocess

    pid_file = tmp_path / "job.pid"
    starter = tmp_path / "starter.py"
    starter.write_text(textwrap.dedent(f"""
        import sys
        from modelsmith.fleet.executors import Job, SshExecutor
        job = Job([sys.executable, "-c", "import os, time; "
                   "open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"],
                  cwd={str(tmp_path)!r})
        SshExecutor("remote", {shared_server.alias!r}).run(job)
    """))
    loop = subprocess.Popen([sys.executable, str(starter)], env=dict(os.environ))
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    remote = int(pid_file.read_text())
    os.kill(loop.pid, signal.SIGKILL)
    loop.wait()
    assert_gone(remote, 20, "the remote job outlived the process that started it")
