"""A fork after training: the DVC pointer files are committed on its branch (and nothing
else), `git merge` of a proposal works, `dvc status` is clean, and `dvc repro` rebuilds the
candidate params.yaml names. Real git, real DVC CLI, the tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pygit2
import pytest
from click.testing import CliRunner

from conftest import REPO_ROOT, git
from modelsmith.app import Modelsmith
from modelsmith.artifacts.commits import FALLBACK_EMAIL, FALLBACK_NAME, commit_paths
from modelsmith.cli import cli
from modelsmith.training.repro import set_rebuild

BIN = Path(sys.executable).parent
CLEAN = "Data and pipelines are up to date."


def run(repo: Path, *args: str):
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["-C", str(repo), *args])


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """The real DVC CLI as a user runs it; its stages find the `modelsmith` beside Python."""
    environ = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=environ,
                          capture_output=True, text=True, check=False)


@pytest.fixture
def fork(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fork of this repository's defaults, as `modelsmith demo` makes it, with its own
    caches and a git user."""
    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))
    monkeypatch.delenv("MODELSMITH_DVC_REMOTE", raising=False)
    dest = tmp_path / "fork"
    Modelsmith.fork(REPO_ROOT, dest)
    git(dest, "config", "user.name", "Dana")
    git(dest, "config", "user.email", "dana@example.com")
    return dest


def train(repo: Path) -> None:
    result = run(repo, "train", "rtb-quality", "--model", "tiny-test", "--profile", "cpu-tiny",
                 "--steps", "1", "--sft-steps", "1")
    assert result.exit_code == 0, result.output


def changed_in_head(repo: Path) -> list[str]:
    return git(repo, "show", "--name-only", "--format=", "HEAD").split()


def test_training_in_a_fork_commits_only_its_pointer_files(fork):
    assert run(fork, "eval", "rtb-quality", "--model", "tiny-test", "--threads", "1",
               "--min-composite", "0").exit_code == 0
    assert git(fork, "status", "--porcelain") == ""  # an evaluation versions nothing
    train(fork)

    # One commit on main, by the git user, naming the version and both hashes; DVC's setup
    # files go with the first pointers (Modelsmith initialised DVC in this fork).
    assert git(fork, "status", "--porcelain") == ""
    (registered,) = [e for e in Modelsmith.open(fork).store.read("rtb-quality")
                     if e.type == "CandidateRegistered"]
    lineage = registered.data["lineage"]
    subject = git(fork, "log", "-1", "--format=%s|%an <%ae>")
    assert subject == (f"modelsmith: version rtb-quality v1 (dataset "
                       f"{lineage['dataset_hash'][:8]}, weights "
                       f"{lineage['weights_hash'][:8]})|Dana <dana@example.com>\n")
    assert f"Weights: {lineage['weights_hash']}" in git(fork, "log", "-1", "--format=%b")
    data_dvc = f"data/rtb-quality/{lineage['dataset_hash'][:16]}.jsonl.dvc"
    assert sorted(changed_in_head(fork)) == sorted([
        ".dvc/.gitignore", ".dvc/config", ".dvcignore", "data/rtb-quality/.gitignore",
        data_dvc, "models/rtb-quality/.gitignore", "models/rtb-quality/v1.dvc"])
    assert git(fork, "rev-parse", "--abbrev-ref", "HEAD") == "main\n"

    # DVC agrees with the work tree; the pipeline rebuilds nothing until asked.
    status = dvc(fork, "status")
    assert status.returncode == 0 and status.stdout.strip() == CLEAN, status.stdout

    # The proposal merges: nothing staged is in its way.
    repo = Modelsmith.open(fork)
    proposal = repo.forge(repo.specs()).propose("rtb-quality", "shadow", "v1", title="t",
                                                body="b")
    git(fork, "merge", "--no-ff", "-q", proposal.ref, "-m", "Merge the proposal")
    assert "  shadow: v1" in (fork / "specialists/rtb-quality.yaml").read_text()

    # The user's own changes, staged and not, survive the next candidate uncommitted.
    (fork / "notes.txt").write_text("mine\n")
    git(fork, "add", "notes.txt")
    with (fork / ".gitignore").open("a") as out:
        out.write("scratch/\n")
    before = git(fork, "rev-parse", "HEAD").strip()
    train(fork)
    assert git(fork, "status", "--porcelain") == " M .gitignore\nA  notes.txt\n"
    assert git(fork, "rev-parse", "HEAD^").strip() == before
    assert sorted(changed_in_head(fork)) == ["models/rtb-quality/.gitignore",
                                             "models/rtb-quality/v2.dvc"]
    assert git(fork, "log", "-1", "--format=%s").startswith(
        "modelsmith: version rtb-quality v2 (dataset ")

    # `dvc repro` rebuilds what params.yaml names: set, seen by dvc, rebuilt, clean.
    bad = run(fork, "repro", "set", "rtb-quality", "v9")
    assert bad.exit_code == 1 and "no candidate v9" in bad.output
    assert "Traceback" not in bad.output
    done = run(fork, "repro", "set", "rtb-quality", "v1")
    assert done.exit_code == 0, done.output
    assert "rebuild rtb-quality v1" in done.output
    # (`dvc repro --dry` cannot plan past a stage whose input does not exist yet.)
    pending = dvc(fork, "status")
    assert pending.returncode == 0, pending.stderr
    for stage in ("data", "train", "eval"):
        assert f"{stage}@rtb-quality:" in pending.stdout
    rebuilt = dvc(fork, "repro")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "bit-identical to v1" in rebuilt.stdout
    assert (fork / "rebuild/rtb-quality/v1/metrics.json").is_file()
    assert dvc(fork, "status").stdout.strip() == CLEAN


