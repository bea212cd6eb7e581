"""The application layer: the :class:`Modelsmith` façade (one method per use case, see
:mod:`.facade`), scaffolding a repository or a demo fork (:mod:`.scaffold`) and the
onboarding checks (:mod:`.doctor`). The CLI sits on top of it; nothing below imports it."""

from .facade import Evaluation, Modelsmith, Reconciliation, Rollback, Training

__all__ = ["Evaluation", "Modelsmith", "Reconciliation", "Rollback", "Training"]
