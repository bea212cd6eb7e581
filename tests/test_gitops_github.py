"""The github forge: the forge contract, then GitOps end to end: real git (a bare origin,
an agent's clone, a reconciler's clone), a fake of GitHub's REST API on 127.0.0.1 driven by
the real github3.py. The canary step needs an approval here. An agent proposes -> a pull request
with the evidence -> reviewed and merged -> reconcile records ``Promoted`` with the pull
request; merged without an approval, or for a version whose evidence fails -> rejected
with the numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import github3
import pytest

from conftest import git
from evaluations import GOOD, POOR, evaluated, lineage
from forge_contract import SOURCES, ForgeContract
from github_fake import FakeGitHub
from modelsmith.events.gitstore import EVENTS_REF, GitEventStore
from modelsmith.events.types import (
    EvalCompleted,
    Event,
    MetricsObserved,
    Promoted,
)
from modelsmith.gitops.forge import GitHubForge

TOKENS = {"bot-token": "modelsmith-bot", "alice-token": "alice", "mallory-token": "mallory",
          "bob-token": "bob", "carol-token": "carol"}


def test_github3_is_imported_only_to_talk_to_github():
    code = ("import sys, modelsmith.cli, modelsmith.gitops.forge, modelsmith.gitops.propose; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('github3', 'torch', 'dvc', 'mcp')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stderr


def bare_origin(repo, tmp_path, *refs):
    """A bare ``origin`` of ``repo`` holding its ``main`` (and ``refs``)."""
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    git(repo, "remote", "add", "origin", str(bare))
    git(repo, "push", "-q", "origin", "main", *refs)
    return bare


class TestGitHubForge(ForgeContract):
    """Approvers are the pull request's reviewers; the approval names the pull request."""

    name = "github"

    @pytest.fixture
    def forge(self, team, tmp_path):
        fake = FakeGitHub(bare_origin(team, tmp_path), "team/rtb", TOKENS)
        yield GitHubForge(team, SOURCES, repository="team/rtb", token="bot-token",
                          api=fake.url)
        fake.close()

    def merge(self, forge, proposal, *, approvers, merged_by):
        for who in approvers:
            pull = as_user(forge.api, f"{who}-token").pull_request("team", "rtb",
                                                                   proposal.number)
            pull.create_review("reviewed", event="APPROVE")
        pull = as_user(forge.api, f"{merged_by}-token").pull_request("team", "rtb",
                                                                     proposal.number)
        assert pull.merge() is True
        git(forge.root, "pull", "-q", "origin", "main")

    def review(self, forge, proposal):
        pull = as_user(forge.api, "bot-token").pull_request("team", "rtb", proposal.number)
        return pull.title, pull.body, pull.head.ref

    def merge_ref(self, forge, proposal):
        return f"#{proposal.number}"

    def test_a_proposal_is_a_pull_request_on_a_pushed_branch(self, forge, tmp_path):
        proposal = forge.propose("rtb", "production", "v1", title="t", body="b")
        assert proposal.number == 1
        assert proposal.ref == "https://github.example/team/rtb/pull/1"
        pushed = subprocess.run(["git", "-C", str(tmp_path / "origin.git"), "rev-parse",
                                 "refs/heads/modelsmith/propose/rtb/production-v1"],
                                check=True, capture_output=True, text=True).stdout.strip()
        assert pushed == proposal.commit


@pytest.fixture
def world(demo_repo, tmp_path, monkeypatch):
    """origin (bare) + the fake GitHub over it; the log: v1 passes every gate and held
    shadow with enough traffic, v2's evaluations fail the composite gate."""
    policy = demo_repo / "policies" / "promotion.yaml"
    policy.write_text(policy.read_text().replace(
        "      traffic: 0.1\n      floors:\n        score_mean: 0.85\n      approval: false",
        "      traffic: 0.1\n      floors:\n        score_mean: 0.85\n      approval: true"))
    spec = demo_repo / "specialists" / "rtb-quality.yaml"
    spec.write_text(spec.read_text().replace("  shadow: null", "  shadow: v1"))
    git(demo_repo, "checkout", "-q", "-b", "main")
    git(demo_repo, "add", "-A")
    git(demo_repo, "commit", "-q", "-m", "the fork")
    at = datetime(2026, 11, 20, tzinfo=UTC)
    events = []
    for version, runs in (("v1", (GOOD, GOOD, GOOD)), ("v2", (GOOD, POOR, GOOD))):
        events += lineage(demo_repo, version, runs)
    payloads = []
    for version in ("v1", "v2"):
        payloads += [Promoted(version=version, stage="shadow"),
                     MetricsObserved(version=version, stage="shadow", window_start=at,
                                     window_end=at, requests=90,
                                     metrics={"format_rate": 0.99})]
    payloads.append(Promoted(version="v1", stage="shadow"))
    GitEventStore(demo_repo).append(
        "rtb-quality", [*events, *(Event.new(p, actor="test") for p in payloads)], 0)
    bare = bare_origin(demo_repo, tmp_path, f"{EVENTS_REF}:{EVENTS_REF}")
    fake = FakeGitHub(bare, "team/rtb", TOKENS)
    monkeypatch.setenv("MODELSMITH_FORGE", "github")
    monkeypatch.setenv("MODELSMITH_GITHUB_REPO", "team/rtb")
    monkeypatch.setenv("MODELSMITH_GITHUB_API", fake.url)
    monkeypatch.setenv("MODELSMITH_GITHUB_TOKEN", "bot-token")
    clones = {}
    for who in ("agent", "reconciler"):
        path = tmp_path / who
        subprocess.run(["git", "clone", "-q", "-b", "main", str(bare), str(path)], check=True)
        git(path, "fetch", "-q", "origin", f"{EVENTS_REF}:{EVENTS_REF}")
        clones[who] = path
    yield fake, clones
    fake.close()


