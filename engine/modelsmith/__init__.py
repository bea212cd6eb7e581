"""Modelsmith: a control plane for governed domain-specialist small models.

The names a team scripts against: :class:`Modelsmith` (one method per use case, see
:mod:`modelsmith.app`) and :class:`ModelsmithError` (the base of every error a user can
act on). They load on first use, so ``import modelsmith`` (and the CLI's start) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from modelsmith.app import Modelsmith
    from modelsmith.errors import ModelsmithError

__all__ = ["Modelsmith", "ModelsmithError", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Modelsmith":
        from modelsmith.app import Modelsmith

        return Modelsmith
    if name == "ModelsmithError":
        from modelsmith.errors import ModelsmithError

        return ModelsmithError
    raise AttributeError(f"module 'modelsmith' has no attribute {name!r}")
