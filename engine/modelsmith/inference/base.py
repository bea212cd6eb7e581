"""The inference interface every backend implements (transformers, vLLM, OpenAI-compatible).

Same request in, same result shape out, whichever backend serves it. Backends are built by
``modelsmith.inference.factory``; importing this module imports no ML library.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from modelsmith.errors import InferenceError as InferenceError  # raised by artifacts too

#: The ``adapter`` of a request answered by a multi-adapter backend's base model itself.
BASE_ADAPTER = "__base__"


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to produce. ``prompt`` is the rendered task prompt (user turn).

    ``labels``: the answer must be one of these (a label task). A backend that can score
    them answers a greedy request with the best label from one prompt pass (the
    transformers backend, :mod:`.labels`); the others ignore them and generate."""

    prompt: str
    system: str | None = None
    max_new_tokens: int = 16
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    #: Which adapter of a multi-adapter backend answers (:data:`BASE_ADAPTER`: the base);
    #: None: the backend's own model. Backends with one model ignore it.
    adapter: str | None = None


@dataclass(frozen=True)
class Generation:
    """What a backend returns for one request."""

    text: str
    completion_tokens: int
    latency_ms: float  # wall time of the call that produced it, shared within a batch
    finish_reason: str = "stop"  # "stop" | "length" | "error"
    error: str | None = None
    meta: dict[str, object] = field(default_factory=dict)


ProgressFn = Callable[[int, int], None]  # (done, total)
#: Per request, ``None`` or a function called with each new piece of its text as it is
#: generated; the pieces add up to the Generation's text (:mod:`.streaming`).
Listeners = Sequence[Callable[[str], None] | None]


@runtime_checkable
class Backend(Protocol):
    """A loaded model that turns requests into generations."""

    name: str  # e.g. "transformers", "openai", "vllm"
    model_ref: str  # what was loaded: a path, a hub id, an endpoint model name

    def generate(
        self, requests: Sequence[GenerationRequest], progress: ProgressFn | None = None,
        listeners: Listeners | None = None,
    ) -> list[Generation]:
        """One Generation per request, in order. Batches internally where it can.
        ``listeners`` (one per request, or None): each gets its request's text as it is
        generated -- token by token where the backend can, else all of it at the end."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` under this model's tokenizer (an estimate where none is known)."""
        ...

    def close(self) -> None:
        """Release the model (memory, connections)."""
        ...
