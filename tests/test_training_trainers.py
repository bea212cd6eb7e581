"""Trainers on TRL with the tiny test model: sft, grpo, sft+grpo, the profile -> config
mapping and the config hash. A few steps each: these prove the wiring, not learning."""

from __future__ import annotations

import json
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
    """The model's weights; of a LoRA adapter folder, the adapter merged into its base."""
    from safetensors.torch import load_file

    from modelsmith.artifacts.adapters import is_adapter

    if not is_adapter(folder):
        return load_file(str(folder / WEIGHTS))
    import torch
    import transformers

    from modelsmith.artifacts.adapters import adapter_base
    from modelsmith.inference.adapters import merged

    base = transformers.AutoModelForCausalLM.from_pretrained(adapter_base(folder).path,
                                                             dtype=torch.float32)
    return merged(base, folder).state_dict()


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
    # A LoRA run keeps its adapter (of the base), not merged weights.
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / WEIGHTS).exists()
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
    assert (tmp_path / "a" / (WEIGHTS if lora is None else saved)).is_file()
    assert not checkpoints.exists()


# --------------------------------------------------------------------------- lengths


@pytest.fixture(scope="module")
def tokens(tiny):
    """Tokens of an answer under the tiny model's tokenizer (no special tokens)."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def json_rows(n: int = 4) -> list[dict]:
    """Rows of a JSON-extraction task: answers of a few dozen tokens, the last the longest."""
    from modelsmith.training.dataset import completion_for

    rows = []
    for i in range(n):
        expected = {"name": f"item {i}", "tags": ["blue"] * (i + 1)}
        prompt = f"Extract: item {i} is blue\nJSON:"
        rows.append({"id": f"r{i}", "prompt": prompt, "expected": expected,
                     "scenario_id": f"s{i}",
                     "completion": completion_for(prompt, json.dumps(expected))})
    return rows


def test_a_label_task_gets_its_longest_label_and_eos(demo, rows, tokens):
    from modelsmith.training.lengths import fit_lengths

    _, specialist, _ = demo
    fitted = fit_lengths("sft+grpo", rows, profile(max_completion_length=None), tokens,
                         max_length=256, output=specialist.spec.task.output)
    # The prompts end in "Verdict:": each label follows with a space, one token here.
    assert fitted.max_completion_length == max(tokens(" ACCEPT"), tokens(" REJECT")) + 1 == 2
    assert fitted.derived and fitted.longest_answer == 1


def test_a_json_task_gets_its_longest_reference_with_headroom_within_the_model(tokens):
    from modelsmith.evaluation.budget import answer_budget
    from modelsmith.specs.models import JsonOutput
    from modelsmith.training.lengths import LengthError, fit_lengths

    contract, rows, unset = JsonOutput(kind="json"), json_rows(), profile(
        max_completion_length=None)
    longest = max(tokens(row["completion"]) for row in rows)
    fitted = fit_lengths("grpo", rows, unset, tokens, max_length=256, output=contract)
    assert fitted.max_completion_length == answer_budget("json", longest)
    assert fitted.max_completion_length >= longest * 1.25 + 4 and fitted.derived
    # Where the longest prompt leaves less room, the room is the length.
    prompt = max(tokens(row["prompt"]) for row in rows)
    tight = fit_lengths("grpo", rows, unset, tokens, max_length=prompt + longest + 2,
                        output=contract)
    assert tight.max_completion_length == longest + 2 == tight.cap
    with pytest.raises(LengthError, match=rf"leaving {longest - 1} of the model's max_length "
                                          rf"{prompt + longest - 1} for the answer, fewer "
                                          rf"than the longest reference answer needs "
                                          rf"\({longest} tokens\)"):
        fit_lengths("grpo", rows, unset, tokens, max_length=prompt + longest - 1,
                    output=contract)


def test_a_profile_length_shorter_than_a_reference_fails_before_training(tiny, tokens,
                                                                         tmp_path):
    from modelsmith.training.lengths import LengthError
    from modelsmith.training.trainers import train

    rows = json_rows()
    longest = tokens(rows[-1]["completion"])
    with pytest.raises(LengthError) as raised:
        train("sft+grpo", tiny, rows, lambda **k: [0.0], profile(max_completion_length=4),
              tmp_path / "out", profile_name="cpu-tiny-demo")
    assert str(raised.value).startswith(
        f"profile 'cpu-tiny-demo' sets max_completion_length 4, shorter than the longest "
        f"reference answer: {longest} tokens in training row 3 (r3)")
    assert not (tmp_path / "out" / WEIGHTS).exists()


def test_a_prompt_too_long_for_the_model_is_an_error_not_cut(tiny, rows, tokens, tmp_path):
    from modelsmith.training.lengths import LengthError, fit_lengths
    from modelsmith.training.trainers import train

    long = {**rows[1], "id": "long", "prompt": "Bid: " + "floor=$0.80 " * 36 + "\nVerdict:"}
    prompt = tokens(long["prompt"])
    assert 200 < prompt < 250
    # SFT: prompt, answer and EOS must fit the model's 256 tokens.
    with pytest.raises(LengthError, match=r"training row 1 \(long\): its prompt and "
                                          r"reference answer need \d+ tokens \(with EOS\), "
                                          r"more than the model's max_length 256"):
        fit_lengths("sft", [rows[0], {**long, "prompt": long["prompt"] * 2}], profile(),
                    tokens, max_length=256)
    # GRPO: the prompt and max_completion_length new tokens must fit.
    p = profile(max_completion_length=256 - prompt + 1)
    with pytest.raises(LengthError) as raised:
        train("grpo", tiny, [rows[0], long], lambda **k: [0.0], p, tmp_path / "out")
    assert str(raised.value).startswith(
        f"training row 1 (long): its prompt has {prompt} tokens; with max_completion_length "
        f"{256 - prompt + 1} that is more than the model's max_length 256")
    assert fit_lengths("grpo", [rows[0], long], profile(max_completion_length=256 - prompt),
                       tokens, max_length=256).max_completion_length == 256 - prompt


def test_grpo_trains_with_the_derived_length(demo, tiny, tmp_path):
    from modelsmith.specs.models import JsonOutput
    from modelsmith.training.trainers import train

    def varied(prompts, completions, **kwargs):
        return [float(i % 2) for i in range(len(completions))]

    result = train("grpo", tiny, json_rows(), varied,
                   profile(max_completion_length=None, max_steps=1), tmp_path / "out",
                   output=JsonOutput(kind="json"))
    assert result.steps == 1 and result.metrics["max_completion_length"] > 20
    assert result.metrics["completions/max_length"] <= result.metrics["max_completion_length"]


def test_grpo_needs_a_completion_length(tmp_path):
    unset = profile(max_completion_length=None)
    with pytest.raises(TrainingConfigError, match="needs a max_completion_length"):
        grpo_arguments(unset, tmp_path)
    assert grpo_config(unset, tmp_path, max_completion_length=7).max_completion_length == 7


# --------------------------------------------------------------------------- no signal


def test_reward_signal_per_logged_step():
    from modelsmith.training.trainers import reward_signal

    assert reward_signal({"reward": 0.0, "frac_reward_zero_std": 1.0}) == "none"
    assert reward_signal({"reward": 0.5, "frac_reward_zero_std": 0.75}) == "signal"
    # Every completion at the top score: solved, not a failure.
    assert reward_signal({"reward": 1.0, "frac_reward_zero_std": 1.0}) == "solved"
    # Some groups all right and the others all wrong: still nothing to learn from.
    assert reward_signal({"reward": 0.875, "frac_reward_zero_std": 1.0}) == "none"
    # Without frac_reward_zero_std, the batch's reward_std decides.
    assert reward_signal({"reward": 0.3, "reward_std": 0.0}) == "none"
    assert reward_signal({"reward": 0.3, "reward_std": 0.2}) == "signal"
    assert reward_signal({"loss": 0.1}) is None  # an SFT step, or the run's summary


@pytest.mark.parametrize(("signals", "fires", "converged"), [
    (["none", "none"], True, False),
    (["none", "solved", "none"], True, False),  # a solved step neither counts nor breaks
    (["none", "signal", "none"], False, False),
    (["solved", "solved", "solved"], False, False),
    (["signal", "none", "none"], True, True),  # learnt, then collapsed: stop, keep
    (["none", "signal", "none", "none"], True, True),
])
def test_the_watch_fires_on_consecutive_steps_without_signal(signals, fires, converged):
    from types import SimpleNamespace

    from modelsmith.training.trainers import _no_signal_watch

    logs = {"none": {"reward": 0.0, "frac_reward_zero_std": 1.0},
            "solved": {"reward": 1.0, "frac_reward_zero_std": 1.0},
            "signal": {"reward": 0.5, "frac_reward_zero_std": 0.5}}
    watch = _no_signal_watch(2)
    control = SimpleNamespace(should_training_stop=False)
    for step, signal in enumerate(signals, 1):
        watch.on_log(None, SimpleNamespace(global_step=step), control, logs[signal])
    assert control.should_training_stop is fires and bool(watch.fired) is fires
    assert watch.converged is converged


def test_grpo_on_a_constant_reward_stops_as_no_signal(tiny, rows, tmp_path):
    from modelsmith.fleet.failures import JobEnd, classify, recovery
    from modelsmith.training.trainers import NoSignalError, train

    def constant(prompts, completions, **kwargs):
        return [0.5] * len(completions)

    seen = []
    with pytest.raises(NoSignalError) as raised:
        train("grpo", tiny, rows, constant, profile(max_steps=8, no_signal_steps=2),
              tmp_path / "out", progress=seen.append)
    error = raised.value
    assert (error.steps, error.first, error.last, error.reward) == (2, 1, 2, 0.5)
    assert [e["step"] for e in seen if "reward" in e] == [1, 2]  # stopped, not 8 steps
    assert f"max_completion_length 3 (at most {error.cap})" in str(error) and error.cap > 200
    assert not (tmp_path / "out" / WEIGHTS).exists()
    # As the job prints it: classified no_signal; first a longer completion, then no GRPO.
    diagnosis = classify(JobEnd(1, f"progress step=2\nerror: {error}\n"))
    assert diagnosis.failure_class == "no_signal"
    first = recovery(diagnosis, 1, batch_size=4, grad_accum=1)
    assert (first.action, first.detail) == ("double_completion",
                                            "max_completion_length 3 -> 6")
    assert recovery(diagnosis, 2, batch_size=4, grad_accum=1).action == "skip_grpo"


def test_grpo_that_converges_after_a_signal_stops_early_and_keeps_its_weights(
        tiny, rows, tmp_path):
    """Rewards that varied at first and then are alike in every group (the policy collapsed
    onto one answer per prompt): GRPO stops at the watch, as a success, with its weights,
    a warning naming the step, and ``grpo_stopped_early_step``."""
    from modelsmith.training.trainers import train

    calls = []

    def learnt(prompts, completions, **kwargs):
        calls.append(len(completions))
        if len(calls) == 1:  # the first step: each group has a better and a worse answer
            return [float(i % 2) for i in range(len(completions))]
        return [0.5] * len(completions)

    result = train("grpo", tiny, rows, learnt, profile(max_steps=8, no_signal_steps=2),
                   tmp_path / "out")
    assert result.steps == 3  # one step with a signal, then two without: stopped, not 8
    assert result.metrics["grpo_stopped_early_step"] == 3.0
    assert [w for w in result.warnings if "GRPO stopped early at step 3 of 8" in w
            and "the policy converged; its weights are kept" in w], result.warnings
    assert result.out_dir == tmp_path / "out" and _weights(result.out_dir)  # kept


def test_grpo_on_a_varying_reward_does_not_stop(tiny, rows, tmp_path):
    from modelsmith.training.trainers import train

    def varied(prompts, completions, **kwargs):
        return [float(i % 2) for i in range(len(completions))]  # each group: 0 and 1

    result = train("grpo", tiny, rows, varied, profile(max_steps=3, no_signal_steps=1),
                   tmp_path / "out")
    assert result.steps == 3 and not result.warnings
    assert all(e["frac_reward_zero_std"] == 0 for e in result.history if "reward" in e)


def test_skipping_grpo_keeps_the_sft_result_or_the_base_weights(demo, tiny, rows, tmp_path):
    from modelsmith.training.reward import make_reward_fn
    from modelsmith.training.trainers import train

    _, specialist, suite = demo
    reward = make_reward_fn(specialist, suite)
    chain = train("sft+grpo", tiny, rows, reward, profile(), tmp_path / "chain",
                  skip_grpo="no learning signal in GRPO at attempt 2")
    assert chain.steps == 2 and chain.metrics["grpo_skipped"] == 1.0
    assert {e["phase"] for e in chain.history} == {"sft"}
    assert chain.warnings == ["GRPO skipped (no learning signal in GRPO at attempt 2): the "
                              "weights are the SFT result"]
    sft = train("sft", tiny, rows, None, profile(max_steps=2), tmp_path / "sft")
    assert not _changed(_weights(sft.out_dir), _weights(chain.out_dir))
    alone = train("grpo", tiny, rows, reward, profile(), tmp_path / "grpo", skip_grpo="why")
    assert alone.steps == 0 and "the base weights, untrained" in alone.warnings[0]
    assert not _changed(_weights(tiny), _weights(alone.out_dir))
