"""The human gate on changes to what judges a model: a commit on main that changed a
guarded file (suites, policies, a specialist's task and target, training profiles) without
an approved merge holds the promotions of the specialists it concerns -- PromotionRejected
by the ``review`` gate, naming the commit and the path -- until an approved change to the
same file lands (local forge: a merge with ``Approved-by:``)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import approved_change, git
from evaluations import GOOD, lineage
from modelsmith.cli import cli
from modelsmith.events.gitstore import GitEventStore
from modelsmith.specs.review import GuardError, compile_guard

SPEC = "specialists/rtb-quality.yaml"
POLICY = "policies/promotion.yaml"


@pytest.fixture
def fork(demo_repo):
    """The demo fork committed (its first commit is never judged), with v1 evaluated well
    enough for shadow."""
    git(demo_repo, "add", "-A")
    git(demo_repo, "commit", "-qm", "the fork")
    GitEventStore(demo_repo).append("rtb-quality", lineage(demo_repo, "v1", (GOOD,) * 3), 0)
    return demo_repo


def run(repo, *args, code=0):
    result = CliRunner().invoke(cli, ["-C", str(repo), *args])
    assert result.exit_code == code, result.output
    return result.output


def pushed_straight(repo, path, text, message="edited on main"):
    """Commit a change to ``path`` straight onto main (no review); the commit's id."""
    file = repo / path
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)
    git(repo, "add", path)
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD").strip()


def ask_shadow(repo):
    spec = repo / SPEC
    spec.write_text(spec.read_text().replace("  shadow: null", "  shadow: v1"))


def holds(repo):
    return json.loads(run(repo, "plan", "--json"))["holds"]


def test_an_unreviewed_change_to_evals_holds_promotions_until_an_approved_one_lands(fork):
    commit = pushed_straight(fork, "evals/README.md", "What the suites test.\n")
    ask_shadow(fork)
    output = run(fork, "reconcile")
    assert output.startswith("PromotionRejected rtb-quality shadow: - -> v1")
    (rejected,) = [e for e in GitEventStore(fork).read("rtb-quality")
                   if e.type == "PromotionRejected"]
    assert rejected.data["gate"] == "review"
    assert f"commit {commit[:12]} changed evals/README.md without an approved merge" \
        in rejected.data["reason"]
    (hold,) = holds(fork)["rtb-quality"]
    assert (hold["commit"], hold["path"]) == (commit, "evals/README.md")
    plan = run(fork, "plan")
    assert "Held for review" in plan and f"evals/README.md changed by {commit[:12]}" in plan
    assert run(fork, "reconcile").startswith("nothing to do")  # rejected once

    (fork / "evals" / "README.md").write_text("What the suites test, reviewed.\n")
    approved_change(fork, "the suites' README, reviewed")
    assert holds(fork) == {}
    assert run(fork, "reconcile").startswith("Promoted rtb-quality shadow: - -> v1")


def test_a_suite_change_pushed_straight_holds_its_specialist_only(fork):
    scenarios = fork / "evals" / "rtb-quality" / "scenarios.jsonl"
    first = scenarios.read_text().splitlines(keepends=True)
    commit = pushed_straight(fork, "evals/rtb-quality/scenarios.jsonl",
                             "".join(first[:-1]), "drop a scenario")
    found = holds(fork)
    assert list(found) == ["rtb-quality"]  # the other specialists' suites are elsewhere
    assert found["rtb-quality"][0]["commit"] == commit
    scenarios.write_text("".join(first))
    approved_change(fork, "the scenario back, reviewed")
    assert holds(fork) == {}


def test_only_the_guarded_keys_of_a_specialist_file_count(fork):
    spec = fork / SPEC
    text = spec.read_text()
    pushed_straight(fork, SPEC, text.replace("  shadow: null", "  shadow: v1"), "release")
    assert holds(fork) == {}  # release changes have their own gate (the stage's approval)
    commit = pushed_straight(fork, SPEC, spec.read_text().replace(
        "Verdict:", "Answer:"), "a new prompt")
    (hold,) = holds(fork)["rtb-quality"]
    assert (hold["commit"], hold["entry"]) == (commit, f"{SPEC}#spec.task")


