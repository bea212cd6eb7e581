"""Forges: where a promotion is asked for and where a human approves it.

:class:`~.base.Forge` is the protocol; ``local`` (git alone) and ``github`` (pull requests
and reviews) implement it, one module each, over the git work they share
(:mod:`.repository`); :func:`~.factory.forge_for` picks one. PyGithub is imported only
when the github forge talks to GitHub.
"""

from .base import Approval, Forge, ForgeError, Proposal
from .factory import forge_for
from .github import GitHubForge
from .local import TRAILER_RE, LocalForge
from .repository import (
    PROPOSAL_PREFIX,
    SEARCH_DEPTH,
    ForgeRepository,
    codeowners,
    parse_proposal_branch,
    proposal_branch,
    release_of,
    set_release,
)

__all__ = [
    "PROPOSAL_PREFIX",
    "SEARCH_DEPTH",
    "TRAILER_RE",
    "Approval",
    "Forge",
    "ForgeError",
    "ForgeRepository",
    "GitHubForge",
    "LocalForge",
    "Proposal",
    "codeowners",
    "forge_for",
    "parse_proposal_branch",
    "proposal_branch",
    "release_of",
    "set_release",
]
