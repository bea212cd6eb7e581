"""The github forge: the forge contract, then GitOps end to end: real git (a bare origin,
an agent's clone, a reconciler's clone), a fake of GitHub's REST API on 127.0.0.1 driven by
the real PyGithub. The canary step needs an approval here. An agent proposes -> a pull request
with the evidence -> reviewed and merged (a merge commit, a squash or a rebase) -> reconcile
records ``Promoted`` with the pull request; merged without an approval, pushed straight onto
main under a forged merge message, or for a version whose evidence fails -> rejected with
the numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from conftest import git
from evaluations import GOOD, POOR, evaluated, lineage
from forge_contract import SOURCES, SPEC, SPEC_TEXT, ForgeContract
from github_fake import FakeGitHub
from modelsmith.events.gitstore import EVENTS_REF, GitEventStore
from modelsmith.events.types import (
    EvalCompleted,
    Event,
    MetricsObserved,
    Promoted,
)
from modelsmith.gitops.forge import Approval, ForgeError, GitHubForge, set_release

TOKENS = {"bot-token": "modelsmith-bot", "alice-token": "alice", "mallory-token": "mallory",
          "bob-token": "bob", "carol-token": "carol"}


def test_pygithub_is_imported_only_to_talk_to_github():
    code = ("import sys, modelsmith.cli, modelsmith.gitops.forge, modelsmith.gitops.propose; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('github', 'github3', 'requests', 'torch', 'dvc', 'mcp')))")
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
    method = "merge"  # how the pull requests are merged

    @pytest.fixture
    def forge(self, team, tmp_path):
        fake = FakeGitHub(bare_origin(team, tmp_path), "team/rtb", TOKENS)
        yield GitHubForge(team, SOURCES, repository="team/rtb", token="bot-token",
                          api=fake.url)
        fake.close()

    def merge(self, forge, proposal, *, approvers, merged_by):
        git(forge.root, "push", "-q", "origin", "main")  # GitHub has what main has
        for who in approvers:
            pull_as(forge.api, f"{who}-token", proposal.number).create_review(
                body="reviewed", event="APPROVE")
        status = pull_as(forge.api, f"{merged_by}-token", proposal.number).merge(
            merge_method=self.method)
        assert status.merged is True
        git(forge.root, "pull", "-q", "--ff-only", "origin", "main")

    def review(self, forge, proposal):
        pull = pull_as(forge.api, "bot-token", proposal.number)
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


class TestGitHubForgeSquash(TestGitHubForge):
    """The same contract when pull requests are squash-merged: one new commit on main."""

    method = "squash"


class TestGitHubForgeRebase(TestGitHubForge):
    """The same contract when pull requests are rebase-merged: new commits on main."""

    method = "rebase"


class TestMergeMethods:
    """Which commits of main a pull request's merge made, for each merge method; whatever
    else is on main carries no approval, whatever its message says."""

    @pytest.fixture
    def hub(self, tmp_path):
        team = tmp_path / "team"  # the contract's repository: rtb's v1 in canary
        (team / "specialists").mkdir(parents=True)
        (team / SPEC).write_text(SPEC_TEXT)
        git(team, "init", "-q", "-b", "main")
        git(team, "add", "-A")
        git(team, "commit", "-q", "-m", "the team's repository")
        fake = FakeGitHub(bare_origin(team, tmp_path), "team/rtb", TOKENS)
        yield GitHubForge(team, SOURCES, repository="team/rtb", token="bot-token",
                          api=fake.url), fake
        fake.close()

    @staticmethod
    def commit(root, message, *, release=None, other=None):
        """Commit onto the checked-out branch: ``release.production`` set, or a line
        added to NOTES."""
        spec = root / SPEC
        if release is not None:
            spec.write_text(set_release(set_release(spec.read_text(), "production", release),
                                        "canary", None))
        if other is not None:
            notes = root / "NOTES"
            notes.write_text((notes.read_text() if notes.exists() else "") + other + "\n")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", message)
        return git(root, "rev-parse", "HEAD").strip()

    def pull_request(self, forge, *changes, approvers=("alice",), merged_by="bob",
                     method="merge"):
        """A branch of ``changes`` (``commit`` keywords), pushed, opened as a pull request,
        approved by ``approvers`` and merged by ``merged_by`` with ``method``; main pulled."""
        root = forge.root
        git(root, "checkout", "-q", "-b", "feature")
        for i, change in enumerate(changes):
            self.commit(root, f"change {i}", **change)
        git(root, "push", "-q", "origin", "feature")
        git(root, "checkout", "-q", "main")
        pull = as_user(forge.api, "bob-token").create_pull(base="main", head="feature",
                                                            title="Feature", body="")
        for who in approvers:
            pull_as(forge.api, f"{who}-token", pull.number).create_review(
                body="ok", event="APPROVE")
        status = pull_as(forge.api, f"{merged_by}-token", pull.number).merge(
            merge_method=method)
        assert status.merged is True
        git(root, "pull", "-q", "--ff-only", "origin", "main")
        return pull.number, status.sha

    def first_parents(self, root, count):
        return git(root, "rev-list", "--first-parent", f"-{count}", "HEAD").split()

    def test_a_rebase_of_several_commits_approves_each_commit_it_made(self, hub):
        forge, _fake = hub
        number, merged = self.pull_request(forge, {"release": "v1"}, {"other": "a"},
                                           {"other": "b"}, method="rebase")
        made = self.first_parents(forge.root, 3)
        assert made[0] == merged
        asking = forge.git.asking_change("rtb", "production", "v1")
        assert str(asking.id) == made[2] != merged  # the first of the three asked
        expected = Approval("github", f"#{number}", "bob", ("alice",))
        assert forge.approval("rtb", "production", "v1") == expected
        assert [forge.change_approval(sha, SPEC) for sha in made] == [expected] * 3

    @pytest.mark.parametrize("method", ["squash", "rebase"])
    def test_a_commit_pushed_before_the_merge_is_not_the_pull_requests(self, hub, method):
        """A squash of 2 commits makes one: the commit under it is someone's push, not
        the pull request's (nor is it after a rebase of the 2)."""
        forge, _fake = hub
        pushed = self.commit(forge.root, "production v1", release="v1")
        git(forge.root, "push", "-q", "origin", "main")
        number, merged = self.pull_request(forge, {"other": "a"}, {"other": "b"},
                                           method=method)
        assert self.first_parents(forge.root, 3)[1 if method == "squash" else 2] == pushed
        assert forge.change_approval(merged, SPEC).ref == f"#{number}"
        assert forge.change_approval(pushed, SPEC) is None
        assert forge.approval("rtb", "production", "v1") is None

    def test_a_pull_requests_commit_pushed_straight_onto_main_is_not_its_merge(self, hub):
        """Pull request #1 has two commits, the first asking for v1; someone pushes that
        first commit straight onto main, then the pull request is approved and squashed
        (now of the second commit alone). GitHub still lists #1 for the pushed commit, but
        #1's merge did not make it."""
        forge, _fake = hub
        root = forge.root
        git(root, "checkout", "-q", "-b", "feature")
        first = self.commit(root, "v1", release="v1")
        self.commit(root, "notes", other="a")
        git(root, "push", "-q", "origin", "feature")
        pull = as_user(forge.api, "bob-token").create_pull(base="main", head="feature",
                                                            title="Feature", body="")
        git(root, "push", "-q", "origin", f"{first}:refs/heads/main")
        pull_as(forge.api, "alice-token", pull.number).create_review(body="ok",
                                                                     event="APPROVE")
        squash = pull_as(forge.api, "alice-token", pull.number).merge(merge_method="squash")
        git(root, "checkout", "-q", "main")
        git(root, "pull", "-q", "--ff-only", "origin", "main")
        assert self.first_parents(root, 2) == [squash.sha, first]
        head = forge.client().get_repo("team/rtb").get_commit(first)
        assert [p.number for p in head.get_pulls()] == [pull.number]
        assert forge.change_approval(squash.sha, SPEC).ref == f"#{pull.number}"
        assert forge.approval("rtb", "production", "v1") is None

    @pytest.mark.parametrize("message", [
        "Merge pull request #1 from team/modelsmith/propose/rtb/production-v1",
        "Promote rtb v1 to production (#1)"])
    def test_a_direct_push_under_a_pull_requests_message_is_not_approved(self, hub, message):
        """Pull request #1 asks for v1 and is approved, but is merged by nobody; someone
        pushes the same change to main under GitHub's merge (or squash) message."""
        forge, _fake = hub
        proposal = forge.propose("rtb", "production", "v1", title="Promote rtb v1 to "
                                 "production", body="evidence")
        pull_as(forge.api, "alice-token", proposal.number).create_review(
            body="ok", event="APPROVE")
        if message.startswith("Merge"):  # a real merge commit, of a branch of one's own
            git(forge.root, "checkout", "-q", "-b", "mine")
            self.commit(forge.root, "v1", release="v1")
            git(forge.root, "checkout", "-q", "main")
            git(forge.root, "merge", "-q", "--no-ff", "mine", "-m", message)
        else:
            self.commit(forge.root, message, release="v1")
        git(forge.root, "push", "-q", "origin", "main")
        assert forge.approval("rtb", "production", "v1") is None

    def test_a_pull_request_merged_into_another_branch_approves_nothing_here(self, hub):
        forge, _fake = hub
        git(forge.root, "push", "-q", "origin", "main:release")
        git(forge.root, "checkout", "-q", "-b", "feature")
        self.commit(forge.root, "v1", release="v1")
        git(forge.root, "push", "-q", "origin", "feature")
        pull = as_user(forge.api, "bob-token").create_pull(base="release", head="feature",
                                                            title="v1 on release", body="")
        pull_as(forge.api, "alice-token", pull.number).create_review(body="ok",
                                                                     event="APPROVE")
        assert pull_as(forge.api, "alice-token", pull.number).merge(
            merge_method="squash").merged
        # main takes release's squash commit as it is (a fast-forward): GitHub merged it
        # into release, not into main.
        git(forge.root, "checkout", "-q", "main")
        git(forge.root, "pull", "-q", "--ff-only", "origin", "release")
        assert forge.approval("rtb", "production", "v1") is None

    def test_github_unreachable_or_refusing_the_token_is_a_forge_error(self, hub):
        forge, fake = hub
        self.pull_request(forge, {"release": "v1"}, method="squash")
        for token, api, says in (("nobody-token", fake.url, "401 Bad credentials"),
                                 ("bot-token", "http://127.0.0.1:9",
                                  "cannot reach http://127.0.0.1:9")):
            other = GitHubForge(forge.root, SOURCES, repository="team/rtb", token=token,
                                api=api)
            with pytest.raises(ForgeError, match="GitHub team/rtb: cannot read the pull "
                               f"requests of [0-9a-f]{{12}}: {says}"):
                other.approval("rtb", "production", "v1")

    def test_the_fake_refuses_an_unknown_merge_method(self, hub):
        import github

        forge, _fake = hub
        proposal = forge.propose("rtb", "production", "v1", title="t", body="b")
        with pytest.raises(github.GithubException, match="Invalid merge_method"):
            pull_as(forge.api, "alice-token", proposal.number).merge(merge_method="octopus")


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
    """The team's repository on the fake GitHub, as the person with ``token``."""
    import github

    return github.Github(base_url=api, auth=github.Auth.Token(token), retry=None,
                         seconds_between_requests=None, seconds_between_writes=None,
                         lazy=True).get_repo("team/rtb")


