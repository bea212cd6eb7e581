"""The demo: a fork of the embedded defaults in a scratch git repository.

The demo never writes to the repository it is run from: it copies the declarative files
(specialists/, evals/, policies/, config/, dvc.yaml, params.yaml) into a new folder, makes
that a git repository with one commit, and works there, so its event log is its own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pygit2

from modelsmith.workspace import WorkspaceError

DEMO_PARTS = ("specialists", "evals", "policies", "config", "dvc.yaml", "params.yaml")


def embedded_defaults(start: Path) -> Path:
    """The repository holding the embedded defaults: ``start`` or one of its parents."""
    for folder in (start, *start.parents):
        if (folder / "specialists").is_dir() and (folder / "config" / "clusters.json").is_file():
            return folder
    raise WorkspaceError(
        f"no Modelsmith repository (specialists/ and config/clusters.json) at or above {start}"
    )


def prepare_fork(source: Path, dest: Path) -> pygit2.Repository:
    """Copy the declarative files of ``source`` into ``dest`` and commit them."""
    if dest.exists() and any(dest.iterdir()):
        raise WorkspaceError(f"{dest} exists and is not empty; pick another --dir")
    dest.mkdir(parents=True, exist_ok=True)
    for part in DEMO_PARTS:
        src = source / part
        if src.is_dir():
            shutil.copytree(src, dest / part)
        elif src.is_file():
            shutil.copy2(src, dest / part)
    repo = pygit2.init_repository(str(dest), initial_head="main")
    repo.index.add_all()
    repo.index.write()
    sig = pygit2.Signature("modelsmith demo", "demo@modelsmith.invalid")
    repo.create_commit("HEAD", sig, sig, "Fork of the Modelsmith defaults\n",
                       repo.index.write_tree(), [])
    return repo
