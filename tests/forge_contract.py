"""One contract for every Forge: the local forge and the github forge both pass it.

Each subclass provides a ``forge`` fixture over the ``team`` repository (one specialist,
``rtb``, whose v1 is in canary, committed on ``main``) and says how a person merges a
proposal there and what a reviewer sees of it."""

from __future__ import annotations

from pathlib import Path

import pygit2
import pytest

from conftest import git
from modelsmith.gitops.forge import Approval, Forge, ForgeError, Proposal, set_release

SPEC = "specialists/rtb.yaml"
SOURCES = {"rtb": SPEC}
SPEC_TEXT = """\
apiVersion: modelsmith/v1
kind: Specialist
metadata:
  name: rtb
# Desired stages: what a promotion edits
release:
  production: null  # live
  canary:
    version: v1
    traffic: 0.1
  shadow: null
"""
TITLE = "Promote rtb v1 to production"
BODY = "### Evidence\n- composite 0.95 over 3 evaluations"
BRANCH = "modelsmith/propose/rtb/production-v1"


class ForgeContract:
    """Subclasses provide the ``forge`` fixture, ``name``, ``merge``, ``review`` and
    ``merge_ref``; every test here holds for every forge."""

    name: str  # what proposals and approvals record as their forge

    def merge(self, forge: Forge, proposal: Proposal, *, approvers: tuple[str, ...],
              merged_by: str) -> None:
        """``approvers`` approve the proposal, ``merged_by`` merges it onto ``main``; the
        forge's checked-out ``main`` then ends in that merge."""
        raise NotImplementedError

    def review(self, forge: Forge, proposal: Proposal) -> tuple[str, str, str]:
        """What a reviewer sees of the proposal: its title, description and branch."""
        raise NotImplementedError

    def merge_ref(self, forge: Forge, proposal: Proposal) -> str:
        """The ref an approval of the merged ``proposal`` names."""
        raise NotImplementedError

    @pytest.fixture
    def team(self, tmp_path: Path) -> Path:
        root = tmp_path / "team"
        (root / "specialists").mkdir(parents=True)
        (root / SPEC).write_text(SPEC_TEXT)
        pygit2.init_repository(str(root), initial_head="main")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "the team's repository")
        return root

    def test_is_a_forge(self, forge):
        assert isinstance(forge, Forge) and forge.name == self.name

    def test_a_proposal_is_a_branch_that_edits_only_release(self, forge, team):
        head = git(team, "rev-parse", "main").strip()
        proposal = forge.propose("rtb", "production", "v1", title=TITLE, body=BODY)
        assert (proposal.forge, proposal.title) == (self.name, TITLE)
        assert self.review(forge, proposal) == (TITLE, BODY, BRANCH)
        assert git(team, "rev-parse", BRANCH).strip() == proposal.commit
        assert git(team, "rev-parse", f"{proposal.commit}^").strip() == head
        diff = git(team, "diff", "main", proposal.commit)
        changed = [line for line in diff.splitlines()
                   if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        # v1 moves from canary to production (a version holds one stage); comments and key
        # order are kept.
        assert changed == ["-  production: null  # live", "-  canary:", "-    version: v1",
                           "-    traffic: 0.1", "+  production: v1    # live",
                           "+  canary: null"]
        assert git(team, "diff", "--name-only", "main", proposal.commit).split() == [SPEC]
        # Neither the checked-out branch nor the work tree moved.
        assert git(team, "rev-parse", "main").strip() == head
        assert git(team, "status", "--porcelain") == ""

    def test_open_proposals_are_listed_until_merged(self, forge, team):
        assert forge.open_proposals() == []
        git(team, "branch", "modelsmith/propose/not-a-proposal")  # no <stage>-<version>
        proposal = forge.propose("rtb", "production", "v1", title=TITLE, body=BODY)
        assert forge.open_proposals() == [proposal]
        (listed,) = forge.open_proposals()
        assert proposal.author and listed.author == proposal.author  # who opened it
        assert (proposal.specialist, proposal.stage, proposal.version, proposal.branch) == (
            "rtb", "production", "v1", BRANCH)
        self.merge(forge, proposal, approvers=("alice",), merged_by="alice")
        assert forge.open_proposals() == []

    def test_a_change_that_cannot_be_made_is_a_forge_error(self, forge, team):
        with pytest.raises(ForgeError, match="no specialist 'nope'"):
            forge.propose("nope", "production", "v1", title=TITLE, body=BODY)
        with pytest.raises(ForgeError, match=r"release\.shadow of rtb already names None"):
            forge.propose("rtb", "shadow", None, title=TITLE, body=BODY)
        assert git(team, "branch", "--list", "modelsmith/*") == ""

    def test_nothing_is_approved_before_the_merge(self, forge):
        forge.propose("rtb", "production", "v1", title=TITLE, body=BODY)
        assert forge.approval("rtb", "production", "v1") is None

    def test_an_approved_merge_is_the_approval(self, forge):
        proposal = forge.propose("rtb", "production", "v1", title=TITLE, body=BODY)
        self.merge(forge, proposal, approvers=("alice", "bob"), merged_by="alice")
        assert forge.approval("rtb", "production", "v1") == Approval(
            self.name, self.merge_ref(forge, proposal), "alice", ("alice", "bob"))
        # Only what the merged change asks for is approved.
        assert forge.approval("rtb", "production", "v2") is None
        assert forge.approval("rtb", "canary", "v1") is None
        assert forge.approval("other", "production", "v1") is None

    def test_a_merge_nobody_approved_names_no_approver(self, forge):
        proposal = forge.propose("rtb", "production", "v1", title=TITLE, body=BODY)
        self.merge(forge, proposal, approvers=(), merged_by="mallory")
        approval = forge.approval("rtb", "production", "v1")
        assert approval is not None
        assert (approval.merged_by, approval.approvers) == ("mallory", ())

    def test_a_change_committed_straight_onto_main_carries_no_approval(self, forge, team):
        spec = team / SPEC
        spec.write_text(set_release(set_release(spec.read_text(), "production", "v1"),
                                    "canary", None))
        git(team, "commit", "-q", "-am", "production v1\n\nApproved-by: alice")
        assert forge.approval("rtb", "production", "v1") is None

    def test_code_owners_are_the_approvals_required_approvers(self, forge, team):
        (team / ".github").mkdir()
        (team / ".github" / "CODEOWNERS").write_text("* @root-owner\nspecialists/ @carol\n")
        git(team, "add", "-A")
        git(team, "commit", "-q", "-m", "CODEOWNERS")
        proposal = forge.propose("rtb", "production", "v1", title=TITLE, body=BODY)
        self.merge(forge, proposal, approvers=("carol",), merged_by="alice")
        approval = forge.approval("rtb", "production", "v1")
        assert approval is not None and approval.required == ("carol",)
