"""What every forge does, and the records it hands back.

A forge answers one question for the planner and does one thing for agents:

- ``approval(specialist, stage, version)``: the merged change that made ``release`` ask for
  ``version`` in ``stage``, who merged it and who approved it -- or None;
- ``change_approval(commit, path)``: the same for any commit of the branch (the human gate
  on changes to suites, policies and tasks);
- ``propose(...)``: a change that edits ``release`` (ruamel.yaml round-trip: comments and
  key order kept) with the evidence in its description, for a human to review and merge;
- ``open_proposals()``: the proposals still waiting for that merge, for ``plan`` to list.

``local`` is git alone (:mod:`.local`), ``github`` pull requests and reviews
(:mod:`.github`); :func:`.factory.forge_for` picks one for a repository.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from modelsmith.errors import ModelsmithError

from ..plan import Approval

__all__ = ["Approval", "Forge", "ForgeError", "Proposal"]


class ForgeError(ModelsmithError, RuntimeError):
    """A proposal that cannot be made; the message says why."""


@dataclass(frozen=True)
class Proposal:
    forge: str
    ref: str  # branch (local) or pull request URL (github)
    commit: str
    title: str
    number: int | None = None  # the pull request's (github)
    # What it asks for: release.<stage> = version (None: the stage emptied).
    specialist: str | None = None
    stage: str | None = None
    version: str | None = None
    branch: str | None = None  # the proposal's branch (the ref itself, locally)
    # Who opened it (the pull request's user, the branch commit's author): what the forge
    # lists says; not part of which proposal it is.
    author: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, object]:
        return {"forge": self.forge, "ref": self.ref, "number": self.number,
                "branch": self.branch, "commit": self.commit, "title": self.title,
                "specialist": self.specialist, "stage": self.stage, "version": self.version,
                "author": self.author}


@runtime_checkable
class Forge(Protocol):
    """Where a release change is proposed and where a human approves it."""

    name: str  # "local", "github": what proposals and approvals record as their forge

    def approval(self, specialist: str, stage: str, version: str) -> Approval | None:
        """The approval of the merged change on the checked-out branch that made
        ``release.<stage>`` of ``specialist`` name ``version``; None when no reviewed change
        asked for it."""
        ...

    def change_approval(self, commit: str, path: str) -> Approval | None:
        """The approval of the reviewed change that brought ``commit`` (a first-parent
        commit of the checked-out branch) in -- its merge, squash or rebase -- with the
        CODEOWNERS of ``path`` as the required approvers; None when nobody reviewed it
        (committed straight onto the branch)."""
        ...

    def propose(self, specialist: str, stage: str, version: str | None, *, title: str,
                body: str, traffic: float | None = None) -> Proposal:
        """Ask for ``release.<stage> = version`` (``traffic``: the canary's share) as a
        change titled ``title`` with ``body`` as its description; raises
        :class:`ForgeError` when the change cannot be made."""
        ...

    def open_proposals(self) -> list[Proposal]:
        """The proposals not merged yet (branches ``modelsmith/propose/...`` not in the
        checked-out branch; open pull requests from such branches), each naming the
        specialist, stage and version it asks for; raises :class:`ForgeError` when the
        forge cannot be read."""
        ...
