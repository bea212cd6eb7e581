"""Committing DVC pointer files on the checked-out branch, and nothing else.

A candidate's dataset and weights live in DVC; what git holds of them is their pointer files
(``data/<specialist>/<hash>.jsonl.dvc``, ``models/<specialist>/vN.dvc``), the ``.gitignore``
lines DVC writes beside them and, in a fork where Modelsmith ran ``dvc init``, DVC's own setup
files. :func:`commit_paths` commits exactly the paths it is given onto the checked-out branch:
the new commit's tree is the branch tip's tree with those paths taken from the work tree, so a
user's own staged or unstaged changes are neither committed nor lost (they stay as they were,
staged or not). The git index is updated for those paths only.

The identity is the user's (``GIT_AUTHOR_*`` / ``GIT_COMMITTER_*``, else git config's
``user.name`` and ``user.email``), else ``modelsmith <modelsmith@localhost>`` -- the identity
the local forge commits proposals with.

When there is no branch to commit on (not a git work tree, a detached HEAD, a branch without
a commit yet) nothing is committed: the paths stay staged and the result says why.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Who commits when git knows no user (the local forge's identity too).
FALLBACK_NAME = "modelsmith"
FALLBACK_EMAIL = "modelsmith@localhost"


@dataclass(frozen=True)
class PathsCommit:
    """What :func:`commit_paths` did: ``commit`` is the new commit (None when nothing was
    committed); ``reason`` says why nothing was, when there were changes to commit."""

    paths: tuple[str, ...]  # the paths that differed from the branch tip
    commit: str | None = None
    branch: str | None = None
    reason: str | None = None
    message: str = field(default="", compare=False)

    @property
    def committed(self) -> bool:
        return self.commit is not None

    def to_dict(self) -> dict[str, Any]:
        return {"commit": self.commit, "branch": self.branch, "paths": list(self.paths),
                "reason": self.reason,
                "title": self.message.splitlines()[0] if self.message else None}


def signature(repo: Any, role: str = "author") -> Any:
    """The person git would record as ``role`` (``author`` or ``committer``): the
    ``GIT_<ROLE>_NAME`` / ``_EMAIL`` environment, else git config's user, else
    ``modelsmith <modelsmith@localhost>``."""
    import pygit2

    env = role.upper()
    name = os.environ.get(f"GIT_{env}_NAME")
    email = os.environ.get(f"GIT_{env}_EMAIL")
    try:
        config = repo.config
        name = name or _config_value(config, "user.name")
        email = email or _config_value(config, "user.email")
    except pygit2.GitError:
        pass
    return pygit2.Signature(name or FALLBACK_NAME, email or FALLBACK_EMAIL)


def _config_value(config: Any, key: str) -> str | None:
    import pygit2

    try:
        value = config[key]
    except (KeyError, pygit2.GitError):
        return None
    return str(value) if value else None


def open_repository(root: Path) -> Any | None:
    """The git repository whose work tree holds ``root``, or None."""
    import pygit2

    found = pygit2.discover_repository(str(root))
    if found is None:
        return None
    try:
        repo = pygit2.Repository(found)
    except pygit2.GitError:
        return None
    return None if repo.is_bare or not repo.workdir else repo


def in_head(root: Path, path: str) -> bool:
    """Whether the branch tip holds ``path`` (relative to the work tree's top)."""
    repo = open_repository(root)
    if repo is None or repo.head_is_unborn:
        return False
    try:
        repo.head.peel().tree[path]
    except KeyError:
        return False
    return True


def commit_paths(root: Path, paths: Iterable[str | Path], message: str) -> PathsCommit:
    """Commit the work tree's version of ``paths`` (relative to ``root``, the work tree's top)
    on the checked-out branch, nothing else; a path missing from the work tree is deleted.
    Paths already as the branch tip has them are left out; none left: no commit."""
    import pygit2

    root = Path(root).resolve()
    unique = sorted({Path(p).as_posix() for p in paths})
    repo = open_repository(root)
    if repo is None:
        return PathsCommit(tuple(unique), reason=f"{root} is not a git work tree",
                           message=message)
    top = Path(repo.workdir).resolve()
    rel = sorted({(root / p).resolve().relative_to(top).as_posix() for p in unique})
    if repo.head_is_unborn:
        return PathsCommit(tuple(rel), reason="the branch has no commit yet",
                           message=message)
    head = repo.head.peel(pygit2.Commit)
    changed: list[str] = []
    tree_index = pygit2.Index()
    tree_index.read_tree(head.tree)
    for path in rel:
        file = top / path
        before = _entry(head.tree, path)
        if file.is_file():
            blob = repo.create_blob_fromworkdir(path)
            mode = (pygit2.GIT_FILEMODE_BLOB_EXECUTABLE if os.access(file, os.X_OK)
                    else pygit2.GIT_FILEMODE_BLOB)
            if before is None or before.id != blob or before.filemode != mode:
                tree_index.add(pygit2.IndexEntry(path, blob, mode))
                changed.append(path)
        elif before is not None:
            tree_index.remove(path)
            changed.append(path)
    if not changed:
        _stage(repo, rel)
        return PathsCommit((), message=message)
    if repo.head_is_detached:
        return PathsCommit(tuple(changed), reason="HEAD is detached: no branch to commit on",
                           message=message)
    branch = repo.head.name
    tree = tree_index.write_tree(repo)
    try:
        commit = repo.create_commit(branch, signature(repo, "author"),
                                    signature(repo, "committer"), message, tree, [head.id])
    except pygit2.GitError as exc:  # the branch moved meanwhile, a locked ref, ...
        return PathsCommit(tuple(changed), reason=f"git refused the commit: {exc}",
                           message=message)
    _stage(repo, changed)
    return PathsCommit(tuple(changed), str(commit), repo.head.shorthand, message=message)


def _entry(tree: Any, path: str) -> Any | None:
    try:
        return tree[path]
    except KeyError:
        return None


def _stage(repo: Any, paths: Iterable[str]) -> None:
    """The index's entries for ``paths`` made the work tree's (others are left alone)."""
    top = Path(repo.workdir)
    index = repo.index
    index.read()
    for path in paths:
        if (top / path).is_file():
            index.add(path)
        elif path in index:
            index.remove(path)
    index.write()
