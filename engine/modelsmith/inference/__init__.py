"""Inference backends: transformers (CPU default) | vLLM (GPU) | OpenAI-compatible endpoints.

Importing this package imports no ML library: :func:`make_backend` imports the chosen
backend's module (and with it torch, vllm, ...) only when it builds one.
"""

from .base import Backend, Generation, GenerationRequest, InferenceError, ProgressFn
from .factory import BACKENDS, make_backend

__all__ = [
    "BACKENDS",
    "Backend",
    "Generation",
    "GenerationRequest",
    "InferenceError",
    "ProgressFn",
    "make_backend",
]
