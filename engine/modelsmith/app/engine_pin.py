"""Which engine a scaffolded repository's workflows install: pinned, in one file.

The engine's distribution is ``modelsmith-engine`` (:data:`DISTRIBUTION`): the name
``modelsmith`` on PyPI belongs to an unrelated project. A workflow never installs either by
name, only by a direct reference a registry cannot answer for someone else. ``modelsmith
init`` writes ``.github/modelsmith-engine``: one direct reference to this engine, pinned to
a commit (``git+https://HOST/OWNER/REPO@COMMIT``) or to a wheel's hash
(``https://.../modelsmith_engine-X-py3-none-any.whl#sha256=HEX``). Every workflow reads it
and installs ``modelsmith-engine @ <that reference>``; with no reference they fail naming
the file.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

from modelsmith.errors import EXIT_INVALID, ModelsmithError

#: Where a scaffolded repository names its engine (read by its workflows).
ENGINE_FILE = ".github/modelsmith-engine"
#: The engine's distribution name (pyproject's ``[project] name``); the import package and
#: the command are ``modelsmith``.
DISTRIBUTION = "modelsmith-engine"

_GIT = re.compile(r"^git\+(https|ssh)://[^\s@]+(@[^\s@]+)?@[0-9a-f]{7,40}$")
_WHEEL = re.compile(r"^https://\S+\.whl#sha256=[0-9a-f]{64}$")

_HEADER = """\
# The Modelsmith engine this repository's workflows install
# (pip install "modelsmith-engine @ <line>"). Pinned: a git URL at a commit, or a wheel URL
# with its sha256. Never a bare package name: on PyPI "modelsmith" is another project.
"""


class EnginePinError(ModelsmithError):
    exit_code = EXIT_INVALID


def check(reference: str) -> str:
    """``reference`` if it pins the engine (a git commit or a wheel hash), else an error."""
    reference = reference.strip()
    if _GIT.match(reference) or _WHEEL.match(reference):
        return reference
    raise EnginePinError(
        f"--engine {reference!r} does not pin the engine: give git+https://HOST/OWNER/REPO"
        "@COMMIT (a commit hash) or https://.../modelsmith_engine-VERSION-py3-none-any.whl"
        "#sha256=HASH")


def this_engine() -> str | None:
    """A pinned reference to the engine running now, where one can be known: the git URL
    and commit it was installed from (PEP 610), or its checkout's ``origin`` at HEAD."""
    try:
        direct = metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        direct = None
    info = json.loads(direct) if direct else {}
    vcs = info.get("vcs_info") or {}
    if vcs.get("vcs") == "git" and vcs.get("commit_id"):
        return _pinned(f"git+{info['url']}@{vcs['commit_id']}")
    return _from_checkout(Path(__file__).resolve().parents[3])


def _from_checkout(folder: Path) -> str | None:
    import pygit2

    found = pygit2.discover_repository(str(folder))
    if found is None:
        return None
    repo = pygit2.Repository(found)
    remote = next((r for r in repo.remotes if r.name == "origin"), None)
    if remote is None or repo.head_is_unborn or not remote.url:
        return None
    url = remote.url
    if url.startswith("git@") and ":" in url:  # scp form: git@host:owner/repo.git
        host, path = url[4:].split(":", 1)
        url = f"ssh://git@{host}/{path}"
    return _pinned(f"git+{url}@{repo.head.target}")


def _pinned(reference: str) -> str | None:
    return reference if _GIT.match(reference) else None


def write(dest: Path, reference: str | None) -> Path:
    """Write ``.github/modelsmith-engine`` in ``dest`` (the header alone without one)."""
    path = dest / ENGINE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_HEADER + (f"{reference}\n" if reference else ""), encoding="utf-8")
    return path
