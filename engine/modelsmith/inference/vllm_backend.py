"""vLLM on a CUDA GPU (``pip install -e '.[gpu]'``): same requests, same Generations.

vLLM batches and schedules internally, so every request goes in one call. Chat-template
models go through ``LLM.chat`` (the template in the tokenizer), the others through
``LLM.generate`` with plain prompts. Written against the vLLM 0.33 offline API
(``LLM``, ``SamplingParams``, ``RequestOutput``); it is not exercised on CPU machines.
Listeners get each request's whole text when the call returns (the offline API has no
per-token hook).
"""

from __future__ import annotations

import gc
import importlib.util
import time
from collections.abc import Sequence
from typing import Any

from ..artifacts.models import ResolvedModel
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
        self.model_ref = model.source
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
        if self.resolved.chat_template:
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

    def close(self) -> None:
        self.llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
