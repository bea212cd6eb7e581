"""LoRA versions served on a shared base: one base load and one batcher per base.

A version whose weights are a LoRA adapter (:mod:`modelsmith.artifacts.adapters`) is not
loaded as a model of its own: :class:`SharedBases` loads its base once (a
:class:`~modelsmith.inference.adapters.MultiAdapterBackend`, or vLLM with LoRA enabled),
behind one :class:`~.batching.Batcher`, and attaches the version as an adapter. Production,
canary and shadow of a specialist therefore share one batcher, and a batch may mix their
rows. The service keeps an :class:`AdapterView` per version, used as it uses a batcher:
``generate`` stamps the request with the version's adapter; ``close`` (the version retired)
lets what it was asked finish, then detaches the adapter; the last view of a base closes it.
Full fine-tunes are not handled here: they load as their own models, as before.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from modelsmith.artifacts.adapters import is_adapter
from modelsmith.inference.base import Generation, GenerationRequest

from .batching import Batcher, BatcherClosed, Listener, answer_within

if TYPE_CHECKING:
    from modelsmith.artifacts.registry import ModelRegistry


def adapter_name(specialist: str, version: str) -> str:
    """The adapter name of ``version`` on its base (unique per specialist, no '.')."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{specialist}--{version}")


@dataclasses.dataclass
class _Base:
    key: tuple[str, bool, int]
    batcher: Batcher
    views: int = 0


class SharedBases:
    """The bases loaded for LoRA versions, each once, and the versions attached to them.

    ``engine`` is the service's backend choice (``backend``, ``device``, ``dtype``);
    ``batching`` its batcher settings (``max_batch``, ``max_wait_ms``).
    """

    def __init__(self, registry: ModelRegistry, engine: dict[str, Any],
                 batching: dict[str, Any]) -> None:
        self.registry = registry
        self.engine = engine
        self.batching = batching
        self._bases: dict[tuple[str, bool, int], _Base] = {}
        self._lock = threading.Lock()
        #: How many bases were loaded (a base loaded again after its last view closed
        #: counts again).
        self.loads = 0

    def open(self, specialist: str, version: str, model: Any) -> AdapterView | None:
        """``version`` (its registry ``model``: the weights and the profile it descends
        from) attached to its base (loaded on first use); None when its weights are full
        weights (the caller loads them as their own model)."""
        from modelsmith.artifacts.models import resolve_model
        from modelsmith.inference.adapters import multi_adapter_backend

        if not is_adapter(model.path):
            return None
        resolved = resolve_model(str(model.path), self.registry.clusters,
                                 repo_root=self.registry.root)
        base = dataclasses.replace(resolved, adapter=None,
                                   chat_template=model.base.chat_template)
        key = (str(base.path), bool(base.chat_template), int(base.max_length))
        name = adapter_name(specialist, version)
        with self._lock:
            shared = self._bases.get(key)
            if shared is None:
                backend = multi_adapter_backend(
                    base, backend=self.engine.get("backend"), device=self.engine["device"],
                    dtype=self.engine["dtype"],
                    batch_size=self.batching.get("max_batch") or 16)
                self.loads += 1
                shared = _Base(key, Batcher(backend, name=f"batch-{base.profile or 'base'}",
                                            **self.batching))
                self._bases[key] = shared
            shared.views += 1
        try:
            shared.batcher.backend.attach(name, model.path)
        except BaseException:
            self._release(shared, name, None)
            raise
        return AdapterView(self, shared, name)

    def _release(self, shared: _Base, name: str, timeout: float | None) -> None:
        """One view of ``shared`` gone: detach its adapter; the last one closes the base."""
        shared.batcher.backend.detach(name)
        with self._lock:
            shared.views -= 1
            last = shared.views == 0
            if last:
                self._bases.pop(shared.key, None)
        if last:
            shared.batcher.close(timeout=timeout)


class _AdapterBackend:
    """The shared base as one version's backend: every request answered by its adapter."""

    def __init__(self, backend: Any, adapter: str) -> None:
        self._backend, self.adapter = backend, adapter
        self.name = backend.name
        self.model_ref = f"{backend.model_ref}+{adapter}"

    def generate(self, requests: Sequence[GenerationRequest], progress: Any = None,
                 **kwargs: Any) -> list[Generation]:
        stamped = [dataclasses.replace(r, adapter=self.adapter) for r in requests]
        return self._backend.generate(stamped, progress, **kwargs)

    def count_tokens(self, text: str) -> int:
        return int(self._backend.count_tokens(text))

    def close(self) -> None:
        """Nothing of its own to release: the view's ``close`` detaches the adapter."""


class AdapterView:
    """One LoRA version on a shared base, used as the service uses a version's batcher."""

    def __init__(self, bases: SharedBases, shared: _Base, name: str) -> None:
        self._bases, self._shared, self.adapter = bases, shared, name
        self.backend = _AdapterBackend(shared.batcher.backend, name)
        self._closed = False
        self._running = 0
        self._idle = threading.Condition()

    @property
    def shared(self) -> Batcher:
        """The batcher of the base, shared with the other versions on it."""
        return self._shared.batcher

    @property
    def sizes(self) -> dict[int, int]:
        return self._shared.batcher.sizes

    @property
    def batches(self) -> int:
        return self._shared.batcher.batches

    def submit(self, request: GenerationRequest,
               listener: Listener | None = None) -> Future[Generation]:
        """Queue ``request`` on the base's batcher, stamped with the version's adapter
        (batched with the base's other versions); ``listener`` as :meth:`Batcher.submit`."""
        with self._idle:
            if self._closed:
                raise BatcherClosed("this version is no longer served")
            self._running += 1
        try:
            future = self._shared.batcher.submit(
                dataclasses.replace(request, adapter=self.adapter), listener)
        except BaseException:
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future: Future[Generation] | None) -> None:
        with self._idle:
            self._running -= 1
            self._idle.notify_all()

    def generate(self, request: GenerationRequest, timeout: float | None = None) -> Generation:
        """The version's answer to ``request``; ``TimeoutError`` after ``timeout`` seconds."""
        return answer_within(self.submit(request), timeout)

    def count_tokens(self, text: str) -> int:
        return self._shared.batcher.count_tokens(text)

    def close(self, *, backend: bool = True, timeout: float | None = None) -> None:
        """Take no more requests, let those asked finish (``timeout`` seconds at most),
        then detach the adapter (the last version of a base closes the base)."""
        with self._idle:
            if self._closed:
                return
            self._closed = True
            self._idle.wait_for(lambda: self._running == 0, timeout)
        self._bases._release(self._shared, self.adapter, timeout)
