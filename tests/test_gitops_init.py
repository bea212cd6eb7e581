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


PINNED_TRAIN = 'pip install "modelsmith-engine[train,s3] @ $MODELSMITH_ENGINE"'


def _without_installs(workflow: str) -> str:
    """The workflow less the steps that say where the engine comes from."""
    kept, skipping = [], False
    for line in workflow.splitlines():
        if line.startswith("      - name:"):
            skipping = "engine this repository pins" in line or "Install the control" in line
        if not skipping:
            kept.append(line.replace("pip install -e '.[train,s3]'", PINNED_TRAIN))
    return "\n".join(kept)


#: What a scaffolded workflow may install: the pinned engine, and the CPU torch wheel.
ALLOWED_INSTALLS = {
    'python -m pip install "modelsmith-engine @ $MODELSMITH_ENGINE"',
    'python -m pip install "modelsmith-engine[train,s3] @ $MODELSMITH_ENGINE"',
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
        assert not _unpinned(workflow.read_text()), workflow.name


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


def test_the_distribution_name_is_ours_everywhere():
    """pyproject's name is the one the pin reads its metadata by, and not PyPI's unrelated
    "modelsmith"; the import package and the command keep the short name."""
    import tomllib

    from modelsmith.app.engine_pin import DISTRIBUTION

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION != "modelsmith"
    assert project["scripts"] == {"modelsmith": "modelsmith.cli:main"}


def _unpinned(workflow: str) -> list[str]:
    """Every requirement a workflow's ``pip install`` lines would resolve by name from an
    index, or by the wrong name: only the pinned engine (``modelsmith-engine[...] @
    $MODELSMITH_ENGINE``), this checkout (``-e .``) and ``==``-pinned packages pass."""
    import re
    import shlex

    from modelsmith.app.engine_pin import DISTRIBUTION

    bad = []
    for match in re.finditer(r"pip install ([^\n|;&]*)", workflow):
        words = shlex.split(match.group(1))
        i = 0
        while i < len(words):
            word = words[i]
            if word in ("--index-url", "--extra-index-url", "-r", "-c"):
                i += 2
                continue
            if word == "-e" and i + 1 < len(words) and re.fullmatch(r"\.(\[[a-z0-9,]+\])?",
                                                                    words[i + 1]):
                i += 2
                continue
            if word.startswith("-"):
                i += 1
                continue
            pinned = re.fullmatch(rf"{re.escape(DISTRIBUTION)}(\[[a-z0-9,]+\])? @ "
                                  r"\$MODELSMITH_ENGINE", word)
            if not (pinned or re.fullmatch(r"[A-Za-z0-9_.-]+(\[[a-z0-9,]+\])?==[\w.]+", word)):
                bad.append(word)
            i += 1
    return bad


@pytest.mark.parametrize("line", [
    "python -m pip install modelsmith",
    'python -m pip install "modelsmith @ $MODELSMITH_ENGINE"',
    'python -m pip install "modelsmith[train] @ $MODELSMITH_ENGINE"',
    "python -m pip install modelsmith-engine",
    "python -m pip install 'modelsmith-engine[train]'",
    'python -m pip install "modelsmith-engine @ https://example.com/x.whl"',
    "python -m pip install torch --index-url https://download.pytorch.org/whl/cpu",
    "pip install -q requests",
    "pip install -e ../elsewhere",
])
def test_the_install_check_refuses_every_unpinned_or_foreign_name(line):
    assert _unpinned(f"run: |\n  {line}\n")


def test_the_install_check_passes_what_the_workflows_do():
    ok = ['python -m pip install "modelsmith-engine @ $MODELSMITH_ENGINE"',
          f"python -m {PINNED_TRAIN}", "python -m pip install -e .",
          "python -m pip install -e '.[train,s3]'",
          "python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"]
    assert not _unpinned("\n".join(ok))


def _workflows(tmp_path, monkeypatch) -> dict[str, str]:
    """The rendered templates of a fresh `modelsmith init`, by file name."""
    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", str(tmp_path / "remote"))
    pin = "git+https://github.com/acme/modelsmith@" + "0123abc" * 5 + "01234"
    dest = tmp_path / "rendered"
    assert CliRunner().invoke(cli, ["init", str(dest), "--engine", pin]).exit_code == 0
    return {p.name: p.read_text() for p in (dest / ".github/workflows").glob("*.yml")}


def _jobs(text: str) -> dict:
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(text)["jobs"]


def _step(job: dict, name: str) -> dict:
    (found,) = [s for s in job["steps"] if s.get("name", "").startswith(name)]
    return found


def test_no_modelsmith_failure_is_hidden(tmp_path, monkeypatch):
    """No `|| true` (or `|| :`) after a modelsmith command in any workflow, rendered or
    ours: a plan or a report that fails fails its job."""
    import re

    texts = {**_workflows(tmp_path, monkeypatch),
             **{f"ours/{p.name}": p.read_text()
                for p in (REPO_ROOT / ".github/workflows").glob("*.yml")}}
    for name, text in texts.items():
        for line in text.splitlines():
            if re.search(r"\bmodelsmith\b(?!/events)[^#\n]*\|\|\s*(true|:)\b", line):
                raise AssertionError(f"{name}: {line.strip()}")


def _bash(script: str, cwd, env: dict[str, str]):
    import os
    import subprocess

    return subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=cwd,
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)


