"""Several LoRA versions on one base model: the base loaded once, each version an adapter.

:class:`MultiAdapterBackend` is the transformers backend with PEFT adapters attached by name
(``attach``/``detach``). A request's ``adapter`` picks the adapter that answers it
(:data:`BASE`, or None, for the base model itself); rows of different adapters share a batch
and one ``generate()`` call, so a batch may mix production, canary and shadow of a
specialist. The adapters are never merged: greedy answers equal those of each adapter merged
and run alone (up to float rounding).

How a mixed batch runs: PEFT's own mixed-batch inference (``adapter_names=[...]``) gathers
each adapter's rows (a copy), runs its LoRA on them and scatters the result back, in every
LoRA layer at every step: measured 16% slower than the bare base on a SmolLM2-135M prefill
of 32 rows and three adapters, and 0.55x the requests/s of three merged models
(``bench/adapters.py``). Plain LoRA on linear layers (what Modelsmith trains) runs without
the copies instead: the batch's rows are put in adapter order (free: a batch is padded to
its longest row anyway), so each adapter's rows are one slice, and each LoRA layer adds
``(x[slice] @ A.T) @ B.T * scaling`` in place to its slice of the base layer's output (two
BLAS calls, a forward hook on the plain base layer, which takes its PEFT wrapper's place in
the model for the call; generation then runs on the bare transformers model, not through
PEFT's ``generate``: the wrappers and PEFT's per-step input preparation cost about 12% of
the bare base's speed). Other adapter kinds (DoRA, LoRA bias, embedding or convolution
layers) take PEFT's path.

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
        self._layers: dict[Any, dict[str, tuple[Any, Any, float]]] | None = None  # fused

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
            self._layers = None

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
            self._layers = None

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
        # The batch's rows grouped by adapter (their order within a batch is free: all are
        # padded to its longest): each adapter's rows are then one slice of the batch.
        # Other per-row arguments (a list per request) are put in the same order.
        count = len(requests)
        order = sorted(range(count), key=lambda i: self._rank(requests[i].adapter))

        def arranged(value: Any) -> Any:
            if isinstance(value, list | tuple) and len(value) == count:
                return [value[i] for i in order]
            return value

        rows = [requests[i] for i in order]
        self._rows = [request.adapter or BASE for request in rows]
        generations = super()._generate_batch(
            rows, [encoded[i] for i in order], max_new_tokens,
            *[arranged(a) for a in args], **{k: arranged(v) for k, v in kwargs.items()})
        back: list[Generation] = [generations[0]] * count
        for position, index in enumerate(order):
            generations[position].meta["adapter"] = self._rows[position]
            back[index] = generations[position]
        return back

    def _label_batch(self, requests: list[GenerationRequest], encoded: list[list[int]],
                     max_new_tokens: int,
                     listeners: list[Any] | None = None) -> list[Generation]:
        """Label requests answered by label scoring (:mod:`.labels`), one adapter's rows at
        a time: its scoring passes run with that adapter alone. A listener gets the label
        whole."""
        from . import labels
        from .streaming import emit_whole

        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(request.adapter or BASE, []).append(index)
        out: list[Generation | None] = [None] * len(requests)
        for name, rows in groups.items():
            answered = labels.answer_batch(
                self, [requests[i] for i in rows], [encoded[i] for i in rows],
                max_new_tokens, self._generate_batch,
                scoring=lambda name=name: self._alone(name))  # type: ignore[misc]
            for index, generation in zip(rows, answered, strict=True):
                generation.meta["adapter"] = name
                out[index] = generation
        done = [g for g in out if g is not None]
        emit_whole(listeners, done)
        return done

    @contextlib.contextmanager
    def _alone(self, name: str) -> Iterator[None]:
        """The model's calls inside answered by adapter ``name`` on every row (:data:`BASE`:
        the bare base)."""
        with contextlib.ExitStack() as stack:
            if name == BASE:
                if self.adapters:
                    stack.enter_context(self.model.disable_adapter())
            elif layers := self._fused_layers():
                stack.enter_context(_fused_rows(self.model, layers, [(name, 0, 1 << 62)]))
            else:
                previous = self.model.active_adapter
                self.model.set_adapter(name)
                stack.callback(self.model.set_adapter, previous)
            yield

    def _rank(self, adapter: str | None) -> int:
        names = list(self.adapters)
        return names.index(adapter) + 1 if adapter in self.adapters else 0

    def _generate_options(self) -> dict[str, Any]:
        if not self.adapters or self._fused_layers():
            return {}
        return {"adapter_names": list(self._rows)}  # PEFT's mixed batch

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        layers = self._fused_layers() if self.adapters else None
        if not layers:
            return super()._run(*args, **kwargs)
        peft = self.model
        with _fused_rows(peft, layers, _segments(self._rows)):
            # The wrappers are out of the model: generate on the bare transformers model,
            # not through PEFT's generate (its own input preparation on every step).
            self.model = peft.get_base_model()
            try:
                return super()._run(*args, **kwargs)
            finally:
                self.model = peft

    def _fused_layers(self) -> dict[Any, dict[str, tuple[Any, Any, float]]]:
        """Each LoRA layer's adapters (empty when some layer cannot be fused)."""
        if self._layers is None:
            self._layers = _lora_layers(self.model)
        return self._layers