def pull_as(api, token, number):
    return as_user(api, token).get_pull(number)


def review_and_merge(fake, token, event="APPROVE", method="merge"):
    """A person with ``token`` reviews pull request #1 and merges it with ``method``."""
    pull = pull_as(fake.url, token, 1)
    pull.create_review(body="reviewed", event=event)
    assert pull.merge(merge_method=method).merged is True


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
    pull = pull_as(fake.url, "bot-token", 1)
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


@pytest.mark.parametrize("method", ["squash", "rebase"])
def test_a_pull_request_approved_and_squashed_or_rebased_is_promoted(world, method):
    """Squash and rebase merges leave no merge commit: GitHub's commit -> pull request
    association finds #1 for the commit on main."""
    fake, clones = world
    proposal = propose(clones, "v1")
    review_and_merge(fake, "alice-token", method=method)
    git(clones["reconciler"], "pull", "-q", "origin", "main")
    head = git(clones["reconciler"], "show", "-s", "--format=%P%n%s", "HEAD").splitlines()
    assert len(head[0].split()) == 1  # not a merge commit
    assert head[1] == ("Promote rtb-quality v1 to canary (#1)" if method == "squash"
                       else "Promote rtb-quality v1 to canary")
    assert git(clones["reconciler"], "rev-parse", "HEAD").strip() != proposal["commit"]
    (applied,) = reconcile(clones)
    assert (applied["type"], applied["version"], applied["stage"]) == (
        "Promoted", "v1", "canary"), applied
    assert applied["approval"] == {"forge": "github", "ref": "#1", "merged_by": "alice",
                                   "approvers": ["alice"], "required": []}
    assert reconcile(clones) == []


