"""Anchors for the event log that a fresh clone can check, and the record of our own replays.

The log's commits chain by hash, so a rewrite is invisible from the log alone: a fresh clone
of a force-pushed origin sees a consistent chain. ``verify`` therefore checks the log
against things the rewriter could not change.

**Anchors on main.** Main's history is reviewed and protected (promotions need approved
merges; the review gate holds a change to a guarded file without one), so main is where a
fresh clone finds what the log looked like. Every proposal commit (``modelsmith propose``)
ends with two trailers naming the log as it stood::

    Event-Log-Tip: <commit of the log>
    Event-Log-Events: <how many events the log held at that commit>

The commit named is one the shared log already holds (the newest commit both the local log
and ``origin``'s have; the local tip when there is no ``origin``), so a replay of local-only
events never invalidates it. ``verify`` walks main's first parents (:data:`ANCHOR_DEPTH` of
them from ``HEAD``, ``main`` and ``origin/main``), reads the trailers of each commit and of
the branch tips merged by it (a merge's other parents: the proposal commit itself), and
requires each named commit to be the log's first-parent chain at exactly that position.
Git's hashes do the rest: the named commit fixes every commit before it. So a deleted
branch (no log while main names a tip), a truncation, an amended or edited commit and a
forged evidence blob (the commit's id changes, and so does every id after it) are errors in
any clone. What an anchor cannot catch: events appended after the newest anchor. ``verify``
says how many there are ("N events after the newest anchor on main are not anchored");
they become anchored with the next merged proposal.

**Our own replays.** ``reconcile --push`` replays the local-only events onto origin's tip
when both moved (:mod:`modelsmith.gitops.sync`): the local ref is moved to origin's tip and
the events are appended again, which the reflog shows as a forced update. Before moving the
ref, the replay records ``{old, onto, events}`` in ``.git/modelsmith/replays-<ref>.jsonl``
(then the ids re-appended and dropped). ``verify`` accepts a forced update of the reflog
only when such a record names exactly that move *and* the log bears it out: every event that
was only on the old tip is in the current log with the same content, or is a decision whose
stream another writer moved meanwhile (the one thing a replay drops). Any other forced
update is still a rewrite. The last-verified tip is carried over to the replayed copy of the
same events.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2

#: Decisions: events a replay drops when their stream moved on the remote meanwhile.
DECISIONS = frozenset({"Promoted", "PromotionRejected", "RolledBack", "PromotionProposed"})
TIP_TRAILER = "Event-Log-Tip"
COUNT_TRAILER = "Event-Log-Events"
#: First-parent commits of main searched for anchors.
ANCHOR_DEPTH = 2000
_TIP_RE = re.compile(rf"^{TIP_TRAILER}: ([0-9a-f]{{40}})\s*$", re.MULTILINE)
_COUNT_RE = re.compile(rf"^{COUNT_TRAILER}: ([0-9]{{1,12}})\s*$", re.MULTILINE)
_MAIN_REFS = ("refs/heads/main", "refs/remotes/origin/main")


@dataclass(frozen=True)
class Anchor:
    """Main commit ``source`` says the log held ``events`` events with ``tip`` last."""

    source: str
    tip: str
    events: int


# ---------------------------------------------------------------- writing an anchor


def log_anchor(repo: pygit2.Repository, ref: str, remote: str = "origin"
               ) -> tuple[str, int] | None:
    """(commit, events up to it) a proposal made now should name: the newest commit of the
    log that ``remote``'s copy holds too (local-only events may still be replayed, which
    gives them new commits), or the local tip when there is no ``remote``. None when there
    is nothing to name."""
    local = repo.references.get(ref)
    if local is None:
        return None
    tip = local.target
    try:
        has_remote = remote in repo.remotes.names()
    except (pygit2.GitError, ValueError):
        has_remote = False
    if has_remote:
        tracking = repo.references.get(f"refs/remotes/{remote}/{ref.removeprefix('refs/heads/')}")
        if tracking is None:
            return None
        base = repo.merge_base(tip, tracking.target)
        if base is None:
            return None
        tip = base
    walker = repo.walk(tip)
    walker.simplify_first_parent()
    return str(tip), sum(1 for _ in walker)


def anchor_trailers(repo: pygit2.Repository, ref: str, remote: str = "origin") -> str:
    """The trailer lines a proposal commit ends with (empty when there is no log yet)."""
    found = log_anchor(repo, ref, remote)
    if found is None:
        return ""
    tip, events = found
    return f"{TIP_TRAILER}: {tip}\n{COUNT_TRAILER}: {events}\n"


# ---------------------------------------------------------------- reading anchors


def parse_anchors(source: str, message: str) -> list[Anchor]:
    """The anchors one commit message names (each ``Event-Log-Tip`` with the
    ``Event-Log-Events`` that follows it)."""
    tips = [(m.start(), m.group(1)) for m in _TIP_RE.finditer(message)]
    counts = [(m.start(), int(m.group(1))) for m in _COUNT_RE.finditer(message)]
    out = []
    for i, (at, tip) in enumerate(tips):
        until = tips[i + 1][0] if i + 1 < len(tips) else len(message)
        count = next((n for where, n in counts if at < where < until), None)
        if count is not None and count >= 1:  # a log's first event is event 1
            out.append(Anchor(source, tip, count))
    return out


def main_anchors(repo: pygit2.Repository, depth: int = ANCHOR_DEPTH) -> list[Anchor]:
    """Anchors on main: in the messages of the first ``depth`` first-parent commits from
    ``HEAD``, ``main`` and ``origin/main``, and of the commits each merge brought in."""
    starts: list[pygit2.Oid] = []
    if not repo.head_is_unborn:
        with contextlib.suppress(pygit2.GitError, ValueError, KeyError):
            starts.append(repo.head.peel(pygit2.Commit).id)
    for name in _MAIN_REFS:
        found = repo.references.get(name)
        if found is not None:
            try:
                starts.append(found.peel(pygit2.Commit).id)
            except (pygit2.GitError, ValueError, KeyError):
                continue
    seen: set[str] = set()
    out: list[Anchor] = []
    for start in starts:
        commit = repo.get(start)
        for _ in range(depth):
            if not isinstance(commit, pygit2.Commit) or str(commit.id) in seen:
                break
            seen.add(str(commit.id))
            out += parse_anchors(str(commit.id), commit.message)
            for merged in commit.parent_ids[1:]:
                other = repo.get(merged)
                if isinstance(other, pygit2.Commit) and str(other.id) not in seen:
                    out += parse_anchors(str(commit.id), other.message)
            commit = repo.get(commit.parent_ids[0]) if commit.parent_ids else None
    unique = {(a.tip, a.events): a for a in reversed(out)}  # the newest main commit naming it
    return sorted(unique.values(), key=lambda a: a.events)


def check_anchors(anchors: Iterable[Anchor], chain: list[str], ref: str,
                  repo: pygit2.Repository | None = None
                  ) -> tuple[list[tuple[str, int | None, str]], int]:
    """The problems (where, position, message) of the log's first-parent ``chain`` (commit
    ids, oldest first) against ``anchors``, and the position of the newest that holds.
    With ``repo``, a log that is only behind an anchor (its tip is an ancestor of the
    anchored commit) is named as such."""
    positions = {commit: pos for pos, commit in enumerate(chain, start=1)}
    problems: list[tuple[str, int | None, str]] = []
    newest = 0
    for anchor in anchors:
        named = (f"main commit {anchor.source[:12]} anchors the log at {anchor.tip} "
                 f"(event {anchor.events})")
        if not chain:
            problems.append((anchor.tip, anchor.events, f"{named}, but there is no {ref}: "
                             "the log was deleted"))
        elif anchor.events > len(chain):
            why = "it was truncated or rewritten"
            if repo is not None and _behind(repo, chain[-1], anchor.tip):
                why = ("it ends at an earlier commit of the anchored chain: it was truncated "
                       "(or it is behind origin's: `modelsmith sync` brings that in)")
            problems.append((anchor.tip, anchor.events, f"{named}, but the log holds only "
                             f"{len(chain)} events: {why}"))
        elif chain[anchor.events - 1] != anchor.tip:
            at = positions.get(anchor.tip)
            why = (f"that commit is event {at} now" if at is not None else
                   f"the log holds {chain[anchor.events - 1]} there and not that commit")
            problems.append((anchor.tip, anchor.events, f"{named}, but {why}: history was "
                             "rewritten at or before it"))
        else:
            newest = max(newest, anchor.events)
    return problems, newest


def _behind(repo: pygit2.Repository, tip: str, anchored: str) -> bool:
    try:
        return anchored in repo and repo.descendant_of(anchored, tip)
    except (pygit2.GitError, ValueError, KeyError):
        return False


# ---------------------------------------------------------------- our own replays


def _slug(ref: str) -> str:
    return ref.replace("/", "_")


def verified_path(cache_dir: Path, ref: str) -> Path:
    """Where the last tip ``verify`` found sound is kept."""
    return cache_dir / f"verified-{_slug(ref)}"


def replays_path(cache_dir: Path, ref: str) -> Path:
    return cache_dir / f"replays-{_slug(ref)}.jsonl"


def record_replay(cache_dir: Path, ref: str, entry: dict[str, Any]) -> None:
    """Append one record (``old``, ``onto``, ``events``; after the replay ``replayed``,
    ``dropped`` and ``tip`` in a second line for the same move)."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(entry, sort_keys=True) + "\n"
        fd = os.open(replays_path(cache_dir, ref), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                     0o644)
        try:
            os.write(fd, line.encode())  # one write: lines of racing writers never mix
        finally:
            os.close(fd)
    except OSError:
        pass  # read-only: verify will name the forced update, as for any other


