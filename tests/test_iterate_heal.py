"""Self-healing training on the host pool, driven by real failures of a stand-in job.

The stand-in reads the real job spec and behaves like a trainer whose memory grows with the
batch: it allocates ``batch_size`` x 48 MB under the executor's real address-space limit,
prints progress, touches its heartbeat and writes the weights folder and result file. A
control file makes its first run hang or fail in other ways. The training job itself is
tested in test_training_job.py; here the recovery loop is under test."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from modelsmith.fleet.pool import NoHostError, Pool
from modelsmith.iterate.heal import (
    CheckpointDiscarded,
    TrainingAbandoned,
    halved,
    run_training,
)
from modelsmith.specs.clusters import Host, HyperParams
from modelsmith.training.job import TrainJobSpec, result_path

STAND_IN = textwrap.dedent("""
    import json, pathlib, sys, time
    spec = json.loads(pathlib.Path(sys.argv[1]).read_text())
    control = pathlib.Path(spec["repo"]) / "control"
    mode = control.read_text().strip() if control.exists() else ""
    if mode:
        control.write_text(mode.partition(",")[2])  # each mode happens once
    mode = mode.partition(",")[0]
    heartbeat = pathlib.Path(spec["heartbeat"])
    heartbeat.touch()
    print("progress step=1", flush=True)
    if mode == "hang":
        time.sleep(300)
    if mode == "crash":
        raise SystemExit("ValueError: nobody expected this")
    if mode == "corrupt":
        raise SystemExit("safetensors_rust.SafetensorError: Error while deserializing header")
    if mode == "nosignal":  # what a GRPO job without a learning signal prints
        raise SystemExit("error: " + (control.parent / "nosignal.txt").read_text())
    batch = spec["hyperparams"]["batch_size"]
    memory = [bytearray(48 * 1024 * 1024) for _ in range(batch)]
    out = pathlib.Path(spec["out"])
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    pathlib.Path(str(out) + ".result.json").write_text(json.dumps({"batch": batch}))
    print("done", flush=True)
