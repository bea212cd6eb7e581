"""Trainers on TRL: ``sft`` (SFTTrainer), ``grpo`` (GRPOTrainer on the rubric reward) and
``sft+grpo`` (a short SFT warm start, then GRPO from that model).

No training loop lives here: this module loads the model, hands TRL its config
(:mod:`.config`), the rows and the reward, records what TRL logs, merges a LoRA adapter into
the base weights and saves a plain Hugging Face folder the eval backend loads as is.
torch, transformers, trl and peft are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from modelsmith.errors import ModelsmithError
from modelsmith.specs.clusters import HyperParams

from .checkpoints import SFT_MODEL, intact_model, seal
from .config import (
    TrainingConfigError,
    check_method,
    grpo_config,
    prompts_per_step,
    sft_config,
    sft_steps,
    torch_threads,
)
from .reward import EXPECTED, EXPECTED_JSON, RUBRIC_KEY, SCENARIO_ID, encode_expected, rubric_key

ProgressFn = Callable[[dict[str, Any]], None]
RewardFn = Callable[..., list[float]]

#: Packages whose versions a run records for lineage.
TRAINER_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets")
#: Share of the logged GRPO steps averaged into ``reward_start`` and ``reward_end``.
REWARD_WINDOW = 0.25


class TrainingError(ModelsmithError, RuntimeError):
    """A training run that could not start or finish; the message says what to change."""


@dataclass
class TrainResult:
    """What a finished run produced: the weights folder and what TRL measured on the way."""

    out_dir: Path  # a plain Hugging Face folder: config, merged weights, tokenizer
    method: str
    steps: int  # optimiser steps over all phases
    duration_s: float
    metrics: dict[str, float]  # the final phase's last log and summary, + reward_start/_end
    history: list[dict[str, Any]] = field(default_factory=list)  # every log, with its phase
    versions: dict[str, str] = field(default_factory=dict)


def trainer_versions() -> dict[str, str]:
    """Installed versions of the training stack (``"missing"`` for an absent package)."""
    versions = {}
    for name in TRAINER_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def _sft_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with a reference answer; in ``sft+grpo`` the others are GRPO prompts only."""
    return [row for row in rows if row.get("completion")]


def _check_rows(method: str, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        raise TrainingError("no training rows: build a dataset first")
    needs = ["prompt"]
    if method == "sft":
        needs.append("completion")
    if method in ("grpo", "sft+grpo"):
        needs += [SCENARIO_ID, EXPECTED]
    if method == "sft+grpo" and not _sft_rows(rows):
        raise TrainingError("sft+grpo needs some rows with a reference 'completion' for SFT")
    for index, row in enumerate(rows):
        missing = [key for key in needs
                   if key not in row or (key == "completion" and not row[key])]
        if missing:
            raise TrainingError(
                f"training row {index} lacks {', '.join(missing)} (method {method} needs: "
                f"{', '.join(needs)})"
            )


def _lora_config(profile: HyperParams) -> Any:
    lora = profile.lora
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        # The profile may leave the choice to us: every linear layer, as measured on SmolLM2.
        target_modules=list(lora.target_modules) if lora.target_modules else "all-linear",
        task_type="CAUSAL_LM",
    )


@contextlib.contextmanager
def _quiet_session(threads: int) -> Iterator[None]:
    """``threads`` torch threads, no library progress bars, no library deprecation noise;
    restored afterwards (all of them are process-wide settings)."""
    import datasets
    import torch
    import transformers

    before = torch.get_num_threads()
    bars = datasets.is_progress_bar_enabled()
    torch.set_num_threads(threads)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # TRL 1.16 still calls transformers' deprecated is_gradient_checkpointing.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing",
                                    category=FutureWarning)
            yield
    finally:
        torch.set_num_threads(before)
        if bars:
            datasets.enable_progress_bars()


