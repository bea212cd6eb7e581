"""The git work every forge shares: reading which merged change asked for a release, and
committing a proposal as a branch.

A proposal is a branch with one commit on the checked-out branch's tip that edits the
specialist file's ``release`` block. The change that asked for a release is found by
walking the checked-out branch's first parents back to the commit that made
``release.<stage>`` name the version: it counts only when that commit is a merge. A change
committed straight onto the branch carries no approval, whichever forge reads it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from modelsmith.events.anchors import anchor_trailers
from modelsmith.events.gitstore import EVENTS_REF
from modelsmith.stages import STAGES

from .base import ForgeError

#: First-parent commits searched for the change that asked for a release.
SEARCH_DEPTH = 500
#: Every proposal's branch: ``modelsmith/propose/<specialist>/<stage>-<version>``.
PROPOSAL_PREFIX = "modelsmith/propose/"


def proposal_branch(specialist: str, stage: str, version: str | None) -> str:
    """The branch a proposal of ``release.<stage> = version`` is committed on."""
    return f"{PROPOSAL_PREFIX}{specialist}/{stage}-{version or 'none'}"


def parse_proposal_branch(name: str) -> tuple[str, str, str | None] | None:
    """(specialist, stage, version) of a proposal's branch name (``refs/heads/`` or not);
    None for any other branch. Version ``none`` is the stage emptied."""
    name = name.removeprefix("refs/heads/")
    if not name.startswith(PROPOSAL_PREFIX):
        return None
    specialist, _, leaf = name[len(PROPOSAL_PREFIX):].rpartition("/")
    stage, dash, version = leaf.partition("-")
    if not specialist or not dash or not version or stage not in STAGES:
        return None
    return specialist, stage, None if version == "none" else version


def release_of(text: str, stage: str) -> str | None:
    """The version ``release.<stage>`` names in a specialist file's text (None if none or
    unreadable)."""
    from ruamel.yaml import YAML

    try:
        doc = YAML(typ="safe").load(text)
        value = (doc.get("release") or {}).get(stage)
    except Exception:  # an unreadable file at some old commit asks for nothing
        return None
    if isinstance(value, dict):
        value = value.get("version")
    return value if isinstance(value, str) else None


def set_release(text: str, stage: str, version: str | None,
                traffic: float | None = None) -> str:
    """``text`` with ``release.<stage>`` set, everything else (comments, order) kept."""
    from modelsmith.specs.yamlio import roundtrip_yaml

    yaml = roundtrip_yaml()
    # An empty stage reads `null`, as the files write it (not a bare `key:`).
    yaml.representer.add_representer(type(None), lambda r, _data: r.represent_scalar(
        "tag:yaml.org,2002:null", "null"))
    doc = yaml.load(text)
    if doc.get("release") is None:
        doc["release"] = {}
    if stage == "canary" and version is not None:
        current = doc["release"].get("canary")
        share = traffic if traffic is not None else (
            current.get("traffic") if isinstance(current, dict) else None)
        if share is None:
            raise ForgeError("a canary release needs a traffic share (--traffic)")
        doc["release"]["canary"] = {"version": version, "traffic": share}
    else:
        doc["release"][stage] = version
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def codeowners(text: str | None, path: str) -> tuple[str, ...]:
    """The owners a CODEOWNERS file names for ``path`` (the last matching line wins), as
    logins without the ``@``."""
    import fnmatch

    owners: tuple[str, ...] = ()
    for line in (text or "").splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) < 2:
            continue
        pattern = parts[0]
        anchored = pattern.lstrip("/")
        if anchored.endswith("/"):
            anchored += "**"
        if fnmatch.fnmatch(path, anchored) or fnmatch.fnmatch(path.rsplit("/", 1)[-1],
                                                              anchored) \
                or (anchored.endswith("**") and path.startswith(anchored[:-2])):
            owners = tuple(o.lstrip("@") for o in parts[1:])
    return owners


class ForgeRepository:
    """The git repository a forge works in, with each specialist's file in it."""

    def __init__(self, root: Path, sources: dict[str, str]) -> None:
        import pygit2

        found = pygit2.discover_repository(str(root))
        if found is None:
            raise ForgeError(f"{root} is not in a git repository")
        self.repo = pygit2.Repository(found)
        self.root = Path(root)
        self.sources = sources  # specialist -> its file, relative to the repository root

    @property
    def branch(self) -> str:
        """The checked-out branch's name."""
        return self.repo.head.shorthand

    def text_at(self, commit: Any, path: str) -> str | None:
        """The file at ``path`` in ``commit`` (None when absent or not text)."""
        try:
            return commit.tree[path].data.decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            return None

    def owners(self, commit: Any, specialist: str, files: tuple[str, ...]) -> tuple[str, ...]:
        """The CODEOWNERS of the specialist's file, read from the first of ``files`` that
        ``commit`` has."""
        return self.path_owners(commit, self.sources[specialist], files)

    def asking_change(self, specialist: str, stage: str, version: str) -> Any | None:
        """The first-parent commit on the checked-out branch that made ``release.<stage>``
        name ``version`` (a merge, a squash or a rebased commit, or one committed straight
        onto the branch: the forge decides whether a review stands behind it); None when
        the branch does not ask for it."""
        path = self.sources.get(specialist)
        if path is None or self.repo.head_is_unborn:
            return None
        commit = self.repo.head.peel()
        for _ in range(SEARCH_DEPTH):
            text = self.text_at(commit, path)
            if text is None or release_of(text, stage) != version:
                return None  # the work tree's wish is not committed on this branch
            parent = commit.parents[0] if commit.parents else None
            before = self.text_at(parent, path) if parent is not None else None
            if before is None or release_of(before, stage) != version:
                return commit
            commit = parent
        return None

    def asking_merge(self, specialist: str, stage: str, version: str) -> Any | None:
        """:meth:`asking_change` when it is a merge commit, else None (committed straight
        onto the branch is not a reviewed change for the local forge)."""
        commit = self.asking_change(specialist, stage, version)
        return commit if commit is not None and len(commit.parents) >= 2 else None

    def commit(self, sha: str) -> Any | None:
        """The commit ``sha`` names (None when absent)."""
        import pygit2

        try:
            return self.repo.revparse_single(sha).peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError):
            return None

    def path_owners(self, commit: Any, path: str, files: tuple[str, ...]) -> tuple[str, ...]:
        """The CODEOWNERS of ``path``, read from the first of ``files`` that ``commit`` has."""
        texts = (self.text_at(commit, name) for name in files)
        return codeowners(next((text for text in texts if text), None), path)

    def commit_proposal(self, specialist: str, stage: str, version: str | None, *,
                        title: str, body: str, traffic: float | None = None) -> tuple[str, str]:
        """Commit the release change onto a new branch off the checked-out tip (the work
        tree is not touched); returns the branch's name and the commit's id."""
        import pygit2

        path = self.sources.get(specialist)
        if path is None:
            raise ForgeError(f"no specialist {specialist!r} in this repository")
        if self.repo.head_is_unborn:
            raise ForgeError("the repository has no commit to branch from")
        head = self.repo.head.peel()
        text = self.text_at(head, path)
        if text is None:
            raise ForgeError(f"{path} is not committed on {self.repo.head.shorthand}")
        changed = _release_change(text, stage, version, traffic)
        if changed == text:
            raise ForgeError(f"release.{stage} of {specialist} already names {version}")
        branch = proposal_branch(specialist, stage, version)
        blob = self.repo.create_blob(changed.encode("utf-8"))
        tree = _replace_in_tree(self.repo, head.tree, path.split("/"), blob)
        signature = pygit2.Signature("modelsmith", "modelsmith@localhost")
        # Trailers naming the event log as it stood: once merged, main anchors the log
        # for every clone's `modelsmith verify` (modelsmith.events.anchors).
        anchor = anchor_trailers(self.repo, EVENTS_REF)
        message = f"{title}\n\n{body}\n" + (f"\n{anchor}" if anchor else "")
        commit = self.repo.create_commit(None, signature, signature, message, tree,
                                         [head.id])
        self.repo.branches.local.create(branch, self.repo[commit], force=True)
        return branch, str(commit)


    def open_branches(self) -> list[tuple[str, Any]]:
        """The proposal branches whose tip the checked-out branch does not contain, by
        name, each with its tip commit."""
        import pygit2

        head = None if self.repo.head_is_unborn else self.repo.head.peel().id
        found = []
        for name in sorted(self.repo.branches.local):
            if parse_proposal_branch(name) is None:
                continue
            try:
                tip = self.repo.branches.local[name].peel(pygit2.Commit)
            except (KeyError, pygit2.GitError, ValueError):
                continue
            if head is not None and (tip.id == head or self.repo.descendant_of(head, tip.id)):
                continue  # merged
            found.append((name, tip))
        return found