def test_the_iterate_loop_commits_each_candidate_it_trains(fork):
    result = run(fork, "iterate", "rtb-quality", "--model", "tiny-test", "--profile",
                 "cpu-tiny", "--max-iterations", "1", "--target", "0.99")
    assert result.exit_code == 3, result.output  # the budget, not the target
    assert git(fork, "status", "--porcelain") == ""
    assert git(fork, "log", "-1", "--format=%s").startswith(
        "modelsmith: version rtb-quality v1 (dataset ")
    assert dvc(fork, "status").stdout.strip() == CLEAN


def test_a_fresh_repository_and_a_fork_have_a_pipeline_of_their_own(tmp_path, monkeypatch):
    """No stage of a fork's dvc.yaml depends on a file the fork lacks (the engine's schema
    stage stays in engine/dvc.yaml), and a repository from `init` is clean for DVC."""
    from ruamel.yaml import YAML

    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", str(tmp_path / "remote"))
    dest = tmp_path / "team"
    assert CliRunner().invoke(cli, ["init", str(dest)]).exit_code == 0
    text = (dest / "dvc.yaml").read_text()
    pipeline = YAML(typ="safe").load(
        text.replace("${key}", "rtb-quality").replace("${item}", "v1"))
    assert set(pipeline["stages"]) == {"data", "train", "eval"}
    made: set[str] = set()  # what an earlier stage writes
    for stage in pipeline["stages"].values():
        body = stage["do"]
        for dep in body["deps"]:
            assert dep in made or (dest / dep).exists(), dep
        made.update(body.get("outs", []))
    assert YAML(typ="safe").load((dest / "params.yaml").read_text())["rebuild"] == {}
    for args in (("status",), ("repro", "--dry")):
        done = dvc(dest, *args)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "changed" not in done.stdout and "Running stage" not in done.stdout
    assert git(dest, "status", "--porcelain") == ""
    assert "engine/modelsmith/specs" in (REPO_ROOT / "engine/dvc.yaml").read_text()