def _recorder(phase: str, total: int, history: list[dict[str, Any]],
              progress: ProgressFn | None) -> Any:
    from transformers import TrainerCallback

    class _Recorder(TrainerCallback):
        """Keeps every log TRL emits (one per step: logging_steps=1) and passes it on."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kwargs: Any) -> None:
            if not logs:
                return
            entry: dict[str, Any] = {"phase": phase, "step": int(state.global_step)}
            entry.update(
                (key, float(value)) for key, value in logs.items()
                if isinstance(value, int | float) and not isinstance(value, bool)
            )
            history.append(entry)
            if progress is not None:
                progress({**entry, "total": total})

    return _Recorder()


def _sealer() -> Any:
    from transformers import TrainerCallback

    from .checkpoints import seal

    class _Sealer(TrainerCallback):
        """Seals each checkpoint once the trainer has written all of it."""

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                seal(folder)

    return _Sealer()


def _restored_history(checkpoint: Path, phase: str) -> list[dict[str, Any]]:
    """The per-step logs up to ``checkpoint``, from its trainer state."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    out = []
    for logs in state.get("log_history", []):
        entry: dict[str, Any] = {"phase": phase, "step": int(logs.get("step", 0))}
        entry.update((k, float(v)) for k, v in logs.items() if k != "step"
                     and isinstance(v, int | float) and not isinstance(v, bool))
        out.append(entry)
    return out


def _unwrap(model: Any) -> Any:
    """The plain model: a LoRA adapter merged into its base weights."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def _fit(trainer: Any, phase: str, resume: Resume | None,
         history: list[dict[str, Any]]) -> tuple[Any, int]:
    """Train (from the phase's newest intact checkpoint when resuming); return the plain
    model and the optimiser steps taken."""
    from transformers import PrinterCallback

    from .checkpoints import newest_intact

    trainer.remove_callback(PrinterCallback)  # our recorder reports progress instead
    start = None
    if resume is not None:
        trainer.add_callback(_sealer())
        start = newest_intact(Path(trainer.args.output_dir), resume.say)
        if start is not None:
            resume.say(f"resuming {phase} from {start}")
            history.extend(_restored_history(start, phase))
    trainer.train(resume_from_checkpoint=str(start) if start else None)
    return _unwrap(trainer.model), int(trainer.state.global_step)


@dataclass(frozen=True)
class Resume:
    """Where a resumable run keeps its checkpoints, and how it reports what it reuses."""

    root: Path
    say: Callable[[str], None]


@dataclass
class _Run:
    """One run's own values beside its profile: where it works and what it recorded."""

    method: str
    profile: HyperParams
    work: Path  # the checkpoint folder of a resumable run, else a temporary one
    resume: Resume | None
    progress: ProgressFn | None
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0  # optimiser steps over all phases


def _run_sft(run: _Run, model: Any, tokenizer: Any,
             rows: Sequence[dict[str, Any]]) -> tuple[Any, int]:
    from datasets import Dataset
    from trl import SFTTrainer

    steps = sft_steps(run.method, run.profile)
    dataset = Dataset.from_list(
        [{"prompt": row["prompt"], "completion": row["completion"]} for row in _sft_rows(rows)]
    )
    trainer = SFTTrainer(
        model=model,
        args=sft_config(run.profile, run.work / "sft", max_steps=steps),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=_lora_config(run.profile),
        callbacks=[_recorder("sft", steps, run.history, run.progress)],
    )
    return _fit(trainer, "sft", run.resume, run.history)


def _run_grpo(run: _Run, model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]],
              reward_fn: RewardFn) -> tuple[Any, int]:
    from datasets import Dataset
    from trl import GRPOTrainer

    # Expected values go as JSON text: one Arrow type whatever the suite's values are.
    dataset = Dataset.from_list([
        {"prompt": row["prompt"], SCENARIO_ID: str(row[SCENARIO_ID]),
         EXPECTED_JSON: encode_expected(row[EXPECTED]), RUBRIC_KEY: rubric_key(row)}
        for row in rows
    ])
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_fn,
        args=grpo_config(run.profile, run.work / "grpo"),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=_lora_config(run.profile),
        callbacks=[_recorder("grpo", run.profile.max_steps, run.history, run.progress)],
    )
    return _fit(trainer, "grpo", run.resume, run.history)