def _segments(rows: list[str]) -> list[tuple[str, int, int]]:
    """The ``(adapter, start, end)`` runs of ``rows`` (grouped by adapter), the base's left
    out."""
    runs: list[tuple[str, int, int]] = []
    for index, name in enumerate(rows):
        if runs and runs[-1][0] == name:
            runs[-1] = (name, runs[-1][1], index + 1)
        else:
            runs.append((name, index, index + 1))
    return [run for run in runs if run[0] != BASE]


def _lora_layers(model: Any) -> dict[Any, dict[str, tuple[Any, Any, float]]]:
    """Per LoRA layer of ``model``: adapter -> (``A`` weight, ``B`` weight, scaling); {}
    when a layer is not plain LoRA on a linear layer (DoRA, LoRA bias, embeddings, ...)."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    layers = {}
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        if not isinstance(module, LoraLinear) or any(module.use_dora.values()) \
                or any(getattr(module, "lora_bias", {}).values()):
            return {}
        layers[module] = {name: (module.lora_A[name].weight, module.lora_B[name].weight,
                                 float(module.scaling[name])) for name in module.lora_A}
    return layers


@contextlib.contextmanager
def _fused_rows(model: Any, layers: dict[Any, dict[str, tuple[Any, Any, float]]],
                segments: list[tuple[str, int, int]]) -> Iterator[None]:
    """Each LoRA layer's PEFT wrapper taken out of the model for the call (its plain base
    layer put back in its place: the bare base's cost, no wrapper on the path), and each
    base layer adding, for each adapter's slice of the batch (``segments``),
    ``(x @ A.T) * scaling @ B.T`` to its output."""
    plan = {module: [(start, end, *adapters[name]) for name, start, end in segments
                     if name in adapters] for module, adapters in layers.items()}

    def add_lora(steps: list[tuple[int, int, Any, Any, float]]) -> Any:
        def hook(_layer: Any, args: tuple[Any, ...], out: Any) -> Any:
            x = args[0]
            width, size = x.shape[-1], out.shape[-1]
            for start, end, down, up, scaling in steps:
                # Two BLAS calls per slice; the transposes are views, the scaling addmm's.
                rows = out[start:end].view(-1, size)
                rows.addmm_(x[start:end].reshape(-1, width) @ down.T, up.T, alpha=scaling)
            return out
        return hook

    places = {module: name for name, module in model.named_modules() if module in layers}
    swapped, handles = [], []
    try:
        for module, name in places.items():
            parent_name, _, attribute = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, attribute, module.base_layer)
            swapped.append((parent, attribute, module))
            if plan[module]:
                handles.append(module.base_layer.register_forward_hook(add_lora(plan[module])))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for parent, attribute, module in swapped:
            setattr(parent, attribute, module)


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
