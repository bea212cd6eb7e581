"""The ``github`` forge: proposals as pull requests, approvals from GitHub's reviews.

Configured by the environment (what GitHub Actions provides, or set by hand):
``MODELSMITH_FORGE=github``; the repository from ``MODELSMITH_GITHUB_REPO`` or
``GITHUB_REPOSITORY`` (``owner/name``); the token from ``MODELSMITH_GITHUB_TOKEN`` or
``GITHUB_TOKEN``; the API from ``MODELSMITH_GITHUB_API`` (default
``https://api.github.com``; GitHub Enterprise or a test server on loopback otherwise).

``propose`` makes the same one-commit branch as the local forge (the git work both share is
:class:`~.repository.ForgeRepository`), pushes it to ``origin``
and opens a pull request whose body is the evidence. ``approval`` finds the merge commit
on the checked-out branch that brought the change in, reads its pull request number from
GitHub's merge message, and believes it only when GitHub says that pull request was merged
*as that commit*; the approvers are the reviewers whose latest review approves, who merged
is GitHub's ``merged_by``, and the required approvers come from the policy or, when it
names nobody, from CODEOWNERS (a team owner stands for its members). The pull request
number goes into the promotion's event.
github3.py does the talking.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

from .base import Approval, ForgeError, Proposal
from .repository import PROPOSAL_PREFIX, ForgeRepository, parse_proposal_branch

MERGE_RE = re.compile(r"^Merge pull request #(\d+) from ", re.MULTILINE)
DEFAULT_API = "https://api.github.com"
#: Where the github forge reads a commit's code owners, first found wins.
CODEOWNERS_FILES = (".github/CODEOWNERS", "CODEOWNERS")


def configured() -> bool:
    """Whether the environment asks for the github forge (``MODELSMITH_FORGE=github``)."""
    return os.environ.get("MODELSMITH_FORGE", "").lower() == "github"


class GitHubForge:
    """Proposals as pull requests, approvals from their reviews (see the module docstring)."""

    name = "github"

    def __init__(self, root: Path, sources: dict[str, str], *, repository: str | None = None,
                 token: str | None = None, api: str | None = None,
                 remote: str = "origin") -> None:
        self.git = ForgeRepository(root, sources)
        self.root = self.git.root
        self.sources = sources
        repository = repository or os.environ.get("MODELSMITH_GITHUB_REPO") \
            or os.environ.get("GITHUB_REPOSITORY")
        if not repository or "/" not in repository:
            raise ForgeError("the github forge needs the repository: set "
                             "MODELSMITH_GITHUB_REPO=owner/name")
        self.owner, self.repo_name = repository.split("/", 1)
        self.token = token or os.environ.get("MODELSMITH_GITHUB_TOKEN") \
            or os.environ.get("GITHUB_TOKEN")
        self.api = (api or os.environ.get("MODELSMITH_GITHUB_API") or DEFAULT_API).rstrip("/")
        self.remote = remote
        self._gh: Any = None

    def client(self) -> Any:
        if self._gh is None:
            import github3

            gh = github3.GitHub(token=self.token) if self.token else github3.GitHub()
            gh.session.base_url = self.api
            self._gh = gh
        return self._gh

    def _repository(self) -> Any:
        import github3

        try:
            return self.client().repository(self.owner, self.repo_name)
        except github3.exceptions.GitHubException as exc:
            raise ForgeError(f"GitHub {self.owner}/{self.repo_name}: {exc}") from None

    def approval(self, specialist: str, stage: str, version: str) -> Approval | None:
        commit = self.git.asking_change(specialist, stage, version)
        if commit is None:
            return None
        return self.change_approval(str(commit.id), self.sources[specialist])

    def change_approval(self, commit: str, path: str) -> Approval | None:
        import github3

        found = self.git.commit(commit)
        match = MERGE_RE.search(found.message) if found is not None else None
        if found is None or match is None or len(found.parents) < 2:
            return None
        number = int(match.group(1))
        try:
            pull = self.client().pull_request(self.owner, self.repo_name, number)
            reviews = list(pull.reviews()) if pull is not None else []
        except github3.exceptions.GitHubException:
            return None
        if pull is None or not pull.merged or pull.merge_commit_sha != str(found.id):
            return None  # a merge message that names a pull request GitHub did not merge
        latest: dict[str, str] = {}
        for review in reviews:  # oldest first: the last word of each reviewer counts
            if review.user is not None and review.state in ("APPROVED", "CHANGES_REQUESTED",
                                                            "DISMISSED"):
                latest[review.user.login] = review.state
        approvers = tuple(sorted(u for u, state in latest.items() if state == "APPROVED"))
        merged_by = pull.merged_by.login if pull.merged_by is not None else None
        owners = self.git.path_owners(found, path, CODEOWNERS_FILES)
        return Approval("github", f"#{number}", merged_by, approvers, self._members(owners))

    def _members(self, owners: tuple[str, ...]) -> tuple[str, ...]:
        """CODEOWNERS names with each team (``org/team``) replaced by its members, as GitHub
        lets any member's review count for a team owner. A team the token cannot read stays
        as its name, which no reviewer matches: the approval gate then names it."""
        import github3

        found: list[str] = []
        for owner in owners:
            if "/" not in owner:
                found.append(owner)
                continue
            org, slug = owner.split("/", 1)
            try:
                organization = self.client().organization(org)
                team = organization.team_by_name(slug) if organization is not None else None
                members = [m.login for m in team.members()] if team is not None else []
            except github3.exceptions.GitHubException:
                members = []
            found += members or [owner]
        return tuple(dict.fromkeys(found))

    def propose(self, specialist: str, stage: str, version: str | None, *, title: str,
                body: str, traffic: float | None = None) -> Proposal:
        import github3

        branch, commit = self.git.commit_proposal(specialist, stage, version, title=title,
                                                  body=body, traffic=traffic)
        pushed = subprocess.run(["git", "-C", str(self.root), "push", "--quiet", self.remote,
                                 f"refs/heads/{branch}:refs/heads/{branch}"],
                                capture_output=True, text=True)
        if pushed.returncode != 0:
            raise ForgeError(f"git push {self.remote} {branch}: {pushed.stderr.strip()}")
        try:
            pull = self._repository().create_pull(title, self.git.branch, branch, body)
        except github3.exceptions.GitHubException as exc:
            raise ForgeError(f"GitHub refused the pull request: {exc}") from None
        if pull is None:
            raise ForgeError("GitHub refused the pull request")
        return Proposal("github", pull.html_url, commit, title, number=pull.number,
                        specialist=specialist, stage=stage, version=version, branch=branch)

    def open_proposals(self) -> list[Proposal]:
        """The open pull requests whose head branch is a proposal's, oldest first."""
        import github3

        found = []
        try:
            pulls = list(self._repository().pull_requests(state="open", sort="created",
                                                          direction="asc"))
        except github3.exceptions.GitHubException as exc:
            raise ForgeError(f"GitHub {self.owner}/{self.repo_name}: cannot list pull "
                             f"requests: {exc}") from None
        for pull in pulls:
            head = pull.head.ref if pull.head is not None else ""
            asked = parse_proposal_branch(head) if head.startswith(PROPOSAL_PREFIX) else None
            if asked is None:
                continue
            specialist, stage, version = asked
            found.append(Proposal("github", pull.html_url, pull.head.sha, pull.title,
                                  number=pull.number, specialist=specialist, stage=stage,
                                  version=version, branch=head))
        return found
