"""The ``github`` forge: proposals as pull requests, approvals from GitHub's reviews.

Configured by the environment (what GitHub Actions provides, or set by hand):
``MODELSMITH_FORGE=github``; the repository from ``MODELSMITH_GITHUB_REPO`` or
``GITHUB_REPOSITORY`` (``owner/name``); the token from ``MODELSMITH_GITHUB_TOKEN`` or
``GITHUB_TOKEN``; the API from ``MODELSMITH_GITHUB_API`` (default
``https://api.github.com``; GitHub Enterprise or a test server on loopback otherwise).

``propose`` makes the same one-commit branch as the local forge (the git work both share is
:class:`~.repository.ForgeRepository`), pushes it to ``origin`` and opens a pull request
whose body is the evidence.

``change_approval`` asks GitHub which pull requests a commit of the checked-out branch is
associated with (``GET /repos/{owner}/{repo}/commits/{sha}/pulls``) and believes one only
when GitHub says it was merged into that branch *as that commit*, whatever the merge
method: a merge commit or a squash is the pull request's ``merge_commit_sha``; a rebase of
``k`` commits puts ``k`` new commits on the branch ending at ``merge_commit_sha``, and the
commit is one of them. A commit pushed straight onto the branch -- whatever its message
says, ``Merge pull request #N`` included -- has no such pull request and carries no
approval. The approvers are the reviewers whose latest review approves, who merged is
GitHub's ``merged_by``, and the required approvers come from the policy or, when it names
nobody, from CODEOWNERS (a team owner stands for its members). The pull request number
goes into the promotion's event. GitHub unreachable, or refusing the token, is a
:class:`~.base.ForgeError` (an outage is not a rejection); a commit GitHub does not know
is not approved.

PyGithub does the talking, imported only when the forge talks to GitHub: a maintained
client (github3.py's last release was 2023-04) with the commit's associated pull requests,
reviews, teams by slug and a configurable API URL. Its retries are kept for what they are
for -- rate limits (waiting at most :data:`MAX_RATE_LIMIT_WAIT` seconds) and GitHub's 5xx --
and not for a refused connection, which fails at once.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from .base import Approval, ForgeError, Proposal
from .repository import (
    PROPOSAL_PREFIX,
    ForgeRepository,
    ReleaseApprovals,
    parse_proposal_branch,
)

DEFAULT_API = "https://api.github.com"
#: Where the github forge reads a commit's code owners, first found wins.
CODEOWNERS_FILES = (".github/CODEOWNERS", "CODEOWNERS")
#: Seconds one request waits for GitHub.
TIMEOUT = 15
#: Retries of a rate-limited or failed (5xx) request, and the longest wait for a rate limit
#: to reset before giving up with the error.
RETRIES = 3
MAX_RATE_LIMIT_WAIT = 120


def configured() -> bool:
    """Whether the environment asks for the github forge (``MODELSMITH_FORGE=github``)."""
    return os.environ.get("MODELSMITH_FORGE", "").lower() == "github"


def client(api: str, token: str | None) -> Any:
    """A PyGithub client of ``api``: lazy objects (one request per thing read), retries
    for rate limits and 5xx only, no pause between reads (the forge's few requests are
    serial; writes keep PyGithub's pause)."""
    import github
    from github.GithubRetry import GithubRetry

    retry = GithubRetry(total=RETRIES, connect=0, backoff_factor=0.5,
                        max_rate_limit_wait=MAX_RATE_LIMIT_WAIT)
    return github.Github(base_url=api, auth=github.Auth.Token(token) if token else None,
                         timeout=TIMEOUT, retry=retry, seconds_between_requests=None,
                         lazy=True)


def why(exc: Exception, api: str) -> str:
    """What went wrong talking to GitHub, in a line."""
    import github

    if isinstance(exc, github.GithubException):
        data = exc.data if isinstance(exc.data, dict) else {}
        message = data.get("message") or exc.message or ""
        return f"{exc.status} {message}".strip()
    return f"cannot reach {api} ({type(exc).__name__})"


class GitHubForge(ReleaseApprovals):
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

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.repo_name}"

    def client(self) -> Any:
        if self._gh is None:
            self._gh = client(self.api, self.token)
        return self._gh

    def _repository(self) -> Any:
        return self.client().get_repo(self.full_name)

    def _failure(self, doing: str, exc: Exception) -> ForgeError:
        return ForgeError(f"GitHub {self.full_name}: {doing}{why(exc, self.api)}")

    def change_approval(self, commit: str, path: str) -> Approval | None:
        import github
        import requests

        found = self.git.commit(commit)
        if found is None:
            return None
        sha = str(found.id)
        try:
            pull = self._merged_pull(sha)
            if pull is None:
                return None
            reviews = list(pull.get_reviews())
            merged_by = pull.merged_by.login if pull.merged_by is not None else None
        except github.GithubException as exc:
            if exc.status == 422:  # a commit GitHub does not have: nobody reviewed it there
                return None
            raise self._failure(f"cannot read the pull requests of {sha[:12]}: ",
                                exc) from None
        except requests.RequestException as exc:
            raise self._failure(f"cannot read the pull requests of {sha[:12]}: ",
                                exc) from None
        latest: dict[str, str] = {}
        for review in reviews:  # oldest first: the last word of each reviewer counts
            if review.user is not None and review.state in ("APPROVED", "CHANGES_REQUESTED",
                                                            "DISMISSED"):
                latest[review.user.login] = review.state
        approvers = tuple(sorted(u for u, state in latest.items() if state == "APPROVED"))
        owners = self.git.path_owners(found, path, CODEOWNERS_FILES)
        return Approval("github", f"#{pull.number}", merged_by, approvers,
                        self._members(owners))

    def _merged_pull(self, sha: str) -> Any | None:
        """The pull request GitHub merged into the checked-out branch as commit ``sha``
        (its merge or squash commit, or one of the commits its rebase made), or None."""
        repo = self._repository()
        associated = sorted(repo.get_commit(sha).get_pulls(), key=lambda p: p.number)
        for listed in associated:
            if listed.merged_at is None:
                continue  # open or closed unmerged: its head commits are associated too
            pull = repo.get_pull(listed.number)  # the full pull request: merged, commits
            if pull.merged and pull.base.ref == self.git.branch \
                    and self._made_by(pull, sha):
                return pull
        return None

    def _made_by(self, pull: Any, sha: str) -> bool:
        """Whether merging ``pull`` made commit ``sha`` on the checked-out branch: its
        merge or squash commit, or one of the ``pull.commits`` first-parent commits a
        rebase ends in its ``merge_commit_sha``."""
        merged = pull.merge_commit_sha
        if not merged:
            return False
        if merged == sha:
            return True
        tip = self.git.commit(merged)
        if tip is None or len(tip.parents) != 1 or not self._on_branch(tip):
            return False  # a merge commit brings in no other first-parent commit
        commit = tip
        for _ in range(max(int(pull.commits or 1), 1) - 1):
            if not commit.parents:
                return False
            commit = commit.parents[0]
            if str(commit.id) == sha:
                return True
        return False

    def _on_branch(self, commit: Any) -> bool:
        repo = self.git.repo
        if repo.head_is_unborn:
            return False
        head = repo.head.peel().id
        return head == commit.id or repo.descendant_of(head, commit.id)

    def _members(self, owners: tuple[str, ...]) -> tuple[str, ...]:
        """CODEOWNERS names with each team (``org/team``) replaced by its members, as GitHub
        lets any member's review count for a team owner. A team the token cannot read stays
        as its name, which no reviewer matches: the approval gate then names it."""
        import github
        import requests

        found: list[str] = []
        for owner in owners:
            if "/" not in owner:
                found.append(owner)
                continue
            org, slug = owner.split("/", 1)
            try:
                team = self.client().get_organization(org).get_team_by_slug(slug)
                members = [m.login for m in team.get_members()]
            except (github.GithubException, requests.RequestException):
                members = []
            found += members or [owner]
        return tuple(dict.fromkeys(found))

    def propose(self, specialist: str, stage: str, version: str | None, *, title: str,
                body: str, traffic: float | None = None) -> Proposal:
        import github
        import requests

        branch, commit = self.git.commit_proposal(specialist, stage, version, title=title,
                                                  body=body, traffic=traffic)
        pushed = subprocess.run(["git", "-C", str(self.root), "push", "--quiet", self.remote,
                                 f"refs/heads/{branch}:refs/heads/{branch}"],
                                capture_output=True, text=True)
        if pushed.returncode != 0:
            raise ForgeError(f"git push {self.remote} {branch}: {pushed.stderr.strip()}")
        try:
            # The body ends with the commit's anchor trailers too: a squash merge whose
            # message is the pull request's description keeps them on main.
            anchor = "\n".join(line for line in self.git.repo[commit].message.splitlines()
                               if line.startswith(("Event-Log-Tip:", "Event-Log-Events:")))
            pull = self._repository().create_pull(
                base=self.git.branch, head=branch, title=title,
                body=f"{body}\n\n{anchor}\n" if anchor else body)
            number, url = pull.number, pull.html_url
            author = pull.user.login if pull.user is not None else None
        except (github.GithubException, requests.RequestException) as exc:
            raise self._failure("refused the pull request: ", exc) from None
        return Proposal("github", url, commit, title, number=number,
                        specialist=specialist, stage=stage, version=version, branch=branch,
                        author=author)

    def open_proposals(self) -> list[Proposal]:
        """The open pull requests whose head branch is a proposal's, oldest first."""
        import github
        import requests

        found = []
        try:
            pulls = [(p.head.ref or "", p.head.sha, p.title, p.number, p.html_url,
                      p.user.login if p.user is not None else None)
                     for p in self._repository().get_pulls(state="open", sort="created",
                                                           direction="asc")]
        except (github.GithubException, requests.RequestException) as exc:
            raise self._failure("cannot list pull requests: ", exc) from None
        for head, sha, title, number, url, author in pulls:
            asked = parse_proposal_branch(head) if head.startswith(PROPOSAL_PREFIX) else None
            if asked is None:
                continue
            specialist, stage, version = asked
            found.append(Proposal("github", url, sha, title, number=number,
                                  specialist=specialist, stage=stage, version=version,
                                  branch=head, author=author))
        return found
