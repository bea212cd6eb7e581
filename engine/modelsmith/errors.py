"""One base for every error a user can cause or fix (like gto's ``exceptions.py``).

Each layer defines its own subclasses next to the code that raises them (``SpecError`` in
``specs``, ``ConcurrencyError`` in ``events``, ``GateFailed``-style errors in ``gitops``...);
the CLI maps errors by class: a :class:`ModelsmithError` is one clear message and its
``exit_code``; anything else is an internal error. This module imports nothing, so every
layer can use it.
"""

from __future__ import annotations

#: The command ran and found a problem (a failed check, a refused change, a missing thing).
EXIT_FAILED = 1
#: The input is invalid (specs, arguments).
EXIT_INVALID = 2
#: An evaluation ran and its composite is below the target.
EXIT_BELOW_TARGET = 3
#: A bug: the engine raised something that is not a :class:`ModelsmithError`.
EXIT_INTERNAL = 70


class ModelsmithError(Exception):
    """An error the user can act on: its message says what is wrong and how to fix it."""

    exit_code: int = EXIT_FAILED

    def user_lines(self) -> list[str]:
        """What the CLI prints on stderr, one item a line."""
        return [f"error: {self}"]


class WorkspaceError(ModelsmithError):
    """The folder cannot serve as a Modelsmith repository (with a hint how to fix it)."""


class InferenceError(ModelsmithError):
    """A model cannot be resolved, built, loaded or asked (with what to do about it).

    Defined here, not in ``inference``, because resolving a model reference to weights
    (``artifacts``) raises it too, and ``artifacts`` sits below ``inference``.
    """
