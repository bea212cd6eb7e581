"""Shared fixtures: copies of the demo repository's declarative files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pygit2
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_PARTS = ("specialists", "evals", "policies", "config")


@pytest.fixture
def demo_files(tmp_path: Path) -> Path:
    """A folder holding a copy of the demo's specialists, evals, policies and config."""
    root = tmp_path / "repo"
    for part in DEMO_PARTS:
        shutil.copytree(REPO_ROOT / part, root / part)
    return root


@pytest.fixture
def demo_repo(demo_files: Path) -> Path:
    """The same copy as a fresh git repository (a team's fork, before any event)."""
    pygit2.init_repository(str(demo_files))
    return demo_files
