"""Trainers on TRL: ``sft`` (SFTTrainer), ``grpo`` (GRPOTrainer on the rubric reward) and
``sft+grpo`` (a short SFT warm start, then GRPO from that model).

No training loop lives here: this module loads the model, hands TRL its config
(:mod:`.config`), the rows and the reward, records what TRL logs and saves the result. A
full fine-tune (``lora: null``) saves a plain Hugging Face folder; with ``profile.lora`` the
result is a PEFT adapter folder of the *base model* (:mod:`modelsmith.artifacts.adapters`):
a run from a parent that is itself an adapter loads the base with that adapter trainable and
continues training it, so every version of a specialist is an adapter of the same base.
torch, transformers, trl and peft are imported inside the functions.

Before any step the lengths are settled (:mod:`.lengths`): GRPO's ``max_completion_length``
follows the task when the profile leaves it out, and a prompt or reference that does not fit
is an error. During GRPO a watch stops a phase with no learning signal -- every group's
rewards identical, ``no_signal_steps`` logged steps in a row. When no step before had a
signal, that is :class:`NoSignalError` (failure class ``no_signal``): the job fails and its
recovery decides what next. After steps with a signal it means the policy converged (one
answer per prompt, nothing left to compare): the phase stops early, keeps its weights and
says so in the result's ``warnings`` and ``grpo_stopped_early_step``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

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
from .lengths import Lengths, fit_lengths, model_max_length
from .reward import (
    EXPECTED,
    EXPECTED_JSON,
    RUBRIC_KEY,
    SCENARIO_ID,
    encode_expected,
    rubric_key,
)

ProgressFn = Callable[[dict[str, Any]], None]
RewardFn = Callable[..., list[float]]

#: Packages whose versions a run records for lineage.
TRAINER_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets")
#: Share of the logged GRPO steps averaged into ``reward_start`` and ``reward_end``.
REWARD_WINDOW = 0.25
#: The top score of the rubric reward: a step where every completion has it is solved.
REWARD_CEILING = 1.0
#: Tolerance for "every group's rewards identical" and "at the top score".
_EPS = 1e-6


class TrainingError(ModelsmithError, RuntimeError):
    """A training run that could not start or finish; the message says what to change."""


class NoSignalError(TrainingError):
    """GRPO stopped: every group's rewards were identical for ``steps`` logged steps in a
    row, so no completion was better than another and GRPO had nothing to learn from.

    The message names the failure class (``no_signal``) and the completion length with its
    cap (``max_completion_length L (at most C)``): the recovery reads both from the log."""

    def __init__(self, steps: int, first: int, last: int, reward: float,
                 max_completion_length: int, cap: int | None, clipped: float | None) -> None:
        self.steps, self.first, self.last, self.reward = steps, first, last, reward
        self.max_completion_length, self.cap, self.clipped = max_completion_length, cap, clipped
        at_most = cap if cap is not None else max_completion_length
        hint = (f"; {clipped:.0%} of the last step's completions hit the length limit"
                if clipped is not None else "")
        where = (f"{steps} consecutive logged steps ({first}-{last})" if steps > 1
                 else f"logged step {last}")
        super().__init__(
            f"GRPO stopped: no learning signal (no_signal): in {where} every group's "
            f"completions scored alike (mean reward {reward:.3g}), so no completion was "
            f"better than another; max_completion_length {max_completion_length} (at most "
            f"{at_most}){hint}"
        )


@dataclass
class TrainResult:
    """What a finished run produced: the weights folder and what TRL measured on the way."""

    out_dir: Path  # a plain Hugging Face folder, or a LoRA adapter folder of the base
    method: str
    steps: int  # optimiser steps over all phases
    duration_s: float
    metrics: dict[str, float]  # the final phase's last log and summary, + reward_start/_end
    history: list[dict[str, Any]] = field(default_factory=list)  # every log, with its phase
    versions: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # e.g. GRPO skipped: why, what was kept


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


Signal = Literal["signal", "none", "solved"]


def reward_signal(logs: Mapping[str, Any]) -> Signal | None:
    """What one logged GRPO step says about the learning signal: ``"signal"`` when some
    group's rewards differ (GRPO learns from the difference); ``"none"`` when every group's
    rewards were identical (TRL's ``frac_reward_zero_std`` is 1; ``reward_std`` 0 where
    that is not logged); ``"solved"`` when they were identical because every completion had
    the top score (:data:`REWARD_CEILING`): nothing left to learn, which is not a failure.
    ``None`` for a log that is not a GRPO step (no ``reward``)."""
    reward = logs.get("reward")
    if not isinstance(reward, int | float):
        return None
    zero_std = logs.get("frac_reward_zero_std")
    if isinstance(zero_std, int | float):
        flat = zero_std >= 1.0 - _EPS
    else:
        std = logs.get("reward_std")
        flat = isinstance(std, int | float) and abs(std) <= _EPS
    if not flat:
        return "signal"
    return "solved" if reward >= REWARD_CEILING - _EPS else "none"


def _no_signal_watch(steps: int) -> Any:
    from transformers import TrainerCallback

    class _NoSignalWatch(TrainerCallback):
        """Stops GRPO after ``steps`` logged steps in a row without a learning signal; a
        solved step neither counts nor breaks the run, a step with a signal ends it.

        ``converged`` says whether some earlier step of the phase had a signal: then the
        policy learnt and has since collapsed onto one answer per prompt (every group's
        completions alike), so further steps have nothing to learn from either -- the run
        stops early and keeps its weights. Without any signal before the streak, GRPO never
        had anything to learn from: the run fails (:class:`NoSignalError`)."""

        def __init__(self) -> None:
            self.streak: list[dict[str, Any]] = []
            self.fired: list[dict[str, Any]] | None = None
            self.had_signal = False

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kwargs: Any) -> None:
            signal = reward_signal(logs or {})
            if signal == "signal":
                self.streak = []
                self.had_signal = True
            elif signal == "none":
                self.streak.append({**logs, "step": int(state.global_step)})
                if len(self.streak) >= steps and self.fired is None:
                    self.fired = self.streak[-steps:]
                    control.should_training_stop = True

        @property
        def converged(self) -> bool:
            return self.fired is not None and self.had_signal

    return _NoSignalWatch()


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
    """The trained model; of a LoRA run its adapter alone (GRPO's frozen reference copy of
    it, when ``beta`` made one, removed)."""
    from peft import PeftModel

    if isinstance(model, PeftModel) and "ref" in model.peft_config:
        model.delete_adapter("ref")
    return model


def _with_adapter(run: _Run, model: Any) -> Any:
    """The model a LoRA run trains: ``model`` (the base) with the parent's adapter loaded
    trainable when the run starts from one, else with a fresh adapter of the profile's
    ``lora``. A full fine-tune from an adapter parent trains the parent merged."""
    from peft import PeftModel, get_peft_model

    if run.parent_adapter is not None:
        model = PeftModel.from_pretrained(model, run.parent_adapter,
                                          is_trainable=run.profile.lora is not None)
        return model if run.profile.lora is not None else model.merge_and_unload()
    if run.profile.lora is None:
        return model
    import transformers

    transformers.set_seed(run.profile.seed)  # the adapter's initial A: the same every run
    return get_peft_model(model, _lora_config(run.profile))


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
    base: Path  # the base model's folder
    parent_adapter: Path | None  # the adapter the run starts from (a LoRA parent)
    resume: Resume | None
    progress: ProgressFn | None
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0  # optimiser steps over all phases
    lengths: Lengths | None = None  # settled before training (fit_lengths)
    skip_grpo: str | None = None  # why GRPO does not run (a recovery's decision)
    warnings: list[str] = field(default_factory=list)
    stopped_early: int | None = None  # the GRPO step a converged policy stopped at


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
    lengths = run.lengths
    completion = lengths.max_completion_length if lengths is not None else None
    callbacks = [_recorder("grpo", run.profile.max_steps, run.history, run.progress)]
    watch = _no_signal_watch(run.profile.no_signal_steps) if run.profile.no_signal_steps \
        else None
    if watch is not None:
        callbacks.append(watch)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_fn,
        args=grpo_config(run.profile, run.work / "grpo", max_completion_length=completion),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trained = _fit(trainer, "grpo", run.resume, run.history)
    if watch is not None and watch.fired:
        window = watch.fired
        reward = sum(float(e["reward"]) for e in window) / len(window)
        if not watch.converged:
            clipped = window[-1].get("completions/clipped_ratio")
            raise NoSignalError(
                len(window), window[0]["step"], window[-1]["step"], reward,
                int(trainer.args.max_completion_length),
                lengths.cap if lengths is not None else None,
                float(clipped) if isinstance(clipped, int | float) else None)
        run.warnings.append(
            f"GRPO stopped early at step {window[-1]['step']} of {run.profile.max_steps}: "
            f"every group's completions scored alike in {len(window)} consecutive logged "
            f"steps ({window[0]['step']}-{window[-1]['step']}, mean reward {reward:.3g}) "
            "after earlier steps had a learning signal: the policy converged; its weights "
            "are kept")
        run.stopped_early = window[-1]["step"]
    return trained


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


def _run_metrics(run: _Run) -> dict[str, float]:
    """:func:`_summary`, with GRPO's completion length, and ``grpo_skipped`` when it did
    not run."""
    metrics = _summary(run.history, "grpo" if run.method != "sft" else "sft")
    if run.method != "sft":
        if run.skip_grpo:
            metrics["grpo_skipped"] = 1.0
        elif run.lengths is not None and run.lengths.max_completion_length is not None:
            metrics["max_completion_length"] = float(run.lengths.max_completion_length)
        if run.stopped_early is not None:
            metrics["grpo_stopped_early_step"] = float(run.stopped_early)
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
               progress: ProgressFn | None, say: Callable[[str], None], base: Path,
               parent_adapter: Path | None) -> _Run:
    """A resumable run (``checkpoints`` and ``profile.checkpoint_steps``) works in the
    checkpoint folder; any other in a temporary sibling of ``out_dir``."""
    resume = Resume(Path(checkpoints), say) if checkpoints and profile.checkpoint_steps \
        else None
    if resume is not None:
        resume.root.mkdir(parents=True, exist_ok=True)
        work = resume.root
    else:
        work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    return _Run(method, profile, work, base, parent_adapter, resume, progress)


def _base_of(model_path: Path, clusters: Any) -> tuple[Path, Path | None]:
    """The base model's folder and, when ``model_path`` is an adapter, that adapter."""
    from modelsmith.artifacts.adapters import is_adapter
    from modelsmith.artifacts.models import resolve_model

    if is_adapter(model_path):
        try:
            base = resolve_model(str(model_path), clusters, progress=lambda _m: None).path
        except ModelsmithError as exc:
            raise TrainingError(f"cannot train from the adapter {model_path}: {exc}") \
                from None
        assert base is not None  # an adapter's base is a folder
        return base, model_path
    if not (model_path / "config.json").is_file():
        raise TrainingError(f"'{model_path}' is not a Hugging Face model folder (no "
                            "config.json) nor a LoRA adapter (no adapter_config.json)")
    return model_path, None


