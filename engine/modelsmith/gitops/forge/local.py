"""The ``local`` forge: git alone.

A proposal is a branch with one commit; the approval is the merge commit on the main
branch that brought the change in, with its approvers as ``Approved-by:`` trailers of the
merge message. A change committed straight onto the main branch is not a merge: it carries
no approval. (GitHub pull requests and reviews are the ``github`` forge.)
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import Approval, Proposal
from .repository import ForgeRepository, ReleaseApprovals, parse_proposal_branch

TRAILER_RE = re.compile(r"^Approved-by:\s*(.+?)\s*$", re.MULTILINE)
#: Where the local forge reads a commit's code owners, first found wins.
CODEOWNERS_FILES = ("CODEOWNERS", ".github/CODEOWNERS")


class LocalForge(ReleaseApprovals):
    """Proposals as branches, approvals as merge commits (see the module docstring)."""

    name = "local"

    def __init__(self, root: Path, sources: dict[str, str]) -> None:
        self.git = ForgeRepository(root, sources)
        self.root = self.git.root
        self.sources = sources

    def change_approval(self, commit: str, path: str) -> Approval | None:
        found = self.git.commit(commit)
        if found is None or len(found.parents) < 2:
            return None  # committed straight onto the branch: nobody reviewed it
        return Approval("local", str(found.id)[:12], found.committer.name,
                        tuple(TRAILER_RE.findall(found.message)),
                        self.git.path_owners(found, path, CODEOWNERS_FILES))

    def propose(self, specialist: str, stage: str, version: str | None, *, title: str,
                body: str, traffic: float | None = None) -> Proposal:
        branch, commit = self.git.commit_proposal(specialist, stage, version, title=title,
                                                  body=body, traffic=traffic)
        made = self.git.commit(commit)
        return Proposal("local", branch, commit, title, specialist=specialist, stage=stage,
                        version=version, branch=branch,
                        author=made.author.name if made is not None else None)

    def open_proposals(self) -> list[Proposal]:
        found = []
        for branch, tip in self.git.open_branches():
            asked = parse_proposal_branch(branch)
            assert asked is not None  # open_branches lists proposal branches only
            specialist, stage, version = asked
            found.append(Proposal("local", branch, str(tip.id),
                                  tip.message.split("\n", 1)[0].strip(),
                                  specialist=specialist, stage=stage, version=version,
                                  branch=branch, author=tip.author.name))
        return found
