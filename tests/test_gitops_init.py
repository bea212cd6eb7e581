"""``modelsmith init``: a new repository that validates clean and plans, with its workflows
and DVC; the reconcile workflow it ships is the one this repository runs."""

from __future__ import annotations

import pygit2
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
    # The reconciler this repository runs, installing the package instead of this checkout.
    ours = (REPO_ROOT / ".github/workflows/reconcile.yml").read_text()
    assert (dest / ".github/workflows/reconcile.yml").read_text() == ours.replace(
        "pip install -e .\n", "pip install modelsmith\n").replace(
        "pip install -e '.[train]'", "pip install 'modelsmith[train]'")
    again = CliRunner().invoke(cli, ["init", str(dest)])
    assert again.exit_code == 1 and "not empty" in again.output