def _summary(history: list[dict[str, Any]], last_phase: str) -> dict[str, float]:
    """The final phase's last step log and its end-of-run summary; earlier phases' last
    step logs prefixed with their phase; for GRPO the mean reward of the first and last
    quarter of its steps (single steps are noisy)."""
    metrics: dict[str, float] = {}
    by_phase: dict[str, list[dict[str, Any]]] = {}
    for entry in history:
        by_phase.setdefault(entry["phase"], []).append(entry)
    for phase, entries in by_phase.items():
        steps = [e for e in entries if "train_runtime" not in e]
        summary = [e for e in entries if "train_runtime" in e]
        final = {**(steps[-1] if steps else {}), **(summary[-1] if summary else {})}
        final.pop("phase", None)
        final.pop("step", None)
        if phase == last_phase:
            metrics.update(final)
        else:
            metrics.update({f"{phase}/{key}": value for key, value in final.items()})
    rewards = [e["reward"] for e in by_phase.get("grpo", []) if "reward" in e]
    if rewards:
        window = max(1, int(len(rewards) * REWARD_WINDOW))
        metrics["reward_start"] = sum(rewards[:window]) / window
        metrics["reward_end"] = sum(rewards[-window:]) / window
    return metrics


def _save_warm_start(model: Any, tokenizer: Any, folder: Path,
                     history: list[dict[str, Any]], steps: int) -> None:
    """The finished SFT model of ``sft+grpo``, sealed: a resumed run starts GRPO from it."""
    staged = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    model.save_pretrained(staged)
    tokenizer.save_pretrained(staged)
    (staged / "history.json").write_text(json.dumps({"steps": steps, "history": history}),
                                         encoding="utf-8")
    seal(staged)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staged, folder)


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise TrainingError(f"output folder '{out_dir}' exists and is not empty; pick another")
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def _check_request(method: str, rows: Sequence[dict[str, Any]], reward_fn: RewardFn | None,
                   profile: HyperParams) -> None:
    """Refuse a run that cannot work before any library loads."""
    try:
        check_method(method)
    except TrainingConfigError as exc:
        raise TrainingError(str(exc)) from exc
    _check_rows(method, rows)
    if method != "sft" and reward_fn is None:
        raise TrainingError(f"method {method} needs a reward function (make_reward_fn)")
    if method != "sft" and prompts_per_step(profile) < 1:
        raise TrainingError(
            f"GRPO batch × grad_accum ({profile.grpo_batch * profile.grad_accum}) must "
            f"be at least num_generations ({profile.num_generations})"
        )


def _import_training_stack() -> None:
    """torch and transformers, imported before a run's clock starts: ``duration_s`` is the
    training's, not the first import's."""
    for name in ("torch", "transformers"):
        importlib.import_module(name)


def _start_run(method: str, profile: HyperParams, out_dir: Path, checkpoints: Path | None,
               progress: ProgressFn | None, say: Callable[[str], None]) -> _Run:
    """A resumable run (``checkpoints`` and ``profile.checkpoint_steps``) works in the
    checkpoint folder; any other in a temporary sibling of ``out_dir``."""
    resume = Resume(Path(checkpoints), say) if checkpoints and profile.checkpoint_steps \
        else None
    if resume is not None:
        resume.root.mkdir(parents=True, exist_ok=True)
        work = resume.root
    else:
        work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    return _Run(method, profile, work, resume, progress)


def _load_base(model_path: Path) -> tuple[Any, Any]:
    """The tokenizer and the model (float32) of ``model_path``."""
    import torch
    import transformers

    # Left padding: GRPO generates from batches of prompts.
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = transformers.AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    return tokenizer, model


def _resume_warm_start(run: _Run, warm: Path, say: Callable[[str], None]) -> Any:
    """The finished SFT model of an ``sft+grpo`` run cut short; its logs and steps count."""
    import torch
    import transformers

    say(f"resuming from the finished SFT warm start {warm}")
    model = transformers.AutoModelForCausalLM.from_pretrained(warm, dtype=torch.float32)
    saved = json.loads((warm / "history.json").read_text(encoding="utf-8"))
    run.history.extend(saved["history"])
    run.steps += saved["steps"]
    return model


