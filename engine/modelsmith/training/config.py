"""Hyper-parameter profiles mapped onto TRL's configs: the knobs are data, TRL is the machinery.

A profile (``profiles`` in ``config/clusters.json``) says what to train with; this module
turns it into a ``trl.SFTConfig`` or ``trl.GRPOConfig`` with the settings measured to matter
on a CPU (no bf16, no activation checkpointing, one thread), and hashes the whole training
configuration for lineage. TRL is imported inside the functions: importing this module is
cheap.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from modelsmith.errors import ModelsmithError
from modelsmith.specs.clusters import HyperParams

if TYPE_CHECKING:
    from trl import GRPOConfig, SFTConfig

Method = Literal["grpo", "sft", "sft+grpo"]
METHODS: tuple[str, ...] = ("grpo", "sft", "sft+grpo")

#: Share of the steps spent warming the learning rate up before the cosine decay.
WARMUP_RATIO = 0.1
#: Intermediate checkpoints kept per phase: the newest, and one to go back to.
CHECKPOINTS_KEPT = 2
#: Threads when the profile names none: measured fastest on a shared small CPU box.
DEFAULT_THREADS = 1


class TrainingConfigError(ModelsmithError, ValueError):
    """A training method or profile that cannot be run as asked."""


def check_method(method: str) -> None:
    """Raise :class:`TrainingConfigError` unless ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise TrainingConfigError(
            f"unknown training method '{method}' (choose one of: {', '.join(METHODS)})"
        )