def _fake_modelsmith(folder, exit_code: int):
    """A `modelsmith` on PATH that prints a line, writes --out when given, and exits."""
    import os
    import stat

    bin_dir = folder / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "modelsmith"
    fake.write_text("#!/usr/bin/env bash\n"
                    'echo "fake modelsmith $*"; echo "something went wrong" >&2\n'
                    'while [ $# -gt 0 ]; do if [ "$1" = --out ]; then '
                    'printf "<!-- modelsmith-eval-report -->\\nreport\\n" > "$2"; fi; shift; done\n'
                    f"exit {exit_code}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


@pytest.mark.parametrize("code", [0, 3])
def test_the_plan_step_comments_then_fails_with_the_plan(tmp_path, monkeypatch, code):
    job = _jobs(_workflows(tmp_path, monkeypatch)["ci.yml"])["plan"]
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "github_output"
    done = _bash(_step(job, "modelsmith plan")["run"], work,
                 {"PATH": _fake_modelsmith(tmp_path, code), "GITHUB_OUTPUT": str(out)})
    assert done.returncode == 0, done.stderr  # the comment is still posted
    assert f"status={code}" in out.read_text()
    plan = (work / "plan.md").read_text()
    assert plan.startswith("<!-- modelsmith-plan -->") and "fake modelsmith plan" in plan
    assert ("failed (exit 3)" in plan) == bool(code)
    fail = _step(job, "Fail when the plan failed")
    assert fail["if"] == "steps.plan.outputs.status != '0'"
    assert _bash(fail["run"], work, {"STATUS": "3"}).returncode == 1


def test_the_eval_report_job_runs_on_changed_suites_and_fails_visibly(tmp_path, monkeypatch):
    workflows = _workflows(tmp_path, monkeypatch)
    job = _jobs(workflows["ci.yml"])["eval-report"]
    assert job["if"] == "github.event_name == 'pull_request'"
    assert job["permissions"] == {"contents": "read", "pull-requests": "write"}
    changes = _step(job, "Does the pull request change")
    assert 'git diff --name-only "origin/$BASE"...HEAD -- evals policies specialists' \
        in changes["run"]
    assert all("uses" not in s or s["uses"].startswith(("actions/checkout",
                                                        "actions/setup-python"))
               for s in job["steps"])  # no third-party path filter
    install = _step(job, "Install the engine")["run"]
    assert "download.pytorch.org/whl/cpu" in install and PINNED_TRAIN in install
    report = _step(job, "modelsmith pr-report")
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "github_output"
    done = _bash(report["run"], work, {"PATH": _fake_modelsmith(tmp_path, 1),
                                       "GITHUB_OUTPUT": str(out), "BASE": "main"})
    assert done.returncode == 0, done.stderr
    assert "status=1" in out.read_text()
    md = (work / "report.md").read_text()
    assert md.startswith("<!-- modelsmith-eval-report -->") and "exit 1" in md
    assert "something went wrong" in md
    fail = _step(job, "Fail when the report failed")
    assert "steps.report.outputs.status != '0'" in fail["if"]


def test_a_pull_request_from_a_fork_gets_the_report_in_the_summary(tmp_path, monkeypatch):
    """A fork's token is read-only: the comment steps say so (a notice), put the Markdown
    in the job summary and succeed, without calling the API."""
    for job_name, step_name, body in (("eval-report", "Post or update the report", "report.md"),
                                      ("plan", "Post or update the plan", "plan.md")):
        job = _jobs(_workflows(tmp_path / job_name, monkeypatch)["ci.yml"])[job_name]
        post = _step(job, step_name)
        assert post["env"]["FORK"] == \
            "${{ github.event.pull_request.head.repo.full_name != github.repository }}"
        work = tmp_path / job_name / "work"
        work.mkdir()
        (work / body).write_text("<!-- marker -->\nthe report\n")
        summary = tmp_path / job_name / "summary.md"
        no_gh = tmp_path / job_name / "nogh"
        no_gh.mkdir()
        (no_gh / "gh").write_text("#!/bin/sh\necho called >&2\nexit 9\n")
        (no_gh / "gh").chmod(0o755)
        import os

        done = _bash(post["run"], work, {"FORK": "true", "GITHUB_STEP_SUMMARY": str(summary),
                                         "PATH": f"{no_gh}{os.pathsep}{os.environ['PATH']}"})
        assert done.returncode == 0, done.stderr
        assert "::notice::pull request from a fork" in done.stdout
        assert "the report" in summary.read_text() and "called" not in done.stderr


def test_ours_run_the_same_report_jobs_from_the_checkout(tmp_path, monkeypatch):
    """This repository's ci.yml has the template's plan and eval-report jobs, installing
    its own checkout instead of a pin."""
    def normal(job: dict) -> list:
        return [s for s in job["steps"]
                if not s.get("name", "").startswith(("The engine this repository pins",
                                                     "Install"))]

    theirs = _jobs(_workflows(tmp_path, monkeypatch)["ci.yml"])
    ours = _jobs((REPO_ROOT / ".github/workflows/ci.yml").read_text())
    for name in ("plan", "eval-report"):
        assert normal(ours[name]) == normal(theirs[name]), name
    assert "pip install -e '.[train,s3]'" in _step(ours["eval-report"], "Install")["run"]


def test_reconcile_opens_rollback_prs_with_the_configured_token(tmp_path, monkeypatch):
    for text in (_workflows(tmp_path, monkeypatch)["reconcile.yml"],
                 (REPO_ROOT / ".github/workflows/reconcile.yml").read_text()):
        step = _step(_jobs(text)["reconcile"], "Reconcile and share")
        assert step["env"]["MODELSMITH_GITHUB_TOKEN"] == "${{ secrets.MODELSMITH_PR_TOKEN }}"
        assert step["env"]["GITHUB_TOKEN"] == "${{ github.token }}"
        warning = step["run"].split("\n")[1]
        assert warning.strip().startswith("echo \"::warning::")
        assert "trigger" in warning and "no checks" in warning and "403" in warning
        assert "Allow GitHub Actions to create and approve pull requests" in warning
    assert "MODELSMITH_PR_TOKEN" in (REPO_ROOT / "README.md").read_text()
