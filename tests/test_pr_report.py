"""``modelsmith pr-report``: a pull request that changes a scenario and adds one, evaluated
for real with the tiny model on main's suite and on its own, paired, recorded nowhere."""

from __future__ import annotations

import json
from pathlib import Path

import pygit2
import pytest
from click.testing import CliRunner

from conftest import git
from modelsmith.app.pr_report import MARKER
from modelsmith.artifacts.dvc import ArtifactStore
from modelsmith.cli import cli
from modelsmith.events.gitstore import EVENTS_REF, GitEventStore
from modelsmith.events.types import CandidateRegistered, Event, Lineage, Promoted

SCENARIOS = "evals/rtb-quality/scenarios.jsonl"
ADDED = {"id": "rtb-pr-0001", "split": "core", "tags": ["clean"], "expected": "ACCEPT",
         "input": "domain=news.example ctr=2.2% floor=$1.10 format=video device=desktop geo=US",
         "variants": []}


def run(repo: Path, *args: str):
    return CliRunner().invoke(cli, ["-C", str(repo), "--no-fetch", *args])


@pytest.fixture
def pr_repo(train_repo: Path, monkeypatch) -> Path:
    """main: the demo with its suite cut to 6 core, 2 dev and 2 held-out scenarios and the
    tiny model as base; the branch `pr` (checked out) flips rtb-0001's expected label and
    adds a scenario."""
    monkeypatch.setenv("MODELSMITH_NO_FETCH", "1")
    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", str(train_repo.parent / "dvc-remote"))
    rows = [json.loads(line) for line in (train_repo / SCENARIOS).read_text().splitlines()]
    kept = [r for split, n in (("core", 6), ("dev", 2), ("heldout", 2))
            for r in [r for r in rows if r["split"] == split][:n]]
    _write(train_repo, kept)
    spec = train_repo / "specialists/rtb-quality.yaml"
    spec.write_text(spec.read_text().replace("base: smollm2-135m", "base: tiny-test"))
    git(train_repo, "checkout", "-q", "-b", "main")
    git(train_repo, "add", "-A")
    git(train_repo, "commit", "-q", "-m", "a small suite")
    git(train_repo, "checkout", "-q", "-b", "pr")
    first = kept[0]
    first["expected"] = "REJECT" if first["expected"] == "ACCEPT" else "ACCEPT"
    _write(train_repo, [*kept[:6], ADDED, *kept[6:]])
    git(train_repo, "commit", "-q", "-am", "relabel rtb-0001, add rtb-pr-0001")
    return train_repo