def modelsmith(repo, *args):
    done = subprocess.run([sys.executable, "-m", "modelsmith", "-C", str(repo), *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def as_user(api, token):
    gh = github3.GitHub(token=token)
    gh.session.base_url = api
    return gh


def review_and_merge(fake, token, event="APPROVE"):
    """A person with ``token`` reviews pull request #1 and merges it."""
    pull = as_user(fake.url, token).pull_request("team", "rtb", 1)
    pull.create_review("reviewed", event=event)
    assert pull.merge() is True


def propose(clones, version):
    out = json.loads(modelsmith(clones["agent"], "propose", "rtb-quality", "--version",
                                version, "--stage", "canary", "--traffic", "0.1", "--json"))
    assert out["forge"] == "github" and out["ref"].endswith("/pull/1")
    return out


def reconcile(clones):
    git(clones["reconciler"], "pull", "-q", "origin", "main")
    out = json.loads(modelsmith(clones["reconciler"], "reconcile", "--push", "--json"))
    return out["applied"]


def test_an_approved_pull_request_is_promoted_with_its_number(world):
    fake, clones = world
    proposal = propose(clones, "v1")
    pull = as_user(fake.url, "bot-token").pull_request("team", "rtb", 1)
    assert pull.title == "Promote rtb-quality v1 to canary"
    assert ("✅ **composite**: 3 consecutive versions along v1's lineage at >= 0.9 "
            "(dev composite): v1 0.952, v102 0.952, v101 0.952") in pull.body
    assert "❌ **approval**" in pull.body and proposal["ready"] is True
    # Not merged yet: nothing to do.
    assert reconcile(clones) == []
    review_and_merge(fake, "alice-token")
    (applied,) = reconcile(clones)
    assert (applied["type"], applied["version"], applied["stage"]) == (
        "Promoted", "v1", "canary")
    assert applied["approval"] == {"forge": "github", "ref": "#1", "merged_by": "alice",
                                   "approvers": ["alice"], "required": []}
    git(clones["agent"], "fetch", "-q", "origin", f"{EVENTS_REF}:{EVENTS_REF}")
    (promoted,) = [e for e in GitEventStore(clones["agent"]).read("rtb-quality")
                   if e.type == "Promoted" and e.data["stage"] == "canary"]
    assert promoted.cause == "github:#1" and promoted.data["traffic"] == 0.1
    assert reconcile(clones) == []  # the second run appends nothing


def test_a_pull_request_merged_without_approval_is_rejected(world):
    fake, clones = world
    propose(clones, "v1")
    review_and_merge(fake, "mallory-token", event="COMMENT")
    (applied,) = reconcile(clones)
    assert (applied["type"], applied["gates"][-1]["name"]) == ("PromotionRejected", "approval")
    assert "github #1 merged by mallory, approved by nobody" in applied["reason"]


def test_a_version_whose_evidence_fails_is_rejected_with_numbers(world):
    fake, clones = world
    propose(clones, "v2")
    review_and_merge(fake, "alice-token")
    (applied,) = reconcile(clones)
    assert applied["type"] == "PromotionRejected"
    composite = next(g for g in applied["gates"] if g["name"] == "composite")
    assert composite["passed"] is False and composite["numbers"]["lowest"] == 0.826
    assert applied["reason"].endswith(
        "2 of the 3 consecutive versions needed along v2's lineage at >= 0.9 (dev composite): "
        "v2 0.952, v202 0.826, v201 0.952")


def test_forged_or_edited_evidence_cannot_make_a_failing_version_pass(world):
    """v2 fails. Whoever can write the log tries: three evaluations claiming 0.99 over
    results that say otherwise; then three whose results blob was swapped after the event
    recorded its digest. Both are rejected, with the reason."""
    import pygit2

    from modelsmith.events.gitstore import format_message

    fake, clones = world
    propose(clones, "v2")
    review_and_merge(fake, "alice-token")
    git(clones["reconciler"], "pull", "-q", "origin", "main")
    root = clones["reconciler"]
    store = GitEventStore(root)

    poor = evaluated(root, "v2", POOR)
    claims = [Event.new(EvalCompleted(**{**poor.data, "composite": 0.99}), actor="forger",
                        evidence=store_evidence(poor)) for _ in range(3)]
    store.append("rtb-quality", claims, store.last_seq("rtb-quality"))
    (applied,) = json.loads(modelsmith(root, "reconcile", "--json"))["applied"]
    assert applied["type"] == "PromotionRejected"
    assert ("is not borne out by its evidence: its results recompute to composite 0.8136, "
            "not 0.9900") in applied["reason"]

    # Swapped evidence: a good evaluation's event over a poor run's results.
    repo = pygit2.Repository(str(root))
    tip = repo.references[EVENTS_REF].target
    seq = store.last_seq("rtb-quality")
    for i in range(3):
        good = evaluated(root, "v2", GOOD)
        swapped = repo.TreeBuilder()
        for name, data in store_evidence(poor).items():
            swapped.insert(name, repo.create_blob(data), pygit2.enums.FileMode.BLOB)
        recorded = good.recorded("rtb-quality", seq + i + 1, 0)
        sig = pygit2.Signature("forger", "forger@example.com")
        tip = repo.create_commit(None, sig, sig, format_message(recorded, str(tip)),
                                 swapped.write(), [tip])
    repo.references[EVENTS_REF].set_target(tip)
    (applied,) = json.loads(modelsmith(root, "reconcile", "--json"))["applied"]
    assert applied["type"] == "PromotionRejected"
    assert "does not match the digest its event recorded" in applied["reason"]
    assert [e.type for e in GitEventStore(root).read("rtb-quality")].count("Promoted") == 3


def store_evidence(event: Event) -> dict[str, bytes]:
    return dict(event.blobs)


def with_codeowners(fake, clones, text):
    """CODEOWNERS on main (pushed by the agent), and the team ml-reviewers = alice."""
    fake.teams["team/ml-reviewers"] = ["alice"]
    agent = clones["agent"]
    (agent / ".github").mkdir()
    (agent / ".github" / "CODEOWNERS").write_text(text)
    git(agent, "add", "-A")
    git(agent, "commit", "-q", "-m", "CODEOWNERS")
    git(agent, "push", "-q", "origin", "main")


def test_a_codeowners_team_is_satisfied_by_a_members_approval(world):
    """CODEOWNERS names a team: a member's approval counts for it, another's does not."""
    fake, clones = world
    with_codeowners(fake, clones, "* @team/release-admins\nspecialists/ @team/ml-reviewers\n")
    propose(clones, "v1")
    review_and_merge(fake, "alice-token")
    (applied,) = reconcile(clones)
    assert applied["type"] == "Promoted", applied
    assert applied["approval"]["required"] == ["alice"]


def test_a_codeowners_team_is_not_satisfied_by_an_outsider(world):
    fake, clones = world
    with_codeowners(fake, clones, "specialists/ @team/ml-reviewers\n")
    propose(clones, "v1")
    review_and_merge(fake, "mallory-token")
    (applied,) = reconcile(clones)
    assert (applied["type"], applied["gates"][-1]["name"]) == ("PromotionRejected", "approval")
    assert "alice" in applied["reason"], applied["reason"]


def test_plan_lists_an_open_pull_request_until_it_is_merged(world):
    fake, clones = world
    propose(clones, "v1")
    url = "https://github.example/team/rtb/pull/1"
    git(clones["reconciler"], "pull", "-q", "origin", "main")
    plan = json.loads(modelsmith(clones["reconciler"], "plan", "--json"))
    (waiting,) = plan["proposals"]
    assert {key: waiting[key] for key in ("forge", "ref", "number", "branch", "specialist",
                                          "stage", "version", "ready")} == {
        "forge": "github", "ref": url, "number": 1,
        "branch": "modelsmith/propose/rtb-quality/canary-v1", "specialist": "rtb-quality",
        "stage": "canary", "version": "v1", "ready": True}
    approval = next(g for g in waiting["gates"] if g["name"] == "approval")
    assert approval["passed"] is False  # the merge brings it
    output = modelsmith(clones["reconciler"], "plan")
    assert (f"No changes to apply; 1 proposal waits for review: rtb-quality v1 -> canary "
            f"({url}).") in output
    review_and_merge(fake, "alice-token")
    git(clones["reconciler"], "pull", "-q", "origin", "main")
    plan = json.loads(modelsmith(clones["reconciler"], "plan", "--json"))
    assert plan["proposals"] == [] and [a["kind"] for a in plan["actions"]] == ["promote"]


def test_plan_says_when_github_cannot_list_proposals(world, monkeypatch):
    _fake, clones = world
    monkeypatch.setenv("MODELSMITH_GITHUB_API", "http://127.0.0.1:9")  # nobody listens
    done = subprocess.run([sys.executable, "-m", "modelsmith", "-C", str(clones["agent"]),
                           "plan", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["proposals"] == []
    (warning,) = done.stderr.splitlines()
    assert warning.startswith("open proposals not listed: GitHub team/rtb: ")
    assert "Traceback" not in done.stderr