def test_a_direct_push_to_evals_holds_promotions_until_an_approved_pull_request(world):
    """Someone pushes a change to evals/ straight onto main: the approved, squashed
    promotion of v1 is held by the review gate, naming that commit; a pull request that
    changes the same file, approved and merged, lifts the hold."""
    fake, clones = world
    agent = clones["agent"]
    notes = agent / "evals" / "README.md"
    notes.write_text("What the suites test.\n")
    git(agent, "add", "evals/README.md")
    git(agent, "commit", "-qm", "suite notes, unreviewed")
    pushed = git(agent, "rev-parse", "HEAD").strip()
    git(agent, "push", "-q", "origin", "main")
    propose(clones, "v1")
    review_and_merge(fake, "alice-token", method="squash")
    (applied,) = reconcile(clones)
    assert (applied["type"], applied["gates"][0]["name"]) == ("PromotionRejected", "review")
    assert f"commit {pushed[:12]} changed evals/README.md without an approved merge" \
        in applied["reason"]
    assert reconcile(clones) == []  # held, and recorded once

    git(agent, "checkout", "-q", "-b", "notes")
    git(agent, "pull", "-q", "origin", "main")
    notes.write_text("What the suites test, reviewed.\n")
    git(agent, "commit", "-qam", "suite notes, for review")
    git(agent, "push", "-q", "origin", "notes")
    pull = as_user(fake.url, "bob-token").create_pull(base="main", head="notes",
                                                      title="Suite notes", body="")
    pull_as(fake.url, "alice-token", pull.number).create_review(body="ok", event="APPROVE")
    assert pull_as(fake.url, "alice-token", pull.number).merge(merge_method="squash").merged
    (applied,) = reconcile(clones)
    assert (applied["type"], applied["version"], applied["stage"]) == (
        "Promoted", "v1", "canary"), applied