def _load_tokenizer(model_path: Path) -> Any:
    """The tokenizer of ``model_path``, padding on the left (GRPO generates from batches of
    prompts)."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_model(model_path: Path) -> Any:
    """The model of ``model_path``, in float32."""
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)


def _settle_lengths(method: str, model_path: Path, tokenizer: Any,
                    rows: Sequence[dict[str, Any]], profile: HyperParams, output: Any,
                    profile_name: str | None) -> Lengths:
    """:func:`~.lengths.fit_lengths` with the model's tokenizer and length."""
    def answer(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt(text: str) -> int:  # as TRL encodes it
        return len(tokenizer(text)["input_ids"])

    limit = model_max_length(model_path, getattr(tokenizer, "model_max_length", None))
    return fit_lengths(method, rows, profile, answer, max_length=limit, count_prompt=prompt,
                       output=output, profile_name=profile_name)


def _resume_warm_start(run: _Run, base: Any, warm: Path, say: Callable[[str], None]) -> Any:
    """The finished SFT model of an ``sft+grpo`` run cut short (an adapter of it on
    ``base``, the loaded base model); its logs and steps count."""
    from peft import PeftModel

    from modelsmith.artifacts.adapters import is_adapter

    say(f"resuming from the finished SFT warm start {warm}")
    if is_adapter(warm):
        model = PeftModel.from_pretrained(base, warm, is_trainable=True)
    else:
        model = _load_model(warm)
    saved = json.loads((warm / "history.json").read_text(encoding="utf-8"))
    run.history.extend(saved["history"])
    run.steps += saved["steps"]
    return model


def _train_phases(run: _Run, model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]],
                  reward_fn: RewardFn | None) -> Any:
    """SFT and/or GRPO as the method says, from ``model`` (the base); the trained model
    (of a LoRA run, the base with its adapter)."""
    warm = run.work / SFT_MODEL
    resume = run.resume
    if run.method == "sft+grpo" and resume is not None and intact_model(warm, resume.say):
        model = _resume_warm_start(run, model, warm, resume.say)
    elif run.method in ("sft", "sft+grpo"):
        model = _with_adapter(run, model)
        model, done = _run_sft(run, model, tokenizer, rows)
        run.steps += done
        if run.method == "sft+grpo" and resume is not None:
            _save_warm_start(model, tokenizer, warm, run.history, done)
    elif run.method == "grpo":
        model = _with_adapter(run, model)
    if run.method in ("grpo", "sft+grpo") and run.skip_grpo:
        kept = "the SFT result" if run.method == "sft+grpo" else "the base weights, untrained"
        run.warnings.append(f"GRPO skipped ({run.skip_grpo}): the weights are {kept}")
    elif run.method in ("grpo", "sft+grpo"):
        assert reward_fn is not None
        model, done = _run_grpo(run, model, tokenizer, rows, reward_fn)
        run.steps += done
    return model


