"""vLLM on a CUDA GPU (``pip install -e '.[gpu]'``): same requests, same Generations.

vLLM batches and schedules internally, so every request goes in one call. Chat-template
models go through ``LLM.chat`` (the template in the tokenizer), the others through
``LLM.generate`` with plain prompts. Written against the vLLM 0.33 offline API
(``LLM``, ``SamplingParams``, ``RequestOutput``); it is not exercised on CPU machines.
Listeners get each request's whole text when the call returns (the offline API has no
per-token hook).

LoRA versions (:class:`VLLMAdapterBackend`): one ``LLM(enable_lora=True, max_loras=...,
max_lora_rank=...)`` per base and a ``LoRARequest(name, int_id, path)`` per attached
version; ``LLM.generate`` takes one ``lora_request`` per prompt (None: the base), so one
call mixes versions. Chat-template prompts are rendered with the tokenizer's template for
that call. A single adapter folder given to :class:`VLLMBackend` is served the same way
(every request with its ``LoRARequest``). Untested here: vLLM needs a CUDA GPU.
"""

from __future__ import annotations

import gc
import importlib.util
import itertools
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..artifacts.models import ResolvedModel
from .base import BASE_ADAPTER as BASE
from .base import Generation, GenerationRequest, InferenceError, Listeners, ProgressFn
from .streaming import emit_whole

MISSING = "vllm is not installed: pip install -e '.[gpu]' on a CUDA machine"


def require_vllm() -> None:
    """Raise :class:`InferenceError` unless vllm can be imported."""
    try:
        found = importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise InferenceError(MISSING)