class ReleaseApprovals:
    """``approval(specialist, stage, version)`` for a forge that answers
    ``change_approval(commit, path)``: the approval of the commit on the branch that asked for
    the release, with the specialist's file as the path its code owners are read for."""

    git: ForgeRepository
    sources: dict[str, str]

    def approval(self, specialist: str, stage: str, version: str) -> Any | None:
        commit = self.git.asking_change(specialist, stage, version)
        if commit is None:
            return None
        return self.change_approval(str(commit.id), self.sources[specialist])

    def change_approval(self, commit: str, path: str) -> Any | None:
        raise NotImplementedError


def _release_change(text: str, stage: str, version: str | None,
                    traffic: float | None) -> str:
    """``text`` asking for ``version`` in ``stage`` and in no other stage (a version holds
    one stage)."""
    changed = set_release(text, stage, version, traffic)
    for other in STAGES:
        if version is not None and other != stage and release_of(changed, other) == version:
            changed = set_release(changed, other, None)
    return changed


def _replace_in_tree(repo: Any, tree: Any, parts: list[str], blob: Any) -> Any:
    """A copy of ``tree`` with the file at ``parts`` replaced by ``blob``."""
    import pygit2

    builder = repo.TreeBuilder(tree)
    name = parts[0]
    if len(parts) == 1:
        builder.insert(name, blob, pygit2.GIT_FILEMODE_BLOB)
    else:
        sub = repo[tree[name].id]
        builder.insert(name, _replace_in_tree(repo, sub, parts[1:], blob),
                       pygit2.GIT_FILEMODE_TREE)
    return builder.write()
