"""Which changes to the declarative files need a reviewed, approved merge.

A policy's ``review.paths`` lists patterns: a glob over paths relative to the repository
root (``*`` within one folder, ``**`` across folders, ``?``, ``[abc]``), optionally followed
by ``#`` and a dotted key (``specialists/**#spec.task``) when only that part of a YAML or JSON
file counts. :func:`compile_guard` turns one into a :class:`Guard` or says what is wrong with
it; :mod:`modelsmith.gitops.review` walks the branch's history with them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: What a policy guards when it names nothing: suites, policies, a specialist's task and
#: target and the suite and policy it is judged by, and the training profiles.
DEFAULT_REVIEW_PATHS: tuple[str, ...] = (
    "evals/**",
    "policies/**",
    "specialists/**#spec.task",
    "specialists/**#spec.target",
    "specialists/**#spec.evals",
    "config/clusters.json#profiles",
)
#: Guarded whatever a policy says, so the review rules guard themselves: the policies, and
#: which policy a specialist answers to, and who may sign the event log.
ALWAYS_REVIEWED: tuple[str, ...] = ("policies/**", "specialists/**#spec.policy",
                                    ".modelsmith/allowed_signers")

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")


class GuardError(ValueError):
    """A review pattern that cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class Guard:
    pattern: str  # as written
    glob: str
    key: tuple[str, ...] = ()  # () : the whole file
    regex: re.Pattern[str] | None = None

    def matches(self, path: str) -> bool:
        assert self.regex is not None
        return self.regex.fullmatch(path) is not None

    @property
    def label(self) -> str:
        return self.pattern


def compile_guard(pattern: str) -> Guard:
    """The :class:`Guard` a review pattern means; :class:`GuardError` naming the problem."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise GuardError("an empty review pattern guards nothing: write a path glob such as "
                         "'evals/**'")
    if len(pattern) > 300:
        raise GuardError("a review pattern is at most 300 characters")
    glob, hash_, key = pattern.partition("#")
    if hash_ and not _KEY.match(key):
        raise GuardError(f"{pattern!r}: after '#' comes a dotted key such as 'spec.task' "
                         f"(letters, digits, '_' and '-'), not {key!r}")
    if glob.startswith("/") or "\\" in glob:
        raise GuardError(f"{pattern!r}: paths are relative to the repository root, with "
                         "'/' between folders (no leading '/', no '\\')")
    parts = glob.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise GuardError(f"{pattern!r}: no empty, '.' or '..' path segment")
    if any("**" in part and part != "**" for part in parts):
        raise GuardError(f"{pattern!r}: '**' stands alone between slashes ('evals/**', "
                         "'a/**/b.yaml')")
    return Guard(pattern, glob, tuple(key.split(".")) if hash_ else (), _glob_regex(pattern,
                                                                                   parts))


def _glob_regex(pattern: str, parts: list[str]) -> re.Pattern[str]:
    out: list[str] = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        out.append(_segment(pattern, part) + ("" if last else "/"))
    try:
        return re.compile("".join(out))
    except re.error as exc:
        raise GuardError(f"{pattern!r}: {exc}") from None


def _segment(pattern: str, part: str) -> str:
    out, i = [], 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = part.find("]", i + 2 if part[i + 1:i + 2] in ("!", "]") else i + 1)
            if end < 0:
                raise GuardError(f"{pattern!r}: '[' opens a character class that no ']' "
                                 "closes")
            body = part[i + 1:end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)
