"""``modelsmith init``: a new repository that validates clean and plans, with its workflows
and DVC; the reconcile workflow it ships is the one this repository runs."""

from __future__ import annotations

import pygit2
import pytest
from click.testing import CliRunner

from conftest import REPO_ROOT
from modelsmith.cli import cli


def test_init_scaffolds_a_repository_that_validates_and_plans(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", str(tmp_path / "remote"))
    dest = tmp_path / "team-repo"
    result = CliRunner().invoke(cli, ["init", str(dest)])
    assert result.exit_code == 0, result.output
    for path in ("specialists/rtb-quality.yaml", "policies/promotion.yaml",
                 "config/clusters.json", "dvc.yaml", ".dvc/config", ".gitignore",
                 ".github/workflows/ci.yml", ".github/workflows/reconcile.yml"):
        assert (dest / path).is_file(), path
    repo = pygit2.Repository(str(dest))
    assert repo.head.shorthand == "main" and not repo.status()
    validated = CliRunner().invoke(cli, ["-C", str(dest), "validate"])
    assert validated.exit_code == 0 and validated.output.startswith("ok: 1 specialist")
    planned = CliRunner().invoke(cli, ["-C", str(dest), "plan"])
    assert planned.exit_code == 0 and "No changes" in planned.output
    # The reconciler this repository runs, installing the pinned engine instead of this
    # checkout.
    ours = (REPO_ROOT / ".github/workflows/reconcile.yml").read_text()
    theirs = (dest / ".github/workflows/reconcile.yml").read_text()
    assert _without_installs(theirs) == _without_installs(ours)
    again = CliRunner().invoke(cli, ["init", str(dest)])
    assert again.exit_code == 1 and "not empty" in again.output


def _without_installs(workflow: str) -> str:
    """The workflow less the steps that say where the engine comes from."""
    kept, skipping = [], False
    for line in workflow.splitlines():
        if line.startswith("      - name:"):
            skipping = "engine this repository pins" in line or "Install the control" in line
        if not skipping:
            kept.append(line.replace("pip install -e '.[train]'",
                                     'pip install "modelsmith[train] @ $MODELSMITH_ENGINE"'))
    return "\n".join(kept)


#: What a scaffolded workflow may install: the pinned engine, and the CPU torch wheel.
ALLOWED_INSTALLS = {
    'python -m pip install "modelsmith @ $MODELSMITH_ENGINE"',
    'python -m pip install "modelsmith[train] @ $MODELSMITH_ENGINE"',
    "python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu",
}


def test_scaffolded_workflows_install_only_the_pinned_engine(tmp_path, monkeypatch):
    """A bare `pip install modelsmith` would fetch an unrelated PyPI project with the
    workflow's write token: every install in every scaffolded workflow is pinned."""
    import re

    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", str(tmp_path / "remote"))
    pin = "git+https://github.com/acme/modelsmith@" + "0123abc" * 5 + "01234"
    dest = tmp_path / "pinned"
    result = CliRunner().invoke(cli, ["init", str(dest), "--engine", pin])
    assert result.exit_code == 0, result.output
    assert pin in result.output
    lines = (dest / ".github/modelsmith-engine").read_text().splitlines()
    assert [line for line in lines if not line.startswith("#")] == [pin]
    for workflow in sorted((dest / ".github/workflows").glob("*.yml")):
        installs = [m.group(0).strip() for m in
                    re.finditer(r"python -m pip install[^\n]*", workflow.read_text())]
        assert installs, workflow
        assert set(installs) <= ALLOWED_INSTALLS, (workflow.name, installs)
        assert "pip install modelsmith" not in workflow.read_text()


def test_init_without_a_known_engine_names_the_file_to_fill(tmp_path, monkeypatch):
    from modelsmith.app import engine_pin

    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", str(tmp_path / "remote"))
    monkeypatch.setattr(engine_pin, "this_engine", lambda: None)
    dest = tmp_path / "unpinned"
    result = CliRunner().invoke(cli, ["init", str(dest)])
    assert result.exit_code == 0, result.output
    assert "no engine pinned yet" in result.output and "modelsmith-engine" in result.output
    text = (dest / ".github/modelsmith-engine").read_text()
    assert all(line.startswith("#") for line in text.splitlines())


@pytest.mark.parametrize("engine", [
    "modelsmith", "modelsmith==0.1.0", "git+https://github.com/acme/modelsmith",
    "git+https://github.com/acme/modelsmith@main", "https://example.com/m.whl",
    "/home/me/modelsmith", "git+file:///tmp/x@0123abc",
])
def test_an_engine_that_is_not_pinned_is_refused(tmp_path, engine):
    dest = tmp_path / "refused"
    result = CliRunner().invoke(cli, ["init", str(dest), "--engine", engine])
    assert result.exit_code == 2 and "does not pin the engine" in result.output
    assert not dest.exists()
