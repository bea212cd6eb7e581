"""The human gate on changes to what judges a model.

A policy's ``review`` names the files (and keys of files) whose changes need an approved
merge: suites, policies, a specialist's task and target, the training profiles
(:mod:`modelsmith.specs.review`). This module walks the checked-out branch's first parents
from its tip back to its first commit (or to the policy's ``review.since``) and, for every
guarded entry -- a file, or one key of it --, finds the newest commit that changed it. When
that commit came in without an approved merge (``forge.change_approval``: a local merge with
``Approved-by:`` trailers, a GitHub pull request merged, squashed or rebased with its
reviews), the entry *holds* the promotions of the specialists it concerns: their ``review``
gate fails, naming the commit and the path, until an approved change to the entry lands.

The first commit of the branch is never judged: a repository has to start somewhere.
Which specialists an entry concerns: a specialist's own file, its suite's folder, and its
policy's file; a guarded file that is none of these (``config/clusters.json``, a new
folder under ``evals/``) concerns every specialist its policy governs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelsmith.specs.review import ALWAYS_REVIEWED, Guard, compile_guard

from .plan import Approval

ChangeApprovalFn = Callable[[str, str], "Approval | None"]  # commit, path
#: Files larger than this are compared whole, not key by key.
_MAX_PARSED = 2 * 1024 * 1024


@dataclass(frozen=True)
class Hold:
    """A guarded change that came in without an approved merge."""

    commit: str
    path: str
    entry: str  # the path, with '#key' when only a key of it is guarded
    why: str  # what the forge says of the commit

    def detail(self) -> str:
        return (f"commit {self.commit[:12]} changed {self.entry} without an approved merge "
                f"({self.why}); an approved change to it lifts the hold")

    def to_dict(self) -> dict[str, str]:
        return {"commit": self.commit, "path": self.path, "entry": self.entry,
                "why": self.why}


@dataclass
class Review:
    """What a repository's history holds, per specialist, and what could not be judged."""

    holds: dict[str, list[Hold]]
    warnings: list[str]

    def details(self) -> dict[str, tuple[str, ...]]:
        return {name: tuple(h.detail() for h in holds) for name, holds in self.holds.items()}


def review(root: Path, repo: Any, approval: ChangeApprovalFn | None) -> Review:
    """The holds of every specialist of ``repo`` (a loaded specs repository) from the
    history of the git repository at ``root``; ``approval`` is the forge's
    ``change_approval`` (None: no forge can be read, so no change counts as approved)."""
    import pygit2

    found = pygit2.discover_repository(str(root))
    out = Review({name: [] for name in repo.specialists}, [])
    if found is None:
        return out
    git = pygit2.Repository(found)
    if git.head_is_unborn:
        return out
    history = _first_parents(git)
    by_policy: dict[str, list[str]] = {}
    for name, spec in sorted(repo.specialists.items()):
        by_policy.setdefault(spec.spec.policy, []).append(name)
    changes = _Changes(git)
    verdicts: dict[tuple[str, str], str | None] = {}
    for policy_name, names in by_policy.items():
        rules = repo.policies[policy_name].spec.review
        guards = [compile_guard(p) for p in dict.fromkeys([*rules.paths, *ALWAYS_REVIEWED])]
        commits = _after(history, rules.since, policy_name, out.warnings)
        owners = _Owners(repo, root, names)
        newest: dict[str, tuple[str, str]] = {}  # entry -> (commit, path)
        for commit in commits:
            for path in changes.paths(commit):
                for guard in guards:
                    if not guard.matches(path):
                        continue
                    entry = path + ("#" + ".".join(guard.key) if guard.key else "")
                    if entry in newest or not changes.changed(commit, path, guard):
                        continue
                    newest[entry] = (str(commit.id), path)
        for entry, (commit_id, path) in sorted(newest.items()):
            key = (commit_id, path)
            if key not in verdicts:
                verdicts[key] = _refused(approval, commit_id, path, rules)
            why = verdicts[key]
            if why is None:
                continue
            hold = Hold(commit_id, path, entry, why)
            for name in owners.of(path):
                out.holds[name].append(hold)
    return out


def _first_parents(git: Any) -> list[Any]:
    """The branch's commits newest first, by first parent, without the first commit."""
    import pygit2

    walker = git.walk(git.head.target, pygit2.enums.SortMode.TOPOLOGICAL)
    walker.simplify_first_parent()
    return [c for c in walker if c.parents]


