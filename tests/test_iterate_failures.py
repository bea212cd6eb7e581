"""Failures of real training runs inside the loop, each driven for real, each recovered:

- a job that stops making progress (the training process is frozen with SIGSTOP): the
  heartbeat watch kills it and it runs again;
- an SSH host that goes down mid-run (its sshd and connections killed): the run moves to
  the next host of the pool;
- a candidate's weights truncated on disk: the hash no longer matches the lineage, the
  checkpoint is discarded and the loop goes back one.

Each shows its ``TrainingFailed`` event (class, action) and a registered candidate after.
The out-of-memory recovery is driven with a real ``RLIMIT_AS`` in test_iterate_heal.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import sshd
from modelsmith.app import Modelsmith
from modelsmith.events.gitstore import GitEventStore
from modelsmith.iterate.loop import IterateLoop, LoopOptions
from modelsmith.iterate.progress import LoopProgress

OPTIONS = {"model": "tiny-test", "profile": "cpu-tiny", "target": 0.99}


@pytest.fixture
def fork(train_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", str(tmp_path / "remote"))
    return train_repo


def configure(repo: Path, **changes) -> None:
    path = repo / "config" / "clusters.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        config[key] = {**config.get(key, {}), **value}
    path.write_text(json.dumps(config, indent=2))


class Tap(LoopProgress):
    """The loop's progress, with a hook on each line a training job prints."""

    def __init__(self, on_job_line):
        super().__init__(max_iterations=3, emit=lambda _e: None)
        self.on_job_line = on_job_line

    def job_line(self, line: str) -> None:
        super().job_line(line)
        if line.startswith("progress "):
            self.on_job_line(line)


def job_pids(repo: Path) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"{repo}/.iterate/rtb-quality/jobs/"],
                           capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def failures_and_candidates(repo: Path) -> tuple[list[tuple], list[tuple]]:
    events = list(GitEventStore(repo).read("rtb-quality"))
    failed = [(e.data["failure_class"], e.data["action"], e.data["host"]) for e in events
              if e.type == "TrainingFailed"]
    registered = [(e.data["version"], e.data["lineage"]["base_model"],
                   e.data["lineage"]["host"]) for e in events
                  if e.type == "CandidateRegistered"]
    return failed, registered


def test_a_frozen_training_job_is_killed_and_resumes_from_its_checkpoint(fork):
    configure(fork, thresholds={"heartbeat_timeout_s": 20})
    path = fork / "config" / "clusters.json"
    config = json.loads(path.read_text())
    config["profiles"]["cpu-tiny-resumable"] = {**config["profiles"]["cpu-tiny"],
                                                "checkpoint_steps": 1}
    path.write_text(json.dumps(config))
    frozen: list[int] = []
    lines: list[str] = []

    def freeze(line: str) -> None:
        if not frozen and "phase=grpo step=2" in line:
            frozen.extend(job_pids(fork))
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)

    tap = Tap(freeze)
    tap.job_line = lambda line: (lines.append(line), Tap.job_line(tap, line))
    result = IterateLoop(Modelsmith.open(fork).loop_parts(), "rtb-quality",
                         LoopOptions(**{**OPTIONS, "profile": "cpu-tiny-resumable"},
                                     max_iterations=1),
                         progress=tap).run()
    assert frozen and result.reason == "budget" and result.candidate == "v1"
    # The second attempt skipped SFT and resumed GRPO from a checkpoint of the first.
    assert any(line.startswith("resuming from the finished SFT warm start")
               for line in lines), lines
    assert any(line.startswith("resuming grpo from ") for line in lines), lines
    failed, registered = failures_and_candidates(fork)
    assert failed == [("hang", "resume", "local")]
    assert registered == [("v1", "tiny-test", "local")]
    evidence = next(e for e in GitEventStore(fork).read("rtb-quality")
                    if e.type == "TrainingFailed").data["log_tail"]
    assert "no progress for 20 s" in evidence
    for pid in frozen:  # the frozen process was killed, not left behind
        assert not Path(f"/proc/{pid}").exists() or \
            "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


@pytest.mark.skipif(not sshd.available(),
                    reason="needs OpenSSH's sshd (apt-get install openssh-server)")
def test_an_ssh_host_that_goes_down_mid_run_hands_the_run_to_the_next(fork, tmp_path,
                                                                     monkeypatch):
    with sshd.LocalSshd(tmp_path / "a", alias="a") as a, \
            sshd.LocalSshd(tmp_path / "b", alias="b") as b:
        config = tmp_path / "ssh_config"
        config.write_text(a.config.read_text() + b.config.read_text())
        monkeypatch.setenv("MODELSMITH_SSH_CONFIG", str(config))
        configure(fork, hosts={"a": {"kind": "ssh", "address": "a"},
                               "b": {"kind": "ssh", "address": "b"}},
                  defaults={"training_hosts": ["a", "b"]})
        stopped: list[str] = []

        def serving(server) -> bool:
            assert server.process is not None
            return subprocess.run(["pgrep", "-P", str(server.process.pid)],
                                  capture_output=True).returncode == 0

        def stop_the_busy_host(_line: str) -> None:
            if not stopped:
                busy = next(s for s in (a, b) if serving(s))
                stopped.append(busy.alias)
                busy.stop()

        started = time.monotonic()
        result = IterateLoop(Modelsmith.open(fork).loop_parts(), "rtb-quality",
                             LoopOptions(**OPTIONS, max_iterations=1),
                             progress=Tap(stop_the_busy_host)).run()
        assert result.candidate == "v1" and stopped
        other = "b" if stopped == ["a"] else "a"
        failed, registered = failures_and_candidates(fork)
        assert failed == [("host_unreachable", "next_host", stopped[0])]
        assert registered == [("v1", "tiny-test", other)]
        assert time.monotonic() - started < 300
        assert job_pids(fork) == []


def test_a_truncated_checkpoint_is_discarded_and_the_loop_goes_back_one(fork):
    def truncate_v1(phase: str, iteration: int) -> None:
        if (phase, iteration) == ("reeval", 1):
            folder = fork / "models" / "rtb-quality" / "v1"
            # A LoRA profile's version is an adapter of the base; else full weights.
            weights = next(folder / name for name in ("adapter_model.safetensors",
                                                      "model.safetensors")
                           if (folder / name).is_file())
            with weights.open("r+b") as handle:
                handle.truncate(weights.stat().st_size // 2)

    result = IterateLoop(Modelsmith.open(fork).loop_parts(), "rtb-quality",
                         LoopOptions(**OPTIONS, max_iterations=3),
                         fail_after=truncate_v1).run()
    assert result.reason == "budget"
    assert [(r.iteration, r.candidate, r.discarded) for r in result.iterations] == [
        (1, "v1", None), (2, None, "v1"), (3, "v2", None)]
    failed, registered = failures_and_candidates(fork)
    assert failed == [("corrupt_checkpoint", "discard_checkpoint", "v1")]
    # Iteration 3 trained from the model before v1: the base.
    assert registered == [("v1", "tiny-test", "local"), ("v2", "tiny-test", "local")]
    evidence = next(e for e in GitEventStore(fork).read("rtb-quality")
                    if e.type == "TrainingFailed").data["log_tail"]
    assert "not the" in evidence and "recorded in its lineage" in evidence
