"""Shared fixtures: copies of the demo repository's declarative files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pygit2
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Two test workers share the cores: a profile's 2 training threads each would oversubscribe
# them many times over (the demo's profile trains on 2; the tests on 1).
os.environ.setdefault("MODELSMITH_TRAIN_THREADS", "1")
DEMO_PARTS = ("specialists", "evals", "policies", "config")
# A small, frozen repository the loader tests edit line by line; the demo content itself
# grows with the product and is checked on its own (it must always validate).
SPEC_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "repo"


@pytest.fixture
def demo_files(tmp_path: Path) -> Path:
    """A folder holding a copy of the demo's specialists, evals, policies and config."""
    root = tmp_path / "repo"
    for part in DEMO_PARTS:
        shutil.copytree(REPO_ROOT / part, root / part)
    return root


@pytest.fixture
def spec_files(tmp_path: Path) -> Path:
    """A copy of the frozen loader-test repository."""
    root = tmp_path / "specs"
    shutil.copytree(SPEC_FIXTURE, root)
    return root


@pytest.fixture
def demo_repo(demo_files: Path) -> Path:
    """The same copy as a fresh git repository (a team's fork, before any event)."""
    pygit2.init_repository(str(demo_files))
    return demo_files


@pytest.fixture
def train_repo(demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo fork with its own model cache and DVC site cache (tests never share them)."""
    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))
    return demo_repo


@pytest.fixture
def silent_port():
    """A TCP port on 127.0.0.1 that accepts connections and never says a word (a hung
    sshd, a wedged cluster)."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield server.getsockname()[1]
    server.close()


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` as a fixed person; its output."""
    import subprocess

    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=Dana",
                           "-c", "user.email=dana@example.com", *args],
                          check=True, capture_output=True, text=True).stdout


def published(repo: Path, bare: Path) -> Path:
    """``bare``, a new bare repository made ``repo``'s origin, holding its main branch and
    its event log."""
    import subprocess

    from modelsmith.events.gitstore import EVENTS_REF

    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    git(repo, "remote", "add", "origin", str(bare))
    git(repo, "push", "-q", "origin", "main", f"{EVENTS_REF}:{EVENTS_REF}")
    return bare


def clone(origin: Path, where: Path) -> Path:
    """A ``git clone`` of ``origin``'s main branch into ``where``."""
    import subprocess

    subprocess.run(["git", "clone", "-q", "-b", "main", str(origin), str(where)], check=True)
    return where


def approved_change(repo: Path, message: str, approver: str = "Dana Reviewer") -> str:
    """Commit the work tree's changes as a reviewed change: on a branch, merged into the
    checked-out branch with ``--no-ff`` and an ``Approved-by:`` trailer (the local forge's
    approval), as a change to suites, policies or a specialist's task needs; the merge's id."""
    branch = f"change-{abs(hash(message)) % 10**8}"
    git(repo, "checkout", "-q", "-b", branch)
    git(repo, "commit", "-qam", message)
    git(repo, "checkout", "-q", "-")
    git(repo, "merge", "--no-ff", "-q", branch, "-m",
        f"Merge {branch}\n\n{message}\n\nApproved-by: {approver} <reviewer@example.invalid>")
    git(repo, "branch", "-q", "-D", branch)
    return git(repo, "rev-parse", "HEAD").strip()