def _write(repo: Path, rows: list[dict]) -> None:
    (repo / SCENARIOS).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_report_names_both_suites_the_pairing_and_the_changes(pr_repo, tmp_path):
    out = tmp_path / "report.md"
    result = run(pr_repo, "pr-report", "--base", "main", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    md = out.read_text()
    assert md.startswith(MARKER + "\n")
    assert "#### rtb-quality" in md and "`evals/rtb-quality/scenarios.jsonl`" in md
    assert "1 scenario(s) added: `rtb-pr-0001`" in md and "1 changed: `rtb-0001`" in md
    assert "nothing is deployed yet: evaluating the base model `tiny-test`" in md
    assert "composite on `main`'s suite" in md and "this pull request's suite" in md
    assert "| core | 6 |" in md  # paired on the six core scenarios both suites hold
    assert "`main`'s suite (`rtb-quality`" in md and "This pull request's suite" in md

    data = json.loads(result.stdout)
    assert data["base"]["ref"] == "main" and data["recorded"] is False
    assert data["changed"] == [SCENARIOS]
    (sp,) = data["specialists"]
    assert sp["specialist"] == "rtb-quality"
    assert sp["scenarios"] == {"added": ["rtb-pr-0001"], "removed": [], "changed": ["rtb-0001"]}
    (model,) = sp["models"]
    assert model["model"] == "tiny-test" and model["stages"] == ["base"]
    head, base = model["head"]["report"], model["base"]["report"]
    assert head["n_core"] == 7 and base["n_core"] == 6
    assert model["head"]["suite_hash"] != model["base"]["suite_hash"]
    assert f"| **composite** | {head['composite']:.3f}" in md
    assert f"| **composite** | {base['composite']:.3f}" in md
    paired = model["paired"]["core"]
    assert paired["n"] == 6 and paired["verdict"] in ("better", "worse", "inconclusive")
    assert set(model["paired"]) == {"core", "dev", "heldout"}
    # A report, not evidence: the log is untouched.
    assert pygit2.Repository(str(pr_repo)).references.get(EVENTS_REF) is None


def test_a_change_that_touches_no_suite_says_so(pr_repo):
    result = run(pr_repo, "pr-report", "--base", "pr")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(MARKER)
    assert "nothing to evaluate" in result.stdout


def test_a_release_edit_alone_is_not_evaluated(pr_repo):
    """A promotion pull request edits `release`; the plan comment covers it."""
    git(pr_repo, "checkout", "-q", "main")
    spec = pr_repo / "specialists/rtb-quality.yaml"
    spec.write_text(spec.read_text().replace("  shadow: null", "  shadow: v1"))
    data = json.loads(run(pr_repo, "pr-report", "--base", "main", "--json").stdout)
    assert data["changed"] == ["specialists/rtb-quality.yaml"] and data["specialists"] == []


@pytest.mark.parametrize("ref", ["no-such-branch", "a..b", "0" * 40, ""])
def test_a_bad_base_is_a_clear_error(pr_repo, ref):
    result = run(pr_repo, "pr-report", "--base", ref)
    assert result.exit_code == 2, result.output
    assert f"--base {ref!r} names no commit" in result.output
    assert "Traceback" not in result.output


def test_a_deployed_version_without_weights_names_it_and_the_remote(pr_repo, tmp_path):
    store = GitEventStore(pr_repo)
    events = [CandidateRegistered(version="v1", lineage=Lineage(base_model="tiny-test")),
              Promoted(version="v1", stage="shadow")]
    for seq, payload in enumerate(events):
        store.append("rtb-quality", [Event.new(payload, actor="test")], seq)
    store.close()
    ArtifactStore(pr_repo).ensure_initialised()  # the default remote: an empty folder
    result = run(pr_repo, "pr-report", "--base", "main", "--out", str(tmp_path / "r.md"))
    assert result.exit_code == 1, result.output
    assert "no weights for rtb-quality v1" in result.output
    assert str(pr_repo.parent / "dvc-remote") in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r.md").exists()


def test_base_files_that_do_not_load_are_a_clear_error(pr_repo):
    git(pr_repo, "checkout", "-q", "main")
    (pr_repo / "config/clusters.json").write_text('{"hosts": ')
    git(pr_repo, "commit", "-q", "-am", "break the config")
    git(pr_repo, "checkout", "-q", "pr")
    result = run(pr_repo, "pr-report", "--base", "main")
    assert result.exit_code == 1, result.output
    assert "the declarative files at main" in result.output
    assert "config/clusters.json" in result.output


@pytest.mark.parametrize(("changed", "why"), [
    (["policies/promotion.yaml"], "`policies/promotion.yaml` (policy default)"),
    (["evals/rtb-quality/suite.yaml"], "`evals/rtb-quality/suite.yaml` (suite rtb-quality)"),
    (["evals/rtb-quality/generate.py"], "`evals/rtb-quality/generate.py` (suite rtb-quality)"),
    (["policies/routing.yaml", "README.md", "config/clusters.json"], None),
])
def test_which_changes_touch_a_specialist(demo_files, changed, why):
    from modelsmith.app.pr_report import touched
    from modelsmith.specs import load_repository

    repo = load_repository(demo_files)
    found = touched(repo, repo, changed)
    assert found == ({"rtb-quality": [why]} if why else {})


def test_a_task_prompt_change_touches_its_specialist(demo_files, tmp_path):
    import shutil

    from modelsmith.app.pr_report import touched
    from modelsmith.specs import load_repository

    base = load_repository(demo_files)
    other = tmp_path / "other"
    shutil.copytree(demo_files, other)
    spec = other / "specialists/rtb-quality.yaml"
    spec.write_text(spec.read_text().replace("Verdict:", "Answer:"))
    found = touched(load_repository(other), base, ["specialists/rtb-quality.yaml"])
    assert found == {"rtb-quality": ["`specialists/rtb-quality.yaml` (spec.task)"]}
