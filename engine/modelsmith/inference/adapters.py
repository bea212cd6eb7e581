"""Several LoRA versions on one base model: the base loaded once, each version an adapter.

:class:`MultiAdapterBackend` is the transformers backend with PEFT adapters attached by name
(``attach``/``detach``). A request's ``adapter`` picks the adapter that answers it
(:data:`BASE`, or None, for the base model itself); rows of different adapters share a batch
and one ``generate()`` call (PEFT's mixed-batch inference, ``adapter_names=[...]``), so a
batch may mix production, canary and shadow of a specialist. The adapters are never merged:
greedy answers equal those of each adapter merged and run alone (up to float rounding).

:func:`merged` is one adapter merged into its base: what the single-model transformers
backend runs for an adapter folder. :func:`multi_adapter_backend` builds the backend for a
base on the engine asked for (``transformers``, or ``vllm`` with one ``LoRARequest`` per
version, see :mod:`.vllm_backend`).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..artifacts.models import ResolvedModel
from .base import BASE_ADAPTER as BASE  # PEFT's own name for the base in adapter_names
from .base import Generation, GenerationRequest, InferenceError, ProgressFn
from .transformers_backend import TransformersBackend


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without PEFT's notices that say nothing here: transformers' deprecated
    ``is_gradient_checkpointing`` (called by PEFT 0.21), and the active adapter changing
    when one is deleted (every batch names its rows' adapters)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        yield


def merged(model: Any, adapter: Path) -> Any:
    """``model`` (the base) with the LoRA adapter in ``adapter`` merged into its weights."""
    from peft import PeftModel

    try:
        with _quiet():
            return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise InferenceError(f"cannot load the LoRA adapter {adapter} on its base: {exc}") \
            from exc


class MultiAdapterBackend(TransformersBackend):
    """One base model with LoRA adapters attached by name; per-row adapters in a batch.

    ``model`` is the base (a :class:`ResolvedModel` without ``adapter``); the other
    arguments are the transformers backend's. Generation, attaching and detaching hold
    one lock: a batch never sees an adapter come or go halfway.
    """

    def __init__(self, model: ResolvedModel, **options: Any) -> None:
        if model.adapter is not None:
            raise InferenceError(f"{model.ref}: a multi-adapter backend loads the base, not "
                                 "an adapter; attach adapters to it")
        super().__init__(model, **options)
        self._lock = threading.RLock()
        self.adapters: dict[str, Path] = {}  # attached: name -> folder
        self._rows: list[str] = []

    def attach(self, name: str, folder: Path) -> None:
        """Load the adapter in ``folder`` as ``name`` (again under a name it has: no-op)."""
        from peft import PeftModel

        if not name or name == BASE or "." in name:
            raise InferenceError(f"adapter name {name!r}: must be non-empty, not {BASE!r}, "
                                 "without '.'")
        with self._lock:
            self._check()
            if name in self.adapters:
                return
            try:
                with _quiet():
                    if self.adapters:
                        self.model.load_adapter(str(folder), adapter_name=name)
                    else:
                        self.model = PeftModel.from_pretrained(self.model, str(folder),
                                                               adapter_name=name)
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise InferenceError(f"cannot attach the LoRA adapter {folder} as {name!r} "
                                     f"to {self.resolved.ref}: {exc}") from exc
            self.model.eval()
            self.adapters[name] = Path(folder)

    def detach(self, name: str) -> None:
        """Drop adapter ``name`` (its memory with it); the last one leaves the bare base."""
        with self._lock:
            if name not in self.adapters or self.model is None:
                return
            del self.adapters[name]
            with _quiet():
                if self.adapters:
                    self.model.delete_adapter(name)
                else:
                    self.model = self.model.unload()
            self.model.eval()

    def generate(
        self, requests: Sequence[GenerationRequest], progress: ProgressFn | None = None,
        **kwargs: Any,
    ) -> list[Generation]:
        with self._lock:
            for index, request in enumerate(requests):
                if request.adapter not in (None, BASE) and request.adapter not in self.adapters:
                    raise InferenceError(
                        f"request {index}: no adapter {request.adapter!r} on "
                        f"{self.resolved.ref} (attached: {', '.join(self.adapters) or 'none'})")
            return super().generate(requests, progress, **kwargs)

    def _generate_batch(self, requests: list[GenerationRequest], encoded: list[list[int]],
                        max_new_tokens: int, *args: Any, **kwargs: Any) -> list[Generation]:
        self._rows = [request.adapter or BASE for request in requests]
        generations = super()._generate_batch(requests, encoded, max_new_tokens, *args,
                                              **kwargs)
        for generation, adapter in zip(generations, self._rows, strict=True):
            generation.meta["adapter"] = adapter
        return generations

    def _generate_options(self) -> dict[str, Any]:
        return {"adapter_names": list(self._rows)} if self.adapters else {}


def multi_adapter_backend(base: ResolvedModel, *, backend: str | None = None,
                          **options: Any) -> Any:
    """A backend of ``base`` that adapters attach to: transformers (default; ``options``
    are its ``threads``, ``batch_size``, ``device``, ``dtype``) or vLLM (one engine with
    LoRA enabled; ``options`` other than ``max_loras``/``max_lora_rank`` are ignored)."""
    if backend in (None, "transformers"):
        return MultiAdapterBackend(base, **{k: v for k, v in options.items()
                                            if k in ("threads", "batch_size", "device",
                                                     "dtype")})
    if backend == "vllm":
        from .vllm_backend import VLLMAdapterBackend

        return VLLMAdapterBackend(base, **{k: v for k, v in options.items()
                                           if k in ("max_loras", "max_lora_rank")})
    raise InferenceError(f"backend '{backend}' cannot serve LoRA adapters on a shared base "
                         "(choose transformers or vllm)")
