"""The forge a repository uses: GitHub when the environment says so, else local git."""

from __future__ import annotations

from typing import Any

from . import github
from .base import Forge
from .local import LocalForge


def forge_for(repo: Any) -> Forge:
    """The repository's forge: GitHub when ``MODELSMITH_FORGE=github`` (see
    :mod:`.github`), else local git."""
    sources = {name: str(path.relative_to(repo.root))
               for (kind, name), path in repo.sources.items() if kind == "Specialist"}
    if github.configured():
        return github.GitHubForge(repo.root, sources)
    return LocalForge(repo.root, sources)
