"""`modelsmith job train SPEC` under the local executor: progress lines and heartbeat while
it trains, weights and a result file when it ends; a truncated base checkpoint fails in a
way the classifier names; a bad spec is a clear error."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from modelsmith.artifacts import resolve_model
from modelsmith.artifacts.adapters import is_weights_folder
from modelsmith.fleet.executors import Job, LocalExecutor
from modelsmith.fleet.failures import JobEnd, classify, recovery
from modelsmith.specs import load_repository
from modelsmith.training.dataset import TrainingRow, write_dataset
from modelsmith.training.job import TrainJobSpec, result_path

MODELSMITH = [sys.executable, "-m", "modelsmith"]


@pytest.fixture
def job_dir(demo_repo, tmp_path):
    """A spec for 2 SFT + 4 GRPO steps (cpu-tiny) of the tiny model on 16 demo rows."""
    repo = load_repository(demo_repo)
    spec = repo.specialists["rtb-quality"]
    suite = repo.suite_for(spec)
    base = resolve_model("tiny-test", repo.clusters, cache_dir=tmp_path / "cache",
                         progress=lambda _m: None).path
    rows = [TrainingRow(s.id, spec.spec.task.render(s.input), s.input, s.expected, "failure",
                        s.id) for s in suite.core[:16]]
    dataset = write_dataset(rows, tmp_path / "data.jsonl")
    copy = tmp_path / "base"
    shutil.copytree(base, copy)
    job = TrainJobSpec(specialist="rtb-quality", method="sft+grpo", base=str(copy),
                       dataset=str(dataset), out=str(tmp_path / "out"),
                       hyperparams=repo.clusters.profiles["cpu-tiny"].model_dump(mode="json"),
                       repo=str(demo_repo), heartbeat=str(tmp_path / "heartbeat"))
    (tmp_path / "job.json").write_text(job.to_json())
    return tmp_path


def run_job(folder: Path):
    lines: list[str] = []
    job = Job([*MODELSMITH, "job", "train", str(folder / "job.json")], cwd=folder,
              heartbeat=folder / "heartbeat", heartbeat_timeout_s=120)
    return LocalExecutor().run(job, on_line=lines.append), lines


def test_a_training_job_reports_progress_and_leaves_weights_and_a_result(job_dir):
    result, lines = run_job(job_dir)
    assert result.ok, result.log_tail
    progress = [line for line in lines if line.startswith("progress ")]
    assert any("phase=sft" in line and "total=2" in line for line in progress)
    assert any("phase=grpo" in line and "reward=" in line for line in progress)
    assert (job_dir / "heartbeat").is_file()
    assert is_weights_folder(job_dir / "out")  # the cpu-tiny profile: a LoRA adapter
    summary = json.loads(result_path(job_dir / "out").read_text())
    assert summary["steps"] == 6 and summary["history"] and "reward_end" in summary["metrics"]
    assert not (job_dir / "out" / "result.json").exists()  # the weights folder holds weights


def test_a_truncated_checkpoint_is_classified_and_its_recovery_named(job_dir):
    weights = job_dir / "base" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    result, _ = run_job(job_dir)
    assert not result.ok and result.returncode not in (0, None)
    diagnosis = classify(JobEnd(result.returncode, result.log_tail))
    assert diagnosis.failure_class == "corrupt_checkpoint", result.log_tail
    assert recovery(diagnosis, 1, batch_size=4, grad_accum=1).action == "discard_checkpoint"
    assert not result_path(job_dir / "out").exists()


def test_grpo_without_a_learning_signal_fails_as_no_signal_and_can_skip_grpo(job_dir):
    spec = json.loads((job_dir / "job.json").read_text())
    # After two SFT steps every completion of the tiny model scores 0 (seeded): no signal.
    spec["hyperparams"]["no_signal_steps"] = 1
    spec["profile"] = "cpu-tiny"
    (job_dir / "job.json").write_text(json.dumps(spec))
    result, _ = run_job(job_dir)
    assert not result.ok and not result_path(job_dir / "out").exists()
    diagnosis = classify(JobEnd(result.returncode, result.log_tail))
    assert diagnosis.failure_class == "no_signal", result.log_tail
    assert "max_completion_length 4 (at most " in diagnosis.evidence
    assert recovery(diagnosis, 1, batch_size=4, grad_accum=1).action == "double_completion"
    assert recovery(diagnosis, 2, batch_size=4, grad_accum=1).action == "skip_grpo"
    # The recovery's last resort: the job again without GRPO, saying so.
    spec["skip_grpo"] = "no learning signal in GRPO at attempt 2"
    (job_dir / "job.json").write_text(json.dumps(spec))
    shutil.rmtree(job_dir / "out", ignore_errors=True)
    result, lines = run_job(job_dir)
    assert result.ok, result.log_tail
    warning = ("warning: GRPO skipped (no learning signal in GRPO at attempt 2): the weights "
               "are the SFT result")
    assert warning in lines
    summary = json.loads(result_path(job_dir / "out").read_text())
    assert summary["steps"] == 2 and summary["metrics"]["grpo_skipped"] == 1.0
    assert summary["warnings"] == [warning.removeprefix("warning: ")]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: {**d, "surprise": 1}, "surprise: unknown field"),
    (lambda d: {k: v for k, v in d.items() if k != "dataset"}, "dataset: missing"),
    (lambda d: {**d, "method": ""}, "method: must be a non-empty string"),
    (lambda d: {**d, "hyperparams": {**d["hyperparams"], "batch_size": 0}},
     "hyperparams.batch_size"),
    (lambda d: [d], "a job spec is a JSON object"),
    (lambda d: {**d, "skip_grpo": True}, "skip_grpo: must be a string or null"),
])
def test_a_bad_job_spec_is_a_clear_error(job_dir, edit, message):
    from click.testing import CliRunner

    from modelsmith.cli import cli

    spec = job_dir / "job.json"
    spec.write_text(json.dumps(edit(json.loads(spec.read_text()))))
    result = CliRunner().invoke(cli, ["job", "train", str(spec)])
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output
    spec.write_text("{not json")
    result = CliRunner().invoke(cli, ["job", "train", str(spec)])
    assert result.exit_code == 1 and "cannot read the job spec" in result.output
