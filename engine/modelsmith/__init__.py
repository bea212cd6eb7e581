"""Modelsmith: a control plane for governed domain-specialist small models.

The names a team scripts against: :class:`Modelsmith` (one method per use case, see
:mod:`modelsmith.app`) and :class:`ModelsmithError` (the base of every error a user can
act on).
"""

__version__ = "0.1.0"

from modelsmith.app import Modelsmith
from modelsmith.errors import ModelsmithError

__all__ = ["Modelsmith", "ModelsmithError", "__version__"]