""")

LOCAL = {"local": Host(kind="local")}


@pytest.fixture
def spec(tmp_path) -> TrainJobSpec:
    profile = HyperParams(learning_rate=1e-3, batch_size=16, max_steps=2, num_generations=4,
                          max_completion_length=4)
    return TrainJobSpec(specialist="rtb-quality", method="sft", base="base", dataset="d.jsonl",
                        out=str(tmp_path / "out"), hyperparams=profile.model_dump(mode="json"),
                        repo=str(tmp_path), heartbeat=str(tmp_path / "heartbeat"))


def run(spec, tmp_path, pool=None, **kw):
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    failures = []
    healed = run_training(spec, tmp_path / "job" / "spec.json", pool or Pool(LOCAL, ["local"]),
                          command=[sys.executable, str(tmp_path / "stand_in.py")],
                          heartbeat_timeout_s=kw.pop("heartbeat_timeout_s", 30),
                          on_failure=failures.append, **kw)
    return healed, failures


def test_out_of_memory_halves_the_batch_and_succeeds(spec, tmp_path):
    # 16 x 48 MB does not fit in 700 MB of address space; 8 x 48 MB does.
    healed, failures = run(spec, tmp_path, memory_limit_mb=700)
    assert [f.diagnosis.failure_class for f in failures] == ["oom"]
    assert failures[0].recovery.action == "halve_batch"
    assert "MemoryError" in failures[0].diagnosis.evidence
    assert (healed.spec.hyperparams["batch_size"], healed.spec.hyperparams["grad_accum"]) == (8, 2)
    assert json.loads(result_path(Path(spec.out)).read_text()) == {"batch": 8}
    assert [a.number for a in healed.attempts] == [1, 2]


def test_a_hosts_memory_limit_applies_to_its_jobs(spec, tmp_path):
    # The same limit, declared on the host in config/clusters.json.
    pool = Pool({"local": Host(kind="local", memory_limit_mb=700)}, ["local"])
    healed, failures = run(spec, tmp_path, pool=pool)
    assert [f.recovery.action for f in failures] == ["halve_batch"]
    assert healed.spec.hyperparams["batch_size"] == 8


def test_a_hang_is_killed_and_run_again(spec, tmp_path):
    (tmp_path / "control").write_text("hang")
    started = time.monotonic()
    healed, failures = run(spec, tmp_path, heartbeat_timeout_s=1.5)
    assert [(f.diagnosis.failure_class, f.recovery.action) for f in failures] == [
        ("hang", "resume")]
    assert healed.attempts[-1].result.ok and time.monotonic() - started < 120


def test_an_unknown_failure_is_retried_once_then_stops(spec, tmp_path):
    (tmp_path / "control").write_text("crash")
    healed, failures = run(spec, tmp_path)
    assert [f.recovery.action for f in failures] == ["retry"] and healed.attempts[-1].result.ok
    (tmp_path / "control").write_text("crash,crash")
    with pytest.raises(TrainingAbandoned, match="unknown") as stopped:
        run(spec, tmp_path)
    assert [a.recovery.action for a in stopped.value.attempts] == ["retry", "stop"]
    assert "nobody expected this" in stopped.value.attempts[-1].diagnosis.evidence


def test_a_corrupt_checkpoint_goes_back_to_the_caller(spec, tmp_path):
    (tmp_path / "control").write_text("corrupt")
    with pytest.raises(CheckpointDiscarded) as discarded:
        run(spec, tmp_path)
    assert discarded.value.checkpoint == "base"
    assert discarded.value.attempts[0].diagnosis.failure_class == "corrupt_checkpoint"


def test_a_corrupt_run_checkpoint_is_discarded_and_the_run_goes_back_one(spec, tmp_path):
    from dataclasses import replace

    checkpoints = tmp_path / "checkpoints"
    for step in (1, 2):
        (checkpoints / "grpo" / f"checkpoint-{step}").mkdir(parents=True)
    (tmp_path / "control").write_text("corrupt")
    healed, failures = run(replace(spec, checkpoints=str(checkpoints)), tmp_path)
    assert [(f.diagnosis.failure_class, f.recovery.action) for f in failures] == [
        ("corrupt_checkpoint", "discard_checkpoint")]
    assert healed.attempts[-1].result.ok
    assert [p.name for p in (checkpoints / "grpo").iterdir()] == ["checkpoint-1"]


def test_no_signal_doubles_the_completion_then_skips_grpo(spec, tmp_path):
    from dataclasses import replace

    from modelsmith.training.trainers import NoSignalError

    no_signal = NoSignalError(20, 1, 20, 0.0, max_completion_length=4, cap=64, clipped=1.0)
    (tmp_path / "nosignal.txt").write_text(str(no_signal))
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "grpo" / "checkpoint-10").mkdir(parents=True)
    (checkpoints / "sft-model").mkdir()
    (tmp_path / "control").write_text("nosignal,nosignal")
    healed, failures = run(replace(spec, method="sft+grpo", checkpoints=str(checkpoints)),
                           tmp_path)
    assert [(f.diagnosis.failure_class, f.recovery.action) for f in failures] == [
        ("no_signal", "double_completion"), ("no_signal", "skip_grpo")]
    assert failures[0].recovery.detail == "max_completion_length 4 -> 8"
    assert healed.attempts[-1].result.ok and len(healed.attempts) == 3
    # The retry ran with twice the completion, the last without GRPO.
    assert healed.spec.hyperparams["max_completion_length"] == 8
    assert healed.spec.skip_grpo == "no learning signal in GRPO at attempt 2"
    # GRPO's checkpoints were made with the shorter completions; the SFT warm start stays.
    assert not (checkpoints / "grpo").exists() and (checkpoints / "sft-model").is_dir()


def test_with_the_first_host_down_training_runs_on_the_second(spec, tmp_path, silent_port):
    hosts = {"down": Host(kind="ssh", address=f"127.0.0.1:{silent_port}"),
             "local": Host(kind="local")}
    pool = Pool(hosts, ["down", "local"], probe_timeout_s=1.0)
    started = time.monotonic()
    healed, failures = run(spec, tmp_path, pool=pool)
    assert healed.host == "local" and failures == []
    assert [r.up for r in pool.last_probe] == [False, True]
    assert time.monotonic() - started < 30  # a hang guard: the probe gave up after ~1 s
    pool.exclude("local", "test")
    with pytest.raises(NoHostError) as none:
        pool.choose()
    assert str(none.value) == ("no training host available (local: test; down: no answer "
                               "within 1 s)")


def test_halving_keeps_grpo_groups_whole():
    base = {"learning_rate": 1e-3, "batch_size": 16, "grpo_batch_size": 32, "max_steps": 2,
            "num_generations": 4, "max_completion_length": 4}
    once = halved(base)
    assert (once["batch_size"], once["grpo_batch_size"], once["grad_accum"]) == (8, 16, 2)
    thrice = halved(halved(once))
    assert (thrice["batch_size"], thrice["grpo_batch_size"], thrice["grad_accum"]) == (2, 4, 8)
    # 4 // 2 = 2 cannot hold a group of 4 generations: GRPO keeps 4.
    assert halved(thrice)["grpo_batch_size"] == 4