def _after(history: list[Any], since: str | None, policy: str,
           warnings: list[str]) -> list[Any]:
    if since is None:
        return history
    for index, commit in enumerate(history):
        if str(commit.id).startswith(since):
            return history[:index]
    warnings.append(f"policy {policy}: review.since {since} is not a commit of this branch's "
                    "history; every change after the first commit is judged")
    return history


def _refused(approval: ChangeApprovalFn | None, commit: str, path: str,
             rules: Any) -> str | None:
    """Why the change ``commit`` made to ``path`` is not approved; None when it is."""
    if approval is None:
        return "no forge to read its approval from"
    found = approval(commit, path)
    if found is None:
        return "committed straight onto the branch, or its merge carries no review"
    approvers = set(found.approvers)
    allowed = list(rules.approvers) or list(found.required)
    if allowed:
        approvers &= set(allowed)
    if len(approvers) >= rules.min_approvals:
        return None
    who = ", ".join(sorted(approvers)) or "nobody"
    return (f"{found.forge} {found.ref} merged by {found.merged_by or '?'}, approved by {who}; "
            f"needs {rules.min_approvals}" + (f" of {', '.join(allowed)}" if allowed else ""))


class _Changes:
    """The paths each commit changed against its first parent, and whether a key did."""

    def __init__(self, git: Any) -> None:
        self.git = git
        self._paths: dict[str, list[str]] = {}
        self._docs: dict[str, Any] = {}  # blob id -> the document (parsed once)

    def paths(self, commit: Any) -> list[str]:
        key = str(commit.id)
        if key not in self._paths:
            diff = self.git.diff(commit.parents[0].tree, commit.tree)
            found: list[str] = []
            for delta in diff.deltas:
                for name in (delta.old_file.path, delta.new_file.path):
                    if name and name not in found:
                        found.append(name)
            self._paths[key] = found
        return self._paths[key]

    def changed(self, commit: Any, path: str, guard: Guard) -> bool:
        if not guard.key:
            return True
        before = _at(self._doc(commit.parents[0], path), guard.key)
        after = _at(self._doc(commit, path), guard.key)
        return before != after

    def _doc(self, commit: Any, path: str) -> Any:
        try:
            entry = commit.tree[path]
        except (KeyError, AttributeError):
            return _MISSING
        key = str(entry.id)
        if key not in self._docs:
            self._docs[key] = _parse(self.git[entry.id].data)
        return self._docs[key]


_MISSING = object()


def _at(doc: Any, key: tuple[str, ...]) -> Any:
    """The value at ``key`` of a parsed document, as canonical JSON (an unparseable
    document is its bytes, so any change to it counts)."""
    if doc is _MISSING or isinstance(doc, bytes):
        return doc
    for part in key:
        if not isinstance(doc, Mapping) or part not in doc:
            return _MISSING
        doc = doc[part]
    return json.dumps(doc, sort_keys=True, default=str)


def _parse(data: bytes) -> Any:
    """A YAML or JSON document as plain data, parsed with the specs' bounds (its bytes when
    it cannot be)."""
    if len(data) > _MAX_PARSED:
        return data
    from modelsmith.specs.yamlio import parse_yaml_documents, to_plain

    try:
        text = data.decode("utf-8")
        try:
            doc = to_plain(json.loads(text))
        except ValueError:
            docs = parse_yaml_documents(text)
            doc = to_plain(docs[0]) if docs else None
    except Exception:  # bounded parsers: an unreadable file is compared as bytes
        return data
    return doc


class _Owners:
    """Which specialists (of one policy) a changed path concerns."""

    def __init__(self, repo: Any, root: Path, names: list[str]) -> None:
        base = Path(repo.root).resolve()

        def rel(path: Path) -> str:
            try:
                return Path(path).resolve().relative_to(base).as_posix()
            except ValueError:
                return str(path)

        self.names = names
        self.files: dict[str, set[str]] = {}
        self.folders: dict[str, set[str]] = {}
        for name in names:
            spec = repo.specialists[name]
            source = repo.sources.get(("Specialist", name))
            if source is not None:
                self.files.setdefault(rel(source), set()).add(name)
            policy = repo.sources.get(("PromotionPolicy", spec.spec.policy))
            if policy is not None:
                self.files.setdefault(rel(policy), set()).add(name)
            suite = repo.suites.get(spec.spec.evals)
            if suite is not None:
                self.folders.setdefault(rel(suite.directory) + "/", set()).add(name)

    def of(self, path: str) -> list[str]:
        if path in self.files:
            return sorted(self.files[path])
        for folder, names in self.folders.items():
            if path.startswith(folder):
                return sorted(names)
        return list(self.names)