def _canonical_adapter_config(folder: Path) -> None:
    """``adapter_config.json`` with its ``target_modules`` sorted: PEFT writes the set that
    ``all-linear`` expands to in hash order, which differs between processes, and a rebuild
    must hash as the run it repeats."""
    from modelsmith.artifacts.adapters import ADAPTER_CONFIG

    path = folder / ADAPTER_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _save_model(run: _Run, model: Any, tokenizer: Any, folder: Path) -> None:
    """The full weights, or the adapter with the record of its base, and the tokenizer."""
    from peft import PeftModel

    from modelsmith.artifacts.adapters import adapter_base, write_adapter_base
    from modelsmith.artifacts.models import cached_base

    if folder.exists():
        shutil.rmtree(folder)  # a run cut short while saving
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if isinstance(model, PeftModel):
        _canonical_adapter_config(folder)
        here = cached_base(run.base)
        if run.parent_adapter is not None:  # the parent's base, wherever it lies here
            here = dataclasses.replace(adapter_base(run.parent_adapter), path=here.path)
        write_adapter_base(folder, here)


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
    output: Any = None,
    profile_name: str | None = None,
    skip_grpo: str | None = None,
    clusters: Any = None,
) -> TrainResult:
    """Train ``model_path`` with ``method`` and save the result to ``out_dir``.

    ``rows`` hold ``prompt`` (rendered as the eval renders it), ``completion`` (the reference
    answer, for SFT), ``expected`` and ``scenario_id`` (for the GRPO reward). In ``sft+grpo``
    a row whose ``completion`` is empty or ``None`` is a GRPO prompt only: the warm start
    may use a few labelled rows and GRPO many prompts.

    ``sft`` runs ``profile.max_steps`` SFT steps; ``grpo`` runs ``profile.max_steps`` GRPO
    steps with ``reward_fn`` (see :func:`~modelsmith.training.reward.make_reward_fn`);
    ``sft+grpo`` runs ``profile.sft_steps`` SFT steps, then ``profile.max_steps`` GRPO steps
    from that model. With ``profile.lora`` both phases train one LoRA adapter of the base
    model; when ``model_path`` is itself an adapter folder (a LoRA parent) its base is
    loaded (the profile it names in ``clusters``, else the folder it was trained on) and the
    parent's adapter trains on (its rank kept). ``progress`` receives every log TRL emits
    (``phase``, ``step``, loss or reward, ..., and ``total``: the phase's steps).

    ``out_dir`` must not exist or be empty; it receives a plain Hugging Face folder (full
    fine-tune) or an adapter folder of the base (``adapter_config.json``,
    ``adapter_model.safetensors``, ``modelsmith-adapter.json``) with the tokenizer, written
    in a temporary sibling and renamed into place.

    With ``checkpoints`` and ``profile.checkpoint_steps`` the run is resumable
    (:mod:`.checkpoints`): it saves sealed checkpoints there, and a run started again on the
    same folder resumes from the newest intact one (``say`` reports it); the folder is
    removed when the run completes.

    Lengths are settled before any step (:mod:`.lengths`): without the profile's
    ``max_completion_length`` GRPO's is derived from ``output`` (the output contract;
    default the reward's ``contract``, as :func:`make_reward_fn` builds it) and the rows'
    reference answers; a profile value shorter than a reference, or a prompt that does not
    fit the model, is a :class:`~.lengths.LengthError` naming ``profile_name`` and the row.
    GRPO that has no learning signal for ``profile.no_signal_steps`` logged steps raises
    :class:`NoSignalError`. With ``skip_grpo`` (the reason) GRPO does not run: ``sft+grpo``
    keeps its SFT result, ``grpo`` the base weights; the result's ``warnings`` say so and
    its metrics have ``grpo_skipped``.
    """
    _check_request(method, rows, reward_fn, profile)
    out_dir = Path(out_dir)
    model_path, parent_adapter = _base_of(Path(model_path), clusters)
    if output is None:
        output = getattr(reward_fn, "contract", None)
    _prepare_out_dir(out_dir)
    _import_training_stack()
    with _quiet_session(torch_threads(profile)):
        tokenizer = _load_tokenizer(model_path)
        lengths = _settle_lengths("sft" if skip_grpo else method, model_path, tokenizer,
                                  rows, profile, output, profile_name)
    started = time.perf_counter()
    run = _start_run(method, profile, out_dir, checkpoints, progress, say, model_path,
                     parent_adapter)
    run.lengths, run.skip_grpo = lengths, skip_grpo
    try:
        with _quiet_session(torch_threads(profile)):
            model = _load_model(model_path)
            model = _train_phases(run, model, tokenizer, rows, reward_fn)
            staged = run.work / "model"
            _save_model(run, model, tokenizer, staged)
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
        metrics=_run_metrics(run),
        history=run.history,
        versions=trainer_versions(),
        warnings=run.warnings,
    )
