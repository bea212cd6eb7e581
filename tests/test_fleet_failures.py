"""Failure classification from what real failures print, and the recovery for each class.

The OOM case is produced for real: a Python process under an address-space limit
(``resource.RLIMIT_AS``) that tries to allocate more."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from modelsmith.fleet.failures import JobEnd, classify, recovery

OOM_CHILD = textwrap.dedent("""
    import resource
    limit = 512 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    blocks = [bytearray(64 * 1024 * 1024) for _ in range(64)]
""")


def test_a_process_that_runs_out_of_its_memory_limit_is_oom():
    done = subprocess.run([sys.executable, "-c", OOM_CHILD], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0
    diagnosis = classify(JobEnd(done.returncode, done.stderr))
    assert diagnosis.failure_class == "oom" and "MemoryError" in diagnosis.evidence


@pytest.mark.parametrize(("end", "expected"), [
    (JobEnd(1, "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
    (JobEnd(1, "RuntimeError: [enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
               "can't allocate memory: you tried to allocate 4294967296 bytes"), "oom"),
    (JobEnd(-signal.SIGKILL, ""), "oom"),
    # Ray's notice that it shortened the log is not a truncated checkpoint.
    (JobEnd(-signal.SIGKILL, "Job failed: last available logs (truncated to 20,000 chars):"
                             "\nabout to die"), "oom"),
    (JobEnd(1, "OSError: file model.safetensors is truncated"), "corrupt_checkpoint"),
    (JobEnd(255, "ssh: connect to host 10.0.0.7 port 22: Connection refused", via_ssh=True),
     "host_unreachable"),
    (JobEnd(255, "Connection to 10.0.0.7 closed by remote host.", via_ssh=True),
     "host_unreachable"),
    (JobEnd(1, "step 40", host_reachable=False), "host_unreachable"),
    (JobEnd(None, "step 12 ...", stalled=True), "hang"),
    (JobEnd(1, "safetensors_rust.SafetensorError: Error while deserializing header: "
               "HeaderTooLarge"), "corrupt_checkpoint"),
    (JobEnd(1, "_pickle.UnpicklingError: invalid load key, '\\x00'."), "corrupt_checkpoint"),
    (JobEnd(1, "ValueError: something nobody expected"), "unknown"),
    (JobEnd(-signal.SIGSEGV, ""), "unknown"),
])
def test_classes_from_what_failures_print(end, expected):
    diagnosis = classify(end)
    assert diagnosis.failure_class == expected
    assert diagnosis.evidence


def test_unknown_evidence_names_the_exit_and_the_last_line():
    assert classify(JobEnd(3, "a\nb\nlast words\n")).evidence == "exit 3: last words"
    assert classify(JobEnd(-signal.SIGSEGV, "")).evidence == "SIGSEGV"


def test_each_class_has_its_recovery():
    def act(end, attempt=1, batch=16, accum=1):
        return recovery(classify(end), attempt, batch_size=batch, grad_accum=accum)

    oom = act(JobEnd(1, "MemoryError"))
    assert oom.action == "halve_batch" and oom.detail == "batch 16 -> 8, grad_accum 1 -> 2"
    assert act(JobEnd(1, "MemoryError"), batch=1).action == "stop"
    assert act(JobEnd(255, "Connection refused", via_ssh=True)).action == "next_host"
    assert act(JobEnd(None, stalled=True)).action == "resume"
    assert act(JobEnd(1, "SafetensorError: x")).action == "discard_checkpoint"
    assert act(JobEnd(1, "ValueError"), attempt=1).action == "retry"
    assert act(JobEnd(1, "ValueError"), attempt=2).action == "stop"


def test_no_signal_is_classified_and_recovered_by_a_longer_completion_then_no_grpo():
    from modelsmith.training.trainers import NoSignalError

    def end(length: int, cap: int | None) -> JobEnd:
        error = NoSignalError(20, 1, 20, 0.0, length, cap, None)
        return JobEnd(1, f"progress phase=grpo step=20 reward=0\nerror: {error}\n")

    diagnosis = classify(end(4, 200))
    assert diagnosis.failure_class == "no_signal"
    assert "max_completion_length 4 (at most 200)" in diagnosis.evidence

    def act(job: JobEnd, attempt: int = 1) -> tuple[str, str]:
        chosen = recovery(classify(job), attempt, batch_size=16, grad_accum=1)
        return chosen.action, chosen.detail

    assert act(end(4, 200)) == ("double_completion", "max_completion_length 4 -> 8")
    assert act(end(150, 200)) == ("double_completion", "max_completion_length 150 -> 200")
    assert act(end(4, 200), attempt=2)[0] == "skip_grpo"  # a longer one did not help
    assert act(end(200, 200))[0] == "skip_grpo"  # already as long as the prompts allow
    assert act(end(4, None))[0] == "skip_grpo"  # no known cap: the length itself (4) is it
    # Words near it elsewhere are not this class.
    assert classify(JobEnd(1, "ValueError: no signal handler")).failure_class == "unknown"