def test_the_review_rules_guard_themselves(fork):
    policy = fork / POLICY
    text = policy.read_text().replace("  bootstrap: replay",
                                      "  bootstrap: replay\n  review:\n    paths: []")
    commit = pushed_straight(fork, POLICY, text, "nothing needs review any more")
    found = holds(fork)
    assert {h["commit"] for hs in found.values() for h in hs} == {commit}
    assert {h["entry"] for h in found["rtb-quality"]} == {POLICY}


def test_review_since_starts_the_review_after_a_commit(fork):
    commit = pushed_straight(fork, "evals/README.md", "unreviewed\n")
    assert holds(fork)
    policy = fork / POLICY
    policy.write_text(policy.read_text().replace(
        "  bootstrap: replay", f"  bootstrap: replay\n  review:\n    since: {commit[:10]}"))
    approved_change(fork, "review starts after the import")
    assert holds(fork) == {}


def test_a_review_since_that_is_not_on_the_branch_is_said(fork):
    policy = fork / POLICY
    policy.write_text(policy.read_text().replace(
        "  bootstrap: replay", "  bootstrap: replay\n  review:\n    since: " + "ab" * 20))
    approved_change(fork, "a since from another history")
    result = CliRunner().invoke(cli, ["-C", str(fork), "plan"])
    assert result.exit_code == 0
    assert "review.since abababababab" in result.output and "not a commit" in result.output


def test_a_merge_without_approvers_does_not_lift_a_hold(fork):
    pushed_straight(fork, "evals/README.md", "unreviewed\n")
    (fork / "evals" / "README.md").write_text("merged, nobody approved\n")
    git(fork, "checkout", "-q", "-b", "quiet")
    git(fork, "commit", "-qam", "quiet change")
    git(fork, "checkout", "-q", "-")
    merge = None
    git(fork, "merge", "--no-ff", "-q", "quiet", "-m", "Merge quiet")
    merge = git(fork, "rev-parse", "HEAD").strip()
    (hold,) = holds(fork)["rtb-quality"]
    assert hold["commit"] == merge and "approved by nobody" in hold["why"]


@pytest.mark.parametrize("pattern, says", [
    ("", "empty review pattern"),
    ("/evals/**", "relative to the repository root"),
    ("evals/../x", "'..'"),
    ("evals/[ab", "no ']' closes"),
    ("evals/x**", "stands alone"),
    ("specialists/**#", "dotted key"),
    ("specialists/**#spec..task", "dotted key"),
    ("evals/[z-a]", "bad character range"),
])
def test_a_bad_review_pattern_is_an_error_that_says_how_to_fix_it(pattern, says):
    with pytest.raises(GuardError, match=None) as caught:
        compile_guard(pattern)
    assert says in str(caught.value)


def test_validate_names_the_file_line_and_field_of_a_bad_review_block(demo_repo):
    policy = demo_repo / POLICY
    policy.write_text(policy.read_text().replace(
        "  bootstrap: replay",
        "  bootstrap: replay\n  review:\n    paths: ['evals/**', 'a/[b']\n    since: HEAD"))
    result = CliRunner().invoke(cli, ["-C", str(demo_repo), "validate"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "policies/promotion.yaml" in result.output
    assert "spec.review.paths[1]" in result.output and "no ']' closes" in result.output
    assert "spec.review.since" in result.output


def test_globs_match_as_documented():
    assert compile_guard("evals/**").matches("evals/a/b/c.jsonl")
    assert not compile_guard("evals/**").matches("evalsx/a")
    assert compile_guard("a/**/b.yaml").matches("a/b.yaml")
    assert compile_guard("a/**/b.yaml").matches("a/x/y/b.yaml")
    assert not compile_guard("a/*.yaml").matches("a/x/b.yaml")
    assert compile_guard("config/clusters.json#profiles").key == ("profiles",)