def test_rebuild_targets_keep_comments_and_old_pipelines(tmp_path):
    (tmp_path / "params.yaml").write_text("# which ones\nrebuild: {}  # none yet\n")
    assert set_rebuild(tmp_path, "rtb", "v2") == {"rtb": "v2"}
    assert set_rebuild(tmp_path, "other", "v1") == {"rtb": "v2", "other": "v1"}
    assert set_rebuild(tmp_path, "rtb", None) == {"other": "v1"}
    text = (tmp_path / "params.yaml").read_text()
    assert text.startswith("# which ones\n") and "other: v1" in text
    # A fork whose dvc.yaml still rebuilds one candidate keeps that form.
    (tmp_path / "dvc.yaml").write_text("stages:\n  data:\n    cmd: x ${rebuild.specialist}\n")
    assert set_rebuild(tmp_path, "rtb", "v3") == {"specialist": "rtb", "version": "v3"}
    (tmp_path / "params.yaml").write_text("rebuild: [unclosed\n")
    from modelsmith.evaluation.results import EvalError

    with pytest.raises(EvalError, match=r"params\.yaml:\d+:\d+"):
        set_rebuild(tmp_path, "rtb", "v1")


@pytest.fixture
def team(tmp_path: Path) -> Path:
    root = tmp_path / "team"
    pygit2.init_repository(str(root), initial_head="main")
    (root / "README").write_text("hello\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first")
    return root


def test_only_the_named_paths_are_committed(team):
    (team / "models").mkdir()
    (team / "models/v1.dvc").write_text("outs: []\n")
    (team / "README").write_text("hello, edited and staged\n")
    (team / "mine.txt").write_text("staged\n")
    git(team, "add", "README", "mine.txt")
    done = commit_paths(team, ["models/v1.dvc", "gone.dvc"], "modelsmith: version x v1")
    assert done.committed and done.branch == "main" and done.paths == ("models/v1.dvc",)
    assert git(team, "show", "--name-only", "--format=%s", "HEAD").split() == [
        "modelsmith:", "version", "x", "v1", "models/v1.dvc"]
    assert git(team, "status", "--porcelain") == "M  README\nA  mine.txt\n"
    # Unchanged paths: no commit.
    head = git(team, "rev-parse", "HEAD")
    assert not commit_paths(team, ["models/v1.dvc"], "again").committed
    assert git(team, "rev-parse", "HEAD") == head


def test_without_a_branch_the_pointers_stay_staged_with_the_reason(team, tmp_path):
    git(team, "checkout", "-q", "--detach")
    (team / "v1.dvc").write_text("outs: []\n")
    git(team, "add", "v1.dvc")
    detached = commit_paths(team, ["v1.dvc"], "m")
    assert not detached.committed and "detached" in detached.reason
    assert git(team, "status", "--porcelain") == "A  v1.dvc\n"
    plain = tmp_path / "plain"
    plain.mkdir()
    assert "not a git work tree" in commit_paths(plain, ["a.dvc"], "m").reason
    unborn = tmp_path / "unborn"
    pygit2.init_repository(str(unborn))
    (unborn / "a.dvc").write_text("x\n")
    assert "no commit yet" in commit_paths(unborn, ["a.dvc"], "m").reason


def test_the_identity_falls_back_to_modelsmith(team, tmp_path, monkeypatch):
    """No git user anywhere: the commit is modelsmith's, as the local forge's are."""
    levels = (pygit2.GIT_CONFIG_LEVEL_GLOBAL, pygit2.GIT_CONFIG_LEVEL_XDG,
              pygit2.GIT_CONFIG_LEVEL_SYSTEM)
    saved = {level: pygit2.settings.search_path[level] for level in levels}
    for key in ("NAME", "EMAIL"):
        monkeypatch.delenv(f"GIT_AUTHOR_{key}", raising=False)
        monkeypatch.delenv(f"GIT_COMMITTER_{key}", raising=False)
    try:
        for level in levels:
            pygit2.settings.search_path[level] = str(tmp_path / "no-config")
        (team / "v1.dvc").write_text("outs: []\n")
        assert commit_paths(team, ["v1.dvc"], "m").committed
    finally:
        for level, path in saved.items():
            pygit2.settings.search_path[level] = path
    assert git(team, "log", "-1", "--format=%an <%ae>|%cn").strip() == (
        f"{FALLBACK_NAME} <{FALLBACK_EMAIL}>|{FALLBACK_NAME}")
