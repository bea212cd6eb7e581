"""The local forge: the forge contract, then end to end on a real git repository:
``propose`` makes a branch whose commit carries the evidence; merged with an
``Approved-by:`` trailer it passes the approval gate and reconcile records who approved;
merged without one, or committed straight onto main, it is rejected."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import git
from evaluations import canary_fork
from forge_contract import ForgeContract
from modelsmith.cli import cli
from modelsmith.events.gitstore import GitEventStore
from modelsmith.gitops.forge import LocalForge, release_of, set_release

SPEC = "specialists/rtb-quality.yaml"
BRANCH = "modelsmith/propose/rtb-quality/production-v1"


class TestLocalForge(ForgeContract):
    """Approvers are ``Approved-by:`` trailers of the merge commit, which names the
    approval."""

    name = "local"

    @pytest.fixture
    def forge(self, team):
        return LocalForge(team, {"rtb": "specialists/rtb.yaml"})

    def merge(self, forge, proposal, *, approvers, merged_by):
        trailers = "".join(f"\nApproved-by: {who}" for who in approvers)
        git(forge.root, "-c", f"user.name={merged_by}", "merge", "--no-ff", "-q",
            proposal.ref, "-m", f"Merge {proposal.ref}\n{trailers}")

    def review(self, forge, proposal):
        title, body = git(forge.root, "log", "-1", "--format=%B", proposal.ref).split(
            "\n\n", 1)
        return title, body.rstrip("\n"), proposal.ref

    def merge_ref(self, forge, proposal):
        return git(forge.root, "rev-parse", "HEAD").strip()[:12]

    def test_a_proposal_is_a_local_branch(self, forge):
        proposal = forge.propose("rtb", "production", "v1", title="t", body="b")
        assert proposal.ref == "modelsmith/propose/rtb/production-v1"
        assert proposal.number is None


@pytest.fixture
def fork(demo_repo):
    return canary_fork(demo_repo)


def run(repo, *args):
    result = CliRunner().invoke(cli, ["-C", str(repo), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_release_edits_keep_comments_and_order():
    text = ("kind: Specialist\n# Desired stages\nrelease:\n  production: null  # live\n"
            "  canary: null\n  shadow: v2\n")
    changed = set_release(text, "production", "v1")
    # Only the value changes; the comment stays where it was (ruamel keeps its column).
    assert changed == text.replace("production: null  # live", "production: v1    # live")
    assert release_of(changed, "production") == "v1"
    canary = set_release(text, "canary", "v3", traffic=0.2)
    assert release_of(canary, "canary") == "v3" and "traffic: 0.2" in canary


def test_a_proposal_merged_with_an_approval_is_promoted(fork):
    output = run(fork, "propose", "rtb-quality", "--version", "v1", "--stage", "production")
    assert output.startswith(f"proposed on the local forge: {BRANCH}")
    body = git(fork, "log", "-1", "--format=%B", BRANCH)
    assert body.startswith("Promote rtb-quality v1 to production")
    assert ("✅ **composite**: 3 consecutive versions along v1's lineage at >= 0.9 "
            "(dev composite): v1 0.952, v102 0.952, v101 0.952") in body
    assert "❌ **approval**" in body and "dataset_hash: `dddd" in body
    # Nothing merged yet: the main branch does not ask for it, nothing to do.
    assert "No changes" in run(fork, "plan")

    git(fork, "merge", "--no-ff", "-q", BRANCH, "-m",
        f"Merge {BRANCH}\n\nApproved-by: alice\nApproved-by: bob")
    plan = json.loads(run(fork, "plan", "--json"))
    (action,) = plan["actions"]
    assert action["kind"] == "promote" and action["approval"]["approvers"] == ["alice", "bob"]
    assert run(fork, "reconcile").startswith("Promoted rtb-quality production: - -> v1")
    (promoted,) = [e for e in GitEventStore(fork).read("rtb-quality")
                   if e.type == "Promoted" and e.data["stage"] == "production"]
    approval = promoted.data["approval"]
    assert (approval["forge"], approval["merged_by"], approval["approvers"]) == (
        "local", "Dana", ["alice", "bob"])
    assert approval["ref"] == git(fork, "rev-parse", "HEAD").strip()[:12]


def test_without_an_approval_the_change_is_rejected(fork):
    run(fork, "propose", "rtb-quality", "--version", "v1", "--stage", "production")
    git(fork, "merge", "--no-ff", "-q", BRANCH, "-m", f"Merge {BRANCH}")
    output = run(fork, "reconcile")
    assert output.startswith("PromotionRejected rtb-quality production: - -> v1")
    (rejected,) = [e for e in GitEventStore(fork).read("rtb-quality")
                   if e.type == "PromotionRejected"]
    assert rejected.data["gate"] == "approval"
    assert "approved by nobody (needs 1)" in rejected.data["reason"]


def test_a_change_committed_straight_onto_main_carries_no_approval(fork):
    spec = fork / SPEC
    spec.write_text(set_release(set_release(spec.read_text(), "production", "v1"),
                                "canary", None))
    git(fork, "commit", "-q", "-am", "production v1\n\nApproved-by: alice")
    (action,) = json.loads(run(fork, "plan", "--json"))["actions"]
    assert action["kind"] == "reject"
    assert action["reason"].endswith("production needs a merged, approved change asking "
                                     "for v1; none found")


def test_plan_lists_an_open_proposal_until_it_is_merged(fork):
    run(fork, "propose", "rtb-quality", "--version", "v1", "--stage", "production")
    output = run(fork, "plan")
    assert (f"No changes to apply; 1 proposal waits for review: rtb-quality v1 -> production "
            f"({BRANCH}).") in output
    assert f"  rtb-quality production: - -> v1 (local {BRANCH})\n" in output
    assert ("      ok   composite: 3 consecutive versions along v1's lineage at >= 0.9 (dev "
            "composite): v1 0.952, v102 0.952, v101 0.952") in output
    assert ("      wait approval: production needs a merged, approved change asking for v1; "
            "none found") in output
    assert "merged with the approval it needs, reconcile promotes it" in output
    plan = json.loads(run(fork, "plan", "--json"))
    assert plan["actions"] == [] and plan["warnings"] == []
    (waiting,) = plan["proposals"]
    commit = git(fork, "rev-parse", BRANCH).strip()
    assert {key: waiting[key] for key in ("forge", "ref", "number", "branch", "commit",
                                          "specialist", "stage", "version", "ready",
                                          "note", "previous")} == {
        "forge": "local", "ref": BRANCH, "number": None, "branch": BRANCH, "commit": commit,
        "specialist": "rtb-quality", "stage": "production", "version": "v1", "ready": True,
        "note": None, "previous": None}
    assert waiting["title"] == "Promote rtb-quality v1 to production"
    gates = {g["name"]: g["passed"] for g in waiting["gates"]}
    assert gates["composite"] and gates["order"] and not gates["approval"]

    git(fork, "merge", "--no-ff", "-q", BRANCH, "-m", f"Merge {BRANCH}\n\nApproved-by: alice")
    plan = json.loads(run(fork, "plan", "--json"))
    assert plan["proposals"] == [] and [a["kind"] for a in plan["actions"]] == ["promote"]
    assert "waits for review" not in run(fork, "plan")


def test_plan_names_a_proposal_whose_gates_fail(fork):
    """A proposal for a version the log does not know: merged, it would be rejected."""
    run(fork, "propose", "rtb-quality", "--version", "v9", "--stage", "shadow")
    output = run(fork, "plan")
    assert "FAIL version: v9 is not a registered candidate of rtb-quality" in output
    assert "merged today, it would be rejected: the version gate fails" in output
    (waiting,) = json.loads(run(fork, "plan", "--json"))["proposals"]
    assert waiting["ready"] is False and waiting["version"] == "v9"