def test_a_direct_push_under_a_forged_merge_message_is_not_approved(world):
    """#1 is approved but nobody merges it; mallory pushes the same change onto main as a
    merge commit of her own branch, under GitHub's merge message for #1."""
    fake, clones = world
    propose(clones, "v1")
    pull_as(fake.url, "alice-token", 1).create_review(body="ok", event="APPROVE")
    mallory = clones["agent"]
    git(mallory, "checkout", "-q", "-b", "mine", "origin/main")
    spec = mallory / "specialists" / "rtb-quality.yaml"
    spec.write_text(set_release(set_release(spec.read_text(), "canary", "v1", 0.1),
                                "shadow", None))  # what the proposal changes
    git(mallory, "commit", "-q", "-am", "canary v1")
    git(mallory, "checkout", "-q", "main")
    git(mallory, "pull", "-q", "origin", "main")
    git(mallory, "merge", "-q", "--no-ff", "mine", "-m",
        "Merge pull request #1 from team/modelsmith/propose/rtb-quality/canary-v1")
    git(mallory, "push", "-q", "origin", "main")
    (applied,) = reconcile(clones)
    assert (applied["type"], applied["gates"][-1]["name"]) == ("PromotionRejected", "approval")
    assert "canary needs a merged, approved change asking for v1; none found" in \
        applied["reason"]


def test_github_down_stops_reconcile_instead_of_rejecting(world, monkeypatch):
    """An approved, merged #1 while GitHub cannot be reached: reconcile fails with the
    reason and records nothing; once GitHub answers, v1 is promoted."""
    fake, clones = world
    propose(clones, "v1")
    review_and_merge(fake, "alice-token", method="squash")
    git(clones["reconciler"], "pull", "-q", "origin", "main")
    monkeypatch.setenv("MODELSMITH_GITHUB_API", "http://127.0.0.1:9")  # nobody listens
    done = subprocess.run([sys.executable, "-m", "modelsmith", "-C", str(clones["reconciler"]),
                           "reconcile", "--push", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "GitHub team/rtb: cannot read the pull requests of " in done.stderr
    assert "cannot reach http://127.0.0.1:9" in done.stderr
    assert [e.type for e in GitEventStore(clones["reconciler"]).read("rtb-quality")].count(
        "PromotionRejected") == 0
    monkeypatch.setenv("MODELSMITH_GITHUB_API", fake.url)
    (applied,) = reconcile(clones)
    assert applied["type"] == "Promoted", applied


@pytest.mark.parametrize("method", ["merge", "squash"])
def test_a_pull_request_merged_without_approval_is_rejected(world, method):
    fake, clones = world
    propose(clones, "v1")
    review_and_merge(fake, "mallory-token", event="COMMENT", method=method)
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


def test_a_squash_merge_that_keeps_the_description_anchors_the_log(world):
    """A team whose squash message is the pull request's description: the body ends with
    the log's anchor trailers, so main still anchors the event log for a fresh clone."""
    fake, clones = world
    propose(clones, "v1")
    pull = pull_as(fake.url, "alice-token", 1)
    assert "Event-Log-Tip: " in pull.body and "Event-Log-Events: " in pull.body
    pull.create_review(body="ok", event="APPROVE")
    assert pull.merge(merge_method="squash", commit_message=pull.body).merged
    git(clones["reconciler"], "pull", "-q", "origin", "main")
    report = json.loads(modelsmith(clones["reconciler"], "verify", "--json"))
    assert report["ok"] and report["anchors"] >= 1, report
