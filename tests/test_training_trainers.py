"""Trainers on TRL with the tiny test model: sft, grpo, sft+grpo, the profile -> config
mapping and the config hash. A few steps each: these prove the wiring, not learning."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from modelsmith.specs import HyperParams, LoraConfig, load_repository
from modelsmith.training.config import (
    TrainingConfigError,
    config_hash,
    grpo_arguments,
    grpo_config,
    prompts_per_step,
    sft_config,
    sft_steps,
)

pytest.importorskip("trl")

WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def demo():
    repo = load_repository(REPO_ROOT)
    specialist = repo.specialists["rtb-quality"]
    return repo, specialist, repo.suite_for(specialist)


@pytest.fixture(scope="module")
def tiny(demo, tmp_path_factory):
    from modelsmith.artifacts.models import resolve_model

    repo = demo[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELSMITH_CACHE", str(tmp_path_factory.mktemp("cache")))
        return resolve_model("tiny-test", repo.clusters, progress=lambda message: None).path


@pytest.fixture(scope="module")
def rows(demo):
    _, _, suite = demo
    # Short prompts keep each step fast; the trainers do not care what the prompt says.
    return [
        {"prompt": f"Bid: {sc.input[:40]}\nVerdict:", "completion": f" {sc.expected}",
         "expected": sc.expected, "scenario_id": sc.id}
        for sc in suite.core[:16]
    ]


def profile(**changes) -> HyperParams:
    fields = dict(
        device="cpu", threads=1, lora=LoraConfig(r=4, alpha=8), learning_rate=0.01,
        batch_size=4, grad_accum=1, max_steps=3, num_generations=2,
        max_completion_length=3, beta=0.0, seed=0, sft_steps=2,
    )
    fields.update(changes)
    return HyperParams(**fields)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / WEIGHTS))


def _changed(before, after) -> bool:
    return any(not (before[name] == after[name]).all() for name in before)


# --------------------------------------------------------------------------- config


def test_cpu_profiles_map_to_the_measured_cpu_settings(tmp_path):
    p = profile(grad_accum=2, max_steps=50, beta=0.04)
    for config in (sft_config(p, tmp_path), grpo_config(p, tmp_path)):
        assert config.bf16 is False and config.fp16 is False
        assert config.activation_checkpointing is False
        assert config.gradient_checkpointing is False
        assert config.use_cpu is True
        assert config.report_to in ([], "none", ["none"])
        assert config.logging_steps == 1
        assert config.save_strategy == "no"
        assert config.lr_scheduler_type == "cosine" and config.warmup_steps == 5
        assert config.learning_rate == 0.01 and config.seed == 0
        assert config.per_device_train_batch_size == 4
        assert config.gradient_accumulation_steps == 2
        assert config.max_steps == 50
    sft = sft_config(p, tmp_path, max_steps=7)
    assert sft.max_steps == 7 and sft.completion_only_loss is True and sft.max_length is None
    grpo = grpo_config(p, tmp_path)
    assert grpo.num_generations == 2 and grpo.max_completion_length == 3
    assert grpo.beta == 0.04 and grpo.use_vllm is False
    assert grpo.remove_unused_columns is False  # the reward needs the dataset's columns
    slower = p.model_copy(update={"grpo_learning_rate": 3e-4})
    assert grpo_config(slower, tmp_path).learning_rate == 3e-4
    assert sft_config(slower, tmp_path).learning_rate == 0.01


def test_a_gpu_profile_generates_with_colocated_vllm(demo, tmp_path):
    import torch

    repo = demo[0]
    gpu = repo.clusters.profiles["gpu-grpo"]
    arguments = grpo_arguments(gpu, tmp_path)
    assert arguments["use_vllm"] is True and arguments["vllm_mode"] == "colocate"
    assert arguments["use_cpu"] is False and arguments["bf16"] is True
    assert arguments["activation_checkpointing"] is False
    assert "use_vllm" not in grpo_arguments(profile(), tmp_path)
    grpo = grpo_config(gpu, tmp_path)  # builds on any machine: bf16 only where supported
    assert grpo.use_vllm is True and grpo.use_cpu is False
    assert grpo.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def test_settings_and_steps_per_method():
    p = profile(max_steps=40, sft_steps=None)
    assert sft_steps("sft", p) == 40
    assert sft_steps("sft+grpo", p) == 10  # default: a quarter
    assert sft_steps("sft+grpo", profile(sft_steps=3)) == 3
    assert sft_steps("grpo", p) == 0
    assert prompts_per_step(profile(batch_size=16, num_generations=4)) == 4
    with pytest.raises(TrainingConfigError, match="unknown training method 'ppo'"):
        sft_steps("ppo", p)


def test_config_hash_is_canonical_and_sensitive():
    base = config_hash("sft+grpo", profile(), {"dataset": "abc", "suite": "def"})
    assert base.startswith("sha256:") and len(base) == 7 + 64
    assert base == config_hash("sft+grpo", profile(), {"suite": "def", "dataset": "abc"})
    assert base == config_hash("sft+grpo", HyperParams.model_validate(
        profile().model_dump(mode="json")), {"dataset": "abc", "suite": "def"})
    others = {
        config_hash("grpo", profile(), {"dataset": "abc", "suite": "def"}),
        config_hash("sft+grpo", profile(learning_rate=0.02), {"dataset": "abc", "suite": "def"}),
        config_hash("sft+grpo", profile(lora=None), {"dataset": "abc", "suite": "def"}),
        config_hash("sft+grpo", profile(), {"dataset": "abd", "suite": "def"}),
        config_hash("sft+grpo", profile()),
    }
    assert base not in others and len(others) == 5


def test_importing_the_training_modules_imports_no_ml_library():
    code = (
        "import sys\n"
        "import modelsmith.training.config, modelsmith.training.reward, "
        "modelsmith.training.trainers\n"
        "heavy = {'torch', 'transformers', 'trl', 'peft', 'datasets'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


# --------------------------------------------------------------------------- training


def test_sft_trains_and_writes_a_folder_the_eval_backend_loads(tiny, rows, tmp_path):
    from modelsmith.artifacts.models import resolve_model
    from modelsmith.inference.base import GenerationRequest
    from modelsmith.inference.transformers_backend import TransformersBackend
    from modelsmith.training.trainers import train

    seen = []
    out = tmp_path / "sft"
    result = train("sft", tiny, rows, None, profile(), out, progress=seen.append)
    assert result.out_dir == out and result.method == "sft" and result.steps == 3
    assert (out / WEIGHTS).is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()  # LoRA merged into the weights
    assert _changed(_weights(tiny), _weights(out))
    assert [e["step"] for e in result.history if "loss" in e] == [1, 2, 3]
    assert [{k: v for k, v in e.items() if k != "total"} for e in seen] == result.history
    assert all(e["phase"] == "sft" and e["total"] == 3 for e in seen)
    assert {"loss", "train_loss", "mean_token_accuracy", "entropy"} <= set(result.metrics)
    assert result.versions["trl"].startswith("1.") and result.versions["torch"] != "missing"
    assert result.duration_s > 0
    assert [p.name for p in tmp_path.iterdir()] == ["sft"]  # no work folders left behind

    backend = TransformersBackend(resolve_model(str(out), None), threads=1)
    try:
        [generation] = backend.generate([GenerationRequest(rows[0]["prompt"], max_new_tokens=3)])
    finally:
        backend.close()
    assert generation.completion_tokens >= 1

    again = train("sft", tiny, rows, None, profile(), tmp_path / "again")
    assert not _changed(_weights(out), _weights(again.out_dir))  # same seed, same weights


def test_grpo_trains_on_the_rubric_reward_and_records_trl_metrics(demo, tiny, rows, tmp_path):
    from modelsmith.training.reward import make_reward_fn
    from modelsmith.training.trainers import train

    _, specialist, suite = demo
    rubric = make_reward_fn(specialist, suite)
    calls = []

    def reward(prompts, completions, **kwargs):
        calls.append(sorted(kwargs))
        # The rubric plus a little length shaping: a random model scores 0 on the rubric
        # everywhere, and GRPO learns nothing from a group of equal rewards.
        scores = rubric(prompts, completions, **kwargs)
        return [s + 0.1 * len(c) / 20 for s, c in zip(scores, completions, strict=True)]

    reward.__name__ = "rubric"
    seen = []
    result = train("grpo", tiny, rows, reward, profile(beta=0.04), tmp_path / "grpo",
                   progress=seen.append)
    assert result.steps == 3 and len(calls) == 3
    assert {"expected_json", "scenario_id", "log_metric", "trainer_state"} <= set(calls[0])
    for key in ("reward", "reward_std", "rewards/rubric/mean", "kl", "entropy",
                "completions/mean_length", "rubric/pass_rate", "rubric/format_rate",
                "reward_start", "reward_end", "train_loss"):
        assert key in result.metrics, key
    assert result.metrics["completions/mean_length"] <= 3
    assert [e["step"] for e in seen if "reward" in e] == [1, 2, 3]
    assert _changed(_weights(tiny), _weights(result.out_dir))


def test_sft_then_grpo_chains_full_fine_tuning(demo, tiny, rows, tmp_path):
    from modelsmith.training.reward import make_reward_fn
    from modelsmith.training.trainers import train

    _, specialist, suite = demo
    p = profile(lora=None, sft_steps=2, max_steps=2)
    # A few labelled rows for the warm start, every row a GRPO prompt.
    mixed = [{**row, "completion": row["completion"] if i < 4 else None}
             for i, row in enumerate(rows)]
    result = train("sft+grpo", tiny, mixed, make_reward_fn(specialist, suite), p,
                   tmp_path / "chain")
    assert result.steps == 4
    phases = [(e["phase"], e["step"]) for e in result.history if "train_runtime" not in e]
    assert phases == [("sft", 1), ("sft", 2), ("grpo", 1), ("grpo", 2)]
    assert "sft/train_loss" in result.metrics and "reward" in result.metrics
    assert _changed(_weights(tiny), _weights(result.out_dir))


def test_bad_requests_fail_before_any_training(tiny, rows, tmp_path):
    from modelsmith.training.trainers import TrainingError, train

    out = tmp_path / "out"
    with pytest.raises(TrainingError, match="unknown training method"):
        train("ppo", tiny, rows, None, profile(), out)
    with pytest.raises(TrainingError, match="no training rows"):
        train("sft", tiny, [], None, profile(), out)
    with pytest.raises(TrainingError, match="row 0 lacks completion"):
        train("sft", tiny, [{"prompt": "x"}], None, profile(), out)
    with pytest.raises(TrainingError, match="row 1 lacks completion"):
        train("sft", tiny, [rows[0], {**rows[1], "completion": ""}], None, profile(), out)
    with pytest.raises(TrainingError, match="needs some rows with a reference"):
        train("sft+grpo", tiny, [{**rows[0], "completion": None}], lambda **k: [],
              profile(), out)
    with pytest.raises(TrainingError, match="lacks scenario_id, expected"):
        train("grpo", tiny, [{"prompt": "x"}], lambda **k: [], profile(), out)
    with pytest.raises(TrainingError, match="needs a reward function"):
        train("grpo", tiny, rows, None, profile(), out)
    with pytest.raises(TrainingError, match="not a Hugging Face model folder"):
        train("sft", tmp_path, rows, None, profile(), out)
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(TrainingError, match="not empty"):
        train("sft", tiny, rows, None, profile(), out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# --------------------------------------------------------------------------- checkpoints


def test_a_checkpoint_is_trusted_only_when_sealed_and_intact(tmp_path):
    from modelsmith.training.checkpoints import (
        discard_newest,
        newest_intact,
        problem,
        seal,
    )

    phase = tmp_path / "grpo"
    for step in (1, 2, 3):
        folder = phase / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / WEIGHTS).write_bytes(bytes(range(256)) * step)
        if step < 3:  # checkpoint-3: the run died while saving it
            seal(folder)
    assert problem(phase / "checkpoint-1") is None
    assert "cut short" in problem(phase / "checkpoint-3")
    with (phase / "checkpoint-2" / WEIGHTS).open("r+b") as handle:
        handle.truncate(100)
    assert problem(phase / "checkpoint-2") == f"{WEIGHTS} has 100 bytes, not 512"
    said: list[str] = []
    assert newest_intact(phase, said.append) == phase / "checkpoint-1"
    assert [s.split(":")[0] for s in said] == [
        f"discarding checkpoint {phase}/checkpoint-3",
        f"discarding checkpoint {phase}/checkpoint-2"]
    assert sorted(p.name for p in phase.iterdir()) == ["checkpoint-1"]
    assert discard_newest(tmp_path) == phase / "checkpoint-1"
    assert discard_newest(tmp_path) is None


@pytest.mark.parametrize("lora", [None, LoraConfig(r=4, alpha=8)], ids=["full", "lora"])
def test_a_run_cut_short_resumes_from_its_newest_intact_checkpoint(demo, tiny, rows, tmp_path,
                                                                  lora):
    from modelsmith.training.reward import make_reward_fn
    from modelsmith.training.trainers import train

    _, specialist, suite = demo
    p = profile(lora=lora, max_steps=4, checkpoint_steps=1)
    saved = "adapter_model.safetensors" if lora else WEIGHTS
    checkpoints = tmp_path / "checkpoints"

    class Cut(Exception):
        pass

    def cut_at_grpo_step_3(log):
        if log["phase"] == "grpo" and log["step"] == 3:
            raise Cut

    with pytest.raises(Cut):
        train("sft+grpo", tiny, rows, make_reward_fn(specialist, suite), p, tmp_path / "a",
              progress=cut_at_grpo_step_3, checkpoints=checkpoints)
    assert sorted(x.name for x in (checkpoints / "grpo").glob("checkpoint-*")) == [
        "checkpoint-1", "checkpoint-2"]
    assert (checkpoints / "sft-model" / "modelsmith-manifest.json").is_file()
    # A file of the newest checkpoint is truncated on disk: that one is discarded.
    weights = checkpoints / "grpo" / "checkpoint-2" / saved
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    said: list[str] = []
    logged: list[dict] = []
    result = train("sft+grpo", tiny, rows, make_reward_fn(specialist, suite), p,
                   tmp_path / "a", progress=logged.append, checkpoints=checkpoints,
                   say=said.append)
    assert said[0].startswith("resuming from the finished SFT warm start")
    assert said[1].startswith(f"discarding checkpoint {checkpoints}/grpo/checkpoint-2: ")
    assert said[2] == f"resuming grpo from {checkpoints}/grpo/checkpoint-1"
    assert [(e["phase"], e["step"]) for e in logged if "loss" in e] == [
        ("grpo", 2), ("grpo", 3), ("grpo", 4)]  # only what was left to do ran
    assert result.steps == 2 + 4
    steps = [(e["phase"], e["step"]) for e in result.history if "loss" in e]
    assert steps[:2] == [("sft", 1), ("sft", 2)] and steps[-4:] == [
        ("grpo", 1), ("grpo", 2), ("grpo", 3), ("grpo", 4)]
    assert (tmp_path / "a" / WEIGHTS).is_file() and not checkpoints.exists()
