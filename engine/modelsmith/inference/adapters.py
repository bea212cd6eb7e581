"""Several LoRA versions on one base model: the base loaded once, each version an adapter.

:class:`MultiAdapterBackend` is the transformers backend with PEFT adapters attached by name
(``attach``/``detach``). A request's ``adapter`` picks the adapter that answers it
(:data:`BASE`, or None, for the base model itself); rows of different adapters share a batch
and one ``generate()`` call, so a batch may mix production, canary and shadow of a
specialist. The adapters are never merged: greedy answers equal those of each adapter merged
and run alone (up to float rounding).

How a mixed batch runs: PEFT's own mixed-batch inference (``adapter_names=[...]``) gathers
each adapter's rows, runs its LoRA on them and scatters the result back, in every LoRA layer
at every step -- measured 16% slower than the bare base on a SmolLM2-135M prefill of 32 rows
and three adapters. Plain LoRA on linear layers (what Modelsmith trains) runs fused instead:
each layer's adapters are stacked once (``A`` as ``[adapters+1, in, r]``, ``B`` scaled as
``[adapters+1, r, out]``, a zero row for the base), each row's pair gathered once per batch,
and the layer adds ``bmm(bmm(x, A_rows), B_rows)`` to the base layer's output (7% slower than
the bare base there; same logits). Other adapter kinds (DoRA, embedding or convolution
layers) fall back to PEFT's path.

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
        self._stacks: dict[Any, tuple[Any, Any]] | None = None  # fused: layer -> (A, B)

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
            self._stacks = None

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
            self._stacks = None

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
        if not self.adapters or self._fused_stacks():
            return {}
        return {"adapter_names": list(self._rows)}  # PEFT's mixed batch

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        stacks = self._fused_stacks() if self.adapters else None
        if not stacks:
            return super()._run(*args, **kwargs)
        with _fused_rows(self.model, stacks, [self._order.index(r) for r in self._rows]):
            return super()._run(*args, **kwargs)

    def _fused_stacks(self) -> dict[Any, tuple[Any, Any]]:
        """Each LoRA layer's adapters stacked (empty when some layer cannot be fused)."""
        if self._stacks is None:
            self._order = [BASE, *self.adapters]
            self._stacks = _stack_adapters(self.model, self._order[1:])
        return self._stacks


def _stack_adapters(model: Any, names: list[str]) -> dict[Any, tuple[Any, Any]]:
    """Per LoRA layer of ``model``: ``A`` ``[1+len(names), in, r]`` and ``B`` (scaled)
    ``[1+len(names), r, out]``, row 0 zeros (the base); {} when a layer is not plain LoRA
    on a linear layer."""
    import torch
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    stacks = {}
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        if not isinstance(module, LoraLinear) or any(module.use_dora.values()) \
                or any(getattr(module, "lora_bias", {}).values()):
            return {}
        weight = module.base_layer.weight
        rank = max((module.lora_A[n].out_features for n in names if n in module.lora_A),
                   default=1)
        a = torch.zeros(1 + len(names), module.in_features, rank, dtype=weight.dtype,
                        device=weight.device)
        b = torch.zeros(1 + len(names), rank, module.out_features, dtype=weight.dtype,
                        device=weight.device)
        with torch.no_grad():
            for row, name in enumerate(names, start=1):
                if name in module.lora_A:
                    down, up = module.lora_A[name].weight, module.lora_B[name].weight
                    a[row, :, :down.shape[0]] = down.T
                    b[row, :up.shape[1], :] = up.T * module.scaling[name]
        stacks[module] = (a, b)
    return stacks


@contextlib.contextmanager
def _fused_rows(model: Any, stacks: dict[Any, tuple[Any, Any]],
                rows: list[int]) -> Iterator[None]:
    """PEFT's adapters disabled and each LoRA layer adding its rows' adapters (``rows``:
    each batch row's index into the stacks) to the base layer's output."""
    import torch

    index = torch.tensor(rows, dtype=torch.long)
    gathered = {m: (a[index.to(a.device)], b[index.to(b.device)])
                for m, (a, b) in stacks.items()}

    def add_lora(module: Any, args: tuple[Any, ...], out: Any) -> Any:
        a, b = gathered[module]
        x = args[0]
        flat = x.dim() == 2
        if flat:
            x = x.unsqueeze(1)
        delta = torch.bmm(torch.bmm(x.to(a.dtype), a), b)
        return out.add_(delta.squeeze(1) if flat else delta)

    handles = [module.register_forward_hook(add_lora) for module in stacks]
    try:
        with model.disable_adapter():
            yield
    finally:
        for handle in handles:
            handle.remove()


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
