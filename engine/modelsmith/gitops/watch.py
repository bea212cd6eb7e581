"""``reconcile --watch``: what should make the reconciler look again.

A change under the declarative folders (``specialists/``, ``evals/``, ``policies/``,
``config/``), seen by watchfiles, or a new commit on the checked-out branch or on the
event log (a pull, a merge, a push from another clone), checked every ``poll_s``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

WATCHED = ("specialists", "evals", "policies", "config")


def _heads(root: Path) -> tuple[str | None, str | None]:
    import pygit2

    from modelsmith.events.gitstore import EVENTS_REF

    found = pygit2.discover_repository(str(root))
    if found is None:
        return None, None
    repo = pygit2.Repository(found)
    head = None if repo.head_is_unborn else str(repo.head.target)
    log = repo.references.get(EVENTS_REF)
    return head, str(log.target) if log is not None else None


def changes(root: Path, poll_s: float = 5.0) -> Iterator[str]:
    """Yield a reason each time something changed (forever; Ctrl-C stops it)."""
    from watchfiles import watch

    folders = [str(root / name) for name in WATCHED if (root / name).is_dir()] or [str(root)]
    seen = _heads(root)
    for batch in watch(*folders, yield_on_timeout=True, rust_timeout=int(poll_s * 1000)):
        now = _heads(root)
        if batch:
            seen = now
            names = sorted({Path(path).name for _change, path in batch})
            yield f"changed: {', '.join(names[:5])}"
        elif now != seen:
            what = "new commit" if now[0] != seen[0] else "new events"
            seen = now
            yield what