class VLLMBackend:
    """A model served in-process by vLLM."""

    name = "vllm"

    def __init__(
        self,
        model: ResolvedModel,
        *,
        gpu_memory_utilization: float = 0.8,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int | None = None,
        **engine_args: Any,
    ) -> None:
        require_vllm()
        try:
            import vllm
        except ImportError as exc:
            raise InferenceError(f"{MISSING} (import failed: {exc})") from exc
        self._vllm = vllm
        self.resolved = model
        self.model_ref = str(model.adapter or model.source)
        self._lora: Any = None
        if model.adapter is not None:
            from vllm.lora.request import LoRARequest

            engine_args.setdefault("enable_lora", True)
            engine_args.setdefault("max_lora_rank", lora_rank(model.adapter))
            self._lora = LoRARequest("adapter", 1, str(model.adapter))
        try:
            self.llm = vllm.LLM(
                model=model.source,
                dtype=dtype,
                seed=seed,
                gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len or model.max_length,
                **engine_args,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise InferenceError(
                f"vLLM could not load '{model.source}': {exc} (no CUDA GPU, or not enough GPU "
                "memory? lower gpu_memory_utilization)"
            ) from exc
        self.tokenizer = self.llm.get_tokenizer()

    def _params(self, request: GenerationRequest) -> Any:
        return self._vllm.SamplingParams(
            n=1,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_new_tokens,
            seed=request.seed,
            stop=list(request.stop) or None,
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(
        self, requests: Sequence[GenerationRequest], progress: ProgressFn | None = None,
        listeners: Listeners | None = None,
    ) -> list[Generation]:
        if not requests:
            return []
        params = [self._params(r) for r in requests]
        started = time.perf_counter()
        loras = self._loras(requests)
        if loras is not None:
            outputs = self._generate_with_loras(requests, params, loras)
        elif self.resolved.chat_template:
            conversations = []
            for request in requests:
                messages = []
                if request.system:
                    messages.append({"role": "system", "content": request.system})
                messages.append({"role": "user", "content": request.prompt})
                conversations.append(messages)
            outputs = self.llm.chat(
                conversations, sampling_params=params, use_tqdm=False,
                add_generation_prompt=True,
            )
        else:
            prompts = [
                f"{r.system}\n{r.prompt}" if r.system else r.prompt for r in requests
            ]
            outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        latency_ms = (time.perf_counter() - started) * 1000.0
        results = []
        for output in outputs:
            completion = output.outputs[0]
            results.append(
                Generation(
                    text=completion.text,
                    completion_tokens=len(completion.token_ids),
                    latency_ms=latency_ms,
                    finish_reason="length" if completion.finish_reason == "length" else "stop",
                    meta={"batch_size": len(requests), "finish_reason": completion.finish_reason},
                )
            )
        emit_whole(listeners, results)
        if progress is not None:
            progress(len(requests), len(requests))
        return results

    def _prompt(self, request: GenerationRequest) -> str:
        """The request's prompt text: the chat template applied (a chat model), else the
        system prompt and the prompt, as ``generate`` sends them."""
        if self.resolved.chat_template:
            messages = []
            if request.system:
                messages.append({"role": "system", "content": request.system})
            messages.append({"role": "user", "content": request.prompt})
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        return f"{request.system}\n{request.prompt}" if request.system else request.prompt

    def _loras(self, requests: Sequence[GenerationRequest]) -> list[Any] | None:
        """Each request's ``LoRARequest`` (None: the base); None when no LoRA is served."""
        return None if self._lora is None else [self._lora] * len(requests)

    def _generate_with_loras(self, requests: Sequence[GenerationRequest], params: list[Any],
                             loras: list[Any]) -> list[Any]:
        """One ``LLM.generate`` call, each prompt with its ``LoRARequest`` (None: base)."""
        return self.llm.generate([self._prompt(r) for r in requests], sampling_params=params,
                                 lora_request=loras, use_tqdm=False)

    def close(self) -> None:
        self.llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def lora_rank(folder: Path) -> int:
    """The rank ``r`` of the LoRA adapter in ``folder`` (16 when its config does not say)."""
    try:
        config = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8"))
        return int(config.get("r") or 16)
    except (OSError, ValueError, TypeError, AttributeError):
        return 16


class VLLMAdapterBackend(VLLMBackend):
    """One vLLM engine of a base with LoRA enabled; versions attach as ``LoRARequest``s.

    ``max_loras`` adapters are resident on the GPU at once (vLLM swaps the others in from
    CPU memory as requests need them); ``max_lora_rank`` must be at least every attached
    adapter's rank.
    """

    def __init__(self, model: ResolvedModel, *, max_loras: int = 4, max_lora_rank: int = 64,
                 **options: Any) -> None:
        if model.adapter is not None:
            raise InferenceError(f"{model.ref}: a multi-adapter backend loads the base, not "
                                 "an adapter; attach adapters to it")
        super().__init__(model, enable_lora=True, max_loras=max_loras,
                         max_lora_rank=max_lora_rank, **options)
        self.max_lora_rank = max_lora_rank
        self.adapters: dict[str, Any] = {}  # attached: name -> LoRARequest
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def attach(self, name: str, folder: Path) -> None:
        """``folder`` as adapter ``name``: a ``LoRARequest`` with a fresh integer id (vLLM
        loads its weights on the first request that names it)."""
        from vllm.lora.request import LoRARequest

        rank = lora_rank(folder)
        if rank > self.max_lora_rank:
            raise InferenceError(f"adapter {folder} has rank {rank}, more than this engine's "
                                 f"max_lora_rank {self.max_lora_rank}")
        with self._lock:
            if name not in self.adapters:
                self.adapters[name] = LoRARequest(name, next(self._ids), str(folder))

    def detach(self, name: str) -> None:
        """Forget adapter ``name`` and drop it from the engine's LoRA cache."""
        with self._lock:
            lora = self.adapters.pop(name, None)
        if lora is not None and self.llm is not None:
            self.llm.llm_engine.remove_lora(lora.lora_int_id)

    def _loras(self, requests: Sequence[GenerationRequest]) -> list[Any]:
        with self._lock:
            loras = []
            for index, request in enumerate(requests):
                if request.adapter in (None, BASE):
                    loras.append(None)
                elif request.adapter in self.adapters:
                    loras.append(self.adapters[request.adapter])
                else:
                    raise InferenceError(
                        f"request {index}: no adapter {request.adapter!r} on "
                        f"{self.resolved.ref} (attached: {', '.join(self.adapters) or 'none'})")
        return loras
