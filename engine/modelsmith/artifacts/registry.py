"""The model registry: a team's base profiles and the candidate versions its log registered.

The :class:`ModelRegistry` turns a model reference (:class:`~.refs.ModelRef`) into weights:
a candidate's folder in the work tree (pulled from the DVC remote when missing) with the
base profile it is prompted as, or a base model resolved by
:func:`~modelsmith.artifacts.models.resolve_model`. Version numbering is here too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelsmith.errors import InferenceError, ModelsmithError

from .adapters import is_weights_folder
from .models import resolve_model
from .refs import is_version

#: Where candidates' weights live in a team's work tree (DVC-tracked), per specialist.
MODELS_DIR = "models"


class UnknownCandidate(ModelsmithError):
    """A version the event log never registered, or one whose ancestry names no profile."""


def next_version(taken: Iterable[str]) -> str:
    """The version after every one in ``taken``: v1 for none."""
    return f"v{max((int(v[1:]) for v in taken), default=0) + 1}"


def version_weights(root: Path, specialist: str, version: str) -> Path:
    """Where a candidate's weights live in the work tree (DVC-tracked)."""
    return root / MODELS_DIR / specialist / version


@dataclass
class CandidateModel:
    path: Path  # the weights folder (full weights or a LoRA adapter), in the work tree
    base: Any  # the ModelProfile it descends from: how it is prompted


def candidate_model(
    models: Mapping[str, Any],
    root: Path,
    specialist: str,
    version: str,
    candidates: Mapping[str, Any],
    pull: Callable[[Path], None],
) -> CandidateModel:
    """A registered candidate's weights (``pull`` fetches them when missing) and the model
    profile (of ``models``) it descends from through its parents: it is prompted as that
    profile was trained (plain text or chat template), whatever its saved tokenizer could
    do. ``candidates`` are the folded log's candidates of ``specialist``."""
    if version not in candidates:
        known = ", ".join(candidates) or "none"
        raise UnknownCandidate(f"{specialist} has no candidate {version} (candidates: "
                               f"{known}); train one with `modelsmith train {specialist}`")
    seen, ref = set(), version
    while ref in candidates and ref not in seen:
        seen.add(ref)
        ref = candidates[ref].lineage.base_model or ""
    base = models.get(ref)
    if base is None:
        raise UnknownCandidate(f"{specialist} {version} descends from {ref!r}, which is not "
                               "a model profile in config/clusters.json")
    path = version_weights(root, specialist, version)
    if not is_weights_folder(path):  # full weights or a LoRA adapter of the base
        pull(path)
    return CandidateModel(path, base)


class ModelRegistry:
    """A team's models: its base profiles and the candidates its event log registered.

    ``candidates(specialist)`` reads the folded log's candidates (a mapping version ->
    candidate with its lineage); ``pull(path)`` fetches weights from the DVC remote.
    """

    def __init__(self, root: Path, clusters: Any,
                 candidates: Callable[[str], Mapping[str, Any]],
                 pull: Callable[[Path], None]) -> None:
        self.root = root
        self.clusters = clusters
        self._candidates = candidates
        self._pull = pull

    def candidate(self, specialist: str, version: str) -> CandidateModel:
        """A registered version's weights (pulled when missing) and base profile."""
        return candidate_model(self.clusters.models, self.root, specialist, version,
                               self._candidates(specialist), self._pull)

    def weights_path(self, specialist: str, ref: str) -> Path:
        """The local weights folder of ``ref``: a candidate version, a model profile or a
        folder (training needs one; a hub id has none)."""
        if is_version(ref):
            return self.candidate(specialist, ref).path
        path = resolve_model(ref, self.clusters, repo_root=self.root).path
        if path is None:
            raise InferenceError(f"{ref} is a hub id; training needs a local folder")
        return path