def sft_steps(method: str, profile: HyperParams) -> int:
    """The SFT steps of ``method`` under ``profile``: the profile's ``max_steps`` for
    ``sft``, its ``sft_steps`` (default a quarter of ``max_steps``) for the warm start of
    ``sft+grpo``, none for ``grpo``."""
    check_method(method)
    if method == "sft":
        return profile.max_steps
    if method == "sft+grpo":
        return profile.sft_steps or max(1, profile.max_steps // 4)
    return 0


#: Overrides every profile's ``threads`` on this machine (e.g. 1 where several runs share
#: the cores: two 2-thread runs on 2 cores are many times slower than two 1-thread ones).
THREADS_ENV = "MODELSMITH_TRAIN_THREADS"


def torch_threads(profile: HyperParams) -> int:
    """The torch threads a run uses: ``$MODELSMITH_TRAIN_THREADS``, else the profile's,
    else :data:`DEFAULT_THREADS`. The config hash covers the profile's value, not the
    override: a machine's threads change its speed, not what was asked for."""
    import os

    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return profile.threads or DEFAULT_THREADS


def prompts_per_step(profile: HyperParams) -> int:
    """GRPO prompts per optimiser step: each prompt brings ``num_generations`` completions."""
    return profile.grpo_batch * profile.grad_accum // profile.num_generations


def _common(profile: HyperParams, out_dir: Path, max_steps: int) -> dict[str, Any]:
    """Arguments shared by SFT and GRPO; the CPU rules come from measurements on 2 cores."""
    on_cpu = profile.device == "cpu"
    return {
        "output_dir": str(out_dir),
        "max_steps": max_steps,
        "learning_rate": profile.learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": int(WARMUP_RATIO * max_steps),  # none in runs under 10 steps
        "per_device_train_batch_size": profile.batch_size,
        "gradient_accumulation_steps": profile.grad_accum,
        "seed": profile.seed,
        # TRL turns bf16 on by default: on a CPU it is 3.5x slower; a GPU gains from it.
        "bf16": not on_cpu,
        "fp16": False,
        # TRL turns activation checkpointing on by default: pure cost for small models.
        "activation_checkpointing": False,
        "use_cpu": on_cpu,
        "report_to": "none",
        "logging_steps": 1,
        "logging_first_step": True,
        # The trainer saves the final (merged) weights itself; intermediate checkpoints
        # (model, optimiser, scheduler, RNG: resumable) only when the profile asks.
        **({"save_strategy": "steps", "save_steps": profile.checkpoint_steps,
            "save_total_limit": CHECKPOINTS_KEPT} if profile.checkpoint_steps
           else {"save_strategy": "no"}),
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


def sft_arguments(
    profile: HyperParams,
    out_dir: Path,
    *,
    max_steps: int | None = None,
    max_length: int | None = None,
) -> dict[str, Any]:
    """The ``trl.SFTConfig`` arguments for ``profile``: loss on the completion only.

    ``max_steps`` defaults to the profile's; ``max_length`` (tokens of prompt + completion)
    defaults to no truncation, since TRL truncates from the end and would cut the answer.
    """
    return {
        **_common(profile, out_dir, max_steps or profile.max_steps),
        "completion_only_loss": True,
        "max_length": max_length,
        "packing": False,
        "shuffle_dataset": True,
    }


def grpo_arguments(
    profile: HyperParams, out_dir: Path, *, max_steps: int | None = None,
    max_completion_length: int | None = None,
) -> dict[str, Any]:
    """The ``trl.GRPOConfig`` arguments for ``profile``; on CUDA with ``use_vllm`` vLLM
    generates, colocated with training on the same GPU. ``max_completion_length`` defaults
    to the profile's; a profile without one needs it given (the trainer derives it from the
    rows: :func:`modelsmith.training.lengths.fit_lengths`)."""
    completion = max_completion_length or profile.max_completion_length
    if completion is None:
        raise TrainingConfigError(
            "GRPO needs a max_completion_length: the profile sets none and none was derived "
            "from the rows"
        )
    arguments = {
        **_common(profile, out_dir, max_steps or profile.max_steps),
        "learning_rate": profile.grpo_learning_rate or profile.learning_rate,
        "per_device_train_batch_size": profile.grpo_batch,
        "num_generations": profile.num_generations,
        "max_completion_length": completion,
        "beta": profile.beta,
        # Dataset columns (expected, scenario_id) must reach the reward function.
        "remove_unused_columns": False,
    }
    if profile.use_vllm and profile.device == "cuda":
        arguments.update(use_vllm=True, vllm_mode="colocate")
    return arguments


def _for_this_machine(arguments: dict[str, Any]) -> dict[str, Any]:
    """bf16 only where the GPU supports it (transformers refuses the config otherwise)."""
    if arguments.get("bf16"):
        import torch

        if not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
            return {**arguments, "bf16": False}
    return arguments


def sft_config(
    profile: HyperParams,
    out_dir: Path,
    *,
    max_steps: int | None = None,
    max_length: int | None = None,
) -> SFTConfig:
    """A ``trl.SFTConfig`` built from :func:`sft_arguments`."""
    from trl import SFTConfig

    arguments = sft_arguments(profile, out_dir, max_steps=max_steps, max_length=max_length)
    return SFTConfig(**_for_this_machine(arguments))


def grpo_config(
    profile: HyperParams, out_dir: Path, *, max_steps: int | None = None,
    max_completion_length: int | None = None,
) -> GRPOConfig:
    """A ``trl.GRPOConfig`` built from :func:`grpo_arguments`."""
    from trl import GRPOConfig

    arguments = grpo_arguments(profile, out_dir, max_steps=max_steps,
                               max_completion_length=max_completion_length)
    return GRPOConfig(**_for_this_machine(arguments))


def _hashed_settings(method: str, profile: HyperParams) -> dict[str, Any]:
    """The profile as ``method`` runs it, every default resolved: what the config hash
    covers. ``checkpoint_steps`` says when to save, not what is trained, so it stays out;
    ``no_signal_steps`` is in: a converged GRPO phase it stops early keeps its weights. A derived
    ``max_completion_length`` (None here) follows from the dataset and the base model,
    which the lineage hashes on their own."""
    return {
        **profile.model_dump(exclude={"checkpoint_steps"}),
        "method": method,
        "threads": profile.threads or DEFAULT_THREADS,  # the profile's, whatever the machine
        "grpo_learning_rate": profile.grpo_learning_rate or profile.learning_rate,
        "grpo_batch_size": profile.grpo_batch,
        "sft_steps": sft_steps(method, profile),
        "lora": profile.lora.model_dump(mode="json") if profile.lora is not None else None,
    }


def config_hash(method: str, profile: HyperParams, extra: dict[str, Any] | None = None) -> str:
    """``sha256:<hex>`` of the canonical JSON of the method, the settings and ``extra``:
    equal configurations hash equally, whatever the key order."""
    document = {
        "method": method,
        "settings": _hashed_settings(method, profile),
        "extra": extra or {},
    }
    canonical = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