def replays(cache_dir: Path, ref: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The recorded replays by (old tip, new base), later lines completing earlier ones;
    unreadable lines are skipped (verify then flags the move as any other)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    try:
        text = replays_path(cache_dir, ref).read_text()
    except (OSError, UnicodeDecodeError):
        return out
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or not all(
                isinstance(entry.get(k), str) for k in ("old", "onto")):
            continue
        if "events" in entry and not (isinstance(entry["events"], list) and all(
                isinstance(i, str) for i in entry["events"])):
            continue
        out.setdefault((entry["old"], entry["onto"]), {}).update(entry)
    return out


def _first_parents(repo: pygit2.Repository, tip: Any, stop: Any = None
                   ) -> Iterator[pygit2.Commit]:
    """``tip`` and its first parents, newest first, up to (without) ``stop``."""
    commit = repo.get(tip)
    while isinstance(commit, pygit2.Commit) and (stop is None or commit.id != stop):
        yield commit
        commit = repo.get(commit.parent_ids[0]) if commit.parent_ids else None


def check_replay(repo: pygit2.Repository, record: dict[str, Any], current: dict[str, Any],
                 positions: dict[str, int]) -> str | None:
    """Why the recorded replay does not explain its forced update (None: it does).
    ``current``: the current log's events by id; ``positions``: their positions."""
    from modelsmith.events.gitstore import parse_event
    from modelsmith.events.types import InvalidEventError

    old, onto = record["old"], record["onto"]
    if "events" not in record:
        return "the record does not name the events the old tip held"
    try:
        base = repo.merge_base(old, onto)
        only = [parse_event(c.message) for c in _first_parents(repo, old, base)]
    except (pygit2.GitError, ValueError, KeyError, InvalidEventError) as exc:
        return f"the replay's old tip cannot be read ({exc})"
    base_pos = 0 if base is None else sum(1 for _ in _first_parents(repo, base))
    if {e.id for e in only} != set(record.get("events", ())):
        return "the recorded replay names other events than the old tip held"
    mine = {e.id for e in only}
    for event in only:
        now = current.get(event.id)
        if now is not None:
            if not (now.same_content(event) and now.stream == event.stream
                    and now.at == event.at):
                return f"event {event.id} was replayed with other content"
            continue
        if event.type not in DECISIONS:
            return f"observation {event.id} ({event.type}) was lost in the replay"
        moved = any(e.stream == event.stream and e.id not in mine
                    and positions[e.id] > base_pos for e in current.values())
        if not moved:
            return (f"decision {event.id} ({event.type}) was dropped although no other "
                    f"writer moved stream {event.stream!r}")
    return None