def _train_phases(run: _Run, model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]],
                  reward_fn: RewardFn | None) -> Any:
    """SFT and/or GRPO as the method says; the trained (merged) model."""
    warm = run.work / SFT_MODEL
    resume = run.resume
    if run.method == "sft+grpo" and resume is not None and intact_model(warm, resume.say):
        model = _resume_warm_start(run, warm, resume.say)
    elif run.method in ("sft", "sft+grpo"):
        model, done = _run_sft(run, model, tokenizer, rows)
        run.steps += done
        if run.method == "sft+grpo" and resume is not None:
            _save_warm_start(model, tokenizer, warm, run.history, done)
    if run.method in ("grpo", "sft+grpo"):
        assert reward_fn is not None
        model, done = _run_grpo(run, model, tokenizer, rows, reward_fn)
        run.steps += done
    return model


def _save_model(model: Any, tokenizer: Any, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)  # a run cut short while saving
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def train(
    method: str,
    model_path: Path,
    rows: Sequence[dict[str, Any]],
    reward_fn: RewardFn | None,
    profile: HyperParams,
    out_dir: Path,
    *,
    progress: ProgressFn | None = None,
    checkpoints: Path | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> TrainResult:
    """Train ``model_path`` with ``method`` and save the result to ``out_dir``.

    ``rows`` hold ``prompt`` (rendered as the eval renders it), ``completion`` (the reference
    answer, for SFT), ``expected`` and ``scenario_id`` (for the GRPO reward). In ``sft+grpo``
    a row whose ``completion`` is empty or ``None`` is a GRPO prompt only: the warm start
    may use a few labelled rows and GRPO many prompts.

    ``sft`` runs ``profile.max_steps`` SFT steps; ``grpo`` runs ``profile.max_steps`` GRPO
    steps with ``reward_fn`` (see :func:`~modelsmith.training.reward.make_reward_fn`);
    ``sft+grpo`` runs ``profile.sft_steps`` SFT steps, then ``profile.max_steps`` GRPO steps
    from that model. With ``profile.lora`` each phase trains a LoRA adapter and merges it
    into the weights. ``progress`` receives every log TRL emits (``phase``, ``step``, loss
    or reward, ..., and ``total``: the phase's steps).

    ``out_dir`` must not exist or be empty; it receives a plain Hugging Face folder
    (merged weights and tokenizer), written in a temporary sibling and renamed into place.

    With ``checkpoints`` and ``profile.checkpoint_steps`` the run is resumable
    (:mod:`.checkpoints`): it saves sealed checkpoints there, and a run started again on the
    same folder resumes from the newest intact one (``say`` reports it); the folder is
    removed when the run completes.
    """
    _check_request(method, rows, reward_fn, profile)
    model_path, out_dir = Path(model_path), Path(out_dir)
    if not (model_path / "config.json").is_file():
        raise TrainingError(f"'{model_path}' is not a Hugging Face model folder (no config.json)")
    _prepare_out_dir(out_dir)
    _import_training_stack()
    started = time.perf_counter()
    run = _start_run(method, profile, out_dir, checkpoints, progress, say)
    try:
        with _quiet_session(torch_threads(profile)):
            tokenizer, model = _load_base(model_path)
            model = _train_phases(run, model, tokenizer, rows, reward_fn)
            staged = run.work / "model"
            _save_model(model, tokenizer, staged)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(staged, out_dir)
    finally:
        if run.resume is None:
            shutil.rmtree(run.work, ignore_errors=True)
    if run.resume is not None:  # complete: its checkpoints are spent
        shutil.rmtree(run.work, ignore_errors=True)
    return TrainResult(
        out_dir=out_dir,
        method=method,
        steps=run.steps,
        duration_s=time.perf_counter() - started,
        metrics=_summary(run.history, "grpo" if method != "sft" else "sft"),
        history=run.history,
        versions=trainer_versions(),
    )
