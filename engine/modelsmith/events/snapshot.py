"""Snapshots of the folded fleet state, carried inside the event log's own hash chain.

Why: every CI run is a fresh clone with no cache, and folding 100k events from nothing
takes seconds. A snapshot is the fleet state folded up to one event, so a cold read loads
the newest snapshot at or before the tip and applies only the events after it.

Where it lives -- the choice, and why. A snapshot rides in the tree of the event commit it
folds up to, under the reserved name ``.modelsmith-snapshot`` (a tree: ``_meta.json``,
``_status.json`` -- the status table's rows -- and one ``<stream>.json`` per stream; a
stream name has no ``_``), and the commit message names it in a ``Snapshot:`` trailer.
It is therefore inside the log's hash chain: the commit that carries it is an event commit
on ``modelsmith/events``, so a snapshot can only be added by appending to the
protected branch (no force push), it shows in ``git log`` next to the event, every later
commit's id depends on it, and ``fetch``/``push`` of the branch carry it with nothing
else to share (a separate ref would be a second thing to protect and sync, and could be
moved under the log without touching the log's history). The reserved name starts with a
dot, which no evidence name can (``EVIDENCE_NAME_RE``), and ``evidence()`` leaves it out.

What a reader trusts, and what it checks:

- on the cold path (``GitEventStore.fold_cold``) the snapshot must be bound to the commit
  that carries it: its ``_meta.json`` names the event id and the parent commit of that
  commit, the trailer names the snapshot tree's id, the streams' event counts add up to the
  position it claims, each stream's last seq equals its event count, the carrying event is
  the last of its stream, and the events after it continue each stream's seqs (a cold
  ``status`` reads only ``_status.json`` and the streams those events touch, whose rows
  must match their decoded state; a cold fold for ``plan`` decodes every stream). Anything
  else -- garbage, wrong types, an unknown format -- and the snapshot is ignored with one
  warning on stderr naming its commit (run ``modelsmith verify``), and the log is folded
  whole, as it would be without snapshots;
- ``verify`` folds the whole log and compares every snapshot with the fold at its
  position (each stream blob's and the status rows' git ids against those of the fold's
  encodings, so a stream that did not change costs nothing): a snapshot that says
  anything else is a verify failure naming its commit, position and stream. A forged
  snapshot can thus change what a cold read sees only by being appended to the
  protected log, and never without ``verify`` naming it.

The log is immutable, so a bad snapshot stays in history. ``MODELSMITH_SNAPSHOTS=off``
makes readers ignore every snapshot (fold the whole log); appenders then build the next
snapshot from the whole fold too, so the snapshots written after it are sound again.

Format (``SNAPSHOT_FORMAT``, in ``_meta.json``): JSON, never pickle (a clone's content is
not to be trusted). One blob per stream means consecutive snapshots share every stream
that did not change: git stores it once, and the appender re-encodes only the streams
touched since its last snapshot. Each list of records is stored as named columns of
equal length (faster to check and build than one object per record), timestamps as
ISO 8601 with their offset; dicts keep their insertion order. ``_meta.json`` also records
the projection version (``projection._CACHE_FORMAT``): a snapshot of another one is
simply not used (the fold's shape changed in an upgrade), and the next appends write
current ones.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pygit2
from pydantic import TypeAdapter, ValidationError

from modelsmith.events.projection import _CACHE_FORMAT as PROJECTION_FORMAT
from modelsmith.events.projection import (
    Assignment,
    Candidate,
    EvalRecord,
    FleetState,
    SpecialistState,
    _no_gc,
)
from modelsmith.events.store import EventStoreError
from modelsmith.events.types import STREAM_RE, Event, Lineage, git_blob_hash

SNAPSHOT_TREE = ".modelsmith-snapshot"
SNAPSHOT_TRAILER = "Snapshot"
SNAPSHOT_FORMAT = 1
META_NAME = "_meta.json"
STATUS_NAME = "_status.json"  # the status table's rows (SpecialistState.to_dict), in order
#: Events between two snapshots (``MODELSMITH_SNAPSHOT_EVERY``); 0 writes none.
DEFAULT_EVERY = 1000
EVERY_ENV = "MODELSMITH_SNAPSHOT_EVERY"
MODE_ENV = "MODELSMITH_SNAPSHOTS"

_REJECTION_KEYS = ("at", "event_id", "version", "stage", "gate", "reason")
_METRIC_KEYS = ("requests", "bootstrap", "last", "at")
_fromiso = datetime.fromisoformat
_LINEAGES = TypeAdapter(list[Lineage])
_NO_LINEAGE = Lineage(base_model="")


class SnapshotError(EventStoreError):
    """A snapshot that cannot be read or does not match the log it is in."""


class StaleSnapshot(SnapshotError):
    """A sound snapshot of another projection version (written before an upgrade changed
    what the fold holds): not used, not a problem; later appends write current ones."""


def snapshot_every(value: int | None = None) -> int:
    """Events between snapshots: ``value``, else ``MODELSMITH_SNAPSHOT_EVERY``, else the
    default. A bad environment value is a clear error, not a silent default."""
    if value is not None:
        if value < 0:
            raise SnapshotError(f"snapshot interval must be 0 (none) or more, not {value}")
        return value
    raw = os.environ.get(EVERY_ENV, "").strip()
    if not raw:
        return DEFAULT_EVERY
    try:
        every = int(raw)
    except ValueError:
        every = -1
    if every < 0:
        raise SnapshotError(f"{EVERY_ENV}={raw!r}: expected a whole number of events "
                            "(0 writes no snapshots)")
    return every


def snapshots_trusted() -> bool:
    """False when ``MODELSMITH_SNAPSHOTS=off``: fold the whole log, build from that."""
    return os.environ.get(MODE_ENV, "").strip().lower() not in ("off", "0", "no", "false")


_warned: set[str] = set()


def warn_once(commit: str, position: int | None, why: str) -> None:
    """One line on stderr per snapshot and process: which, why, what to do."""
    if commit in _warned:
        return
    _warned.add(commit)
    at = f" (event {position})" if position else ""
    print(f"warning: ignoring the state snapshot in event commit {commit}{at}: {why}; "
          "folding the whole log instead. Run `modelsmith verify` to check the log.",
          file=sys.stderr)


# ---------------------------------------------------------------------- encoding


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


#: Each record type as named columns: (field, kind). Kinds: s str, i count (int >= 0),
#: f float, b bool, t time, m decision metric; "?" allows null.
_ASSIGNMENT = (("stage", "s"), ("version", "s"), ("since", "t"), ("event_id", "s"),
               ("actor", "s"), ("cause", "s?"), ("traffic", "f?"), ("until", "t?"),
               ("ended_by", "s?"), ("rolled_back_for", "s?"))
_EVAL = (("event_id", "s"), ("at", "t"), ("model", "s"), ("suite_hash", "s"),
         ("composite", "f"), ("heldout", "f?"), ("decision", "f?"), ("decision_metric", "m"),
         ("legacy", "b"), ("run_id", "s"), ("weights_hash", "s?"), ("seq", "i"),
         ("partial", "b"))
_CANDIDATE = (("version", "s"), ("registered_at", "t"), ("event_id", "s"))
_NONE = type(None)
_TYPES = {"s": {str}, "s?": {str, _NONE}, "i": {int}, "f": {float}, "f?": {float, _NONE},
          "b": {bool}, "t": {str}, "t?": {str, _NONE}, "m": {str, _NONE}}


def _columns(rows: list[Any], fields: tuple[tuple[str, str], ...]) -> dict[str, list[Any]]:
    out = {}
    for name, kind in fields:
        col = [getattr(r, name) for r in rows]
        if kind == "t":
            col = [v.isoformat() for v in col]
        elif kind == "t?":
            col = [None if v is None else v.isoformat() for v in col]
        out[name] = col
    return out


def specialist_doc(s: SpecialistState) -> dict[str, Any]:
    """A stream's state as JSON-ready data (see :func:`encode_specialist`): each list of
    records as named columns of equal length."""
    index = {id(a): i for i, a in enumerate(s.history)}
    stages = {}
    for stage, held in s.stages.items():
        at = index.get(id(held))
        if at is None:  # never made by the fold (a held stage is in its history)
            raise SnapshotError(f"stream {s.name}: {stage} holder is not in its history")
        stages[stage] = at
    cands = list(s.candidates.values())
    candidates = _columns(cands, _CANDIDATE)
    candidates["lineage"] = [c.lineage.model_dump(mode="json", exclude_unset=True)
                             for c in cands]
    candidates["evaluations"] = [len(c.evals) for c in cands]
    return {
        "name": s.name,
        "events": s.events,
        "last_seq": s.last_seq,
        "last_at": _iso(s.last_at),
        "invalid": s.invalid,
        "history": _columns(s.history, _ASSIGNMENT),
        "stages": stages,  # stage -> index in history (the same object, as in the fold)
        "candidates": candidates,
        # the candidates' evaluations, in candidate order ("evaluations" counts them off)
        "candidate_evals": _columns([r for c in cands for r in c.evals], _EVAL),
        "model_evals": _columns(s.model_evals, _EVAL),
        "rejections": s.rejections,
        "metrics": s.metrics,
    }


def encode_specialist(s: SpecialistState) -> bytes:
    """The bytes of a stream's snapshot blob: deterministic for a given state, so its git
    id is what ``verify`` compares."""
    return json.dumps(specialist_doc(s), ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def encode_status(state: FleetState) -> bytes:
    """The status rows of every stream, in the fold's order: what a cold ``status`` reads
    instead of decoding every stream's state."""
    return json.dumps([s.to_dict() for s in state.specialists.values()], ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def encode_meta(state: FleetState, parent: str | None, stream: str, seq: int) -> bytes:
    return json.dumps({
        "format": SNAPSHOT_FORMAT,
        "position": state.position,
        "event_id": state.last_event_id,
        "parent": parent,
        "stream": stream,
        "seq": seq,
        "projection": PROJECTION_FORMAT,
        "streams": list(state.specialists),
    }, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------------- decoding


class _Bad(Exception):
    """Internal: where a snapshot blob stopped making sense."""


def _time(value: Any, where: str) -> datetime:
    if type(value) is not str:
        raise _Bad(f"{where}: expected an ISO 8601 time string")
    moment = _fromiso(value)
    if moment.tzinfo is None:
        raise _Bad(f"{where}: time {value!r} has no time zone")
    return moment


def _maybe_time(value: Any, where: str) -> datetime | None:
    return None if value is None else _time(value, where)


def _count(v: Any) -> bool:
    return type(v) is int and v >= 0


def _rows(doc: Any, fields: tuple[tuple[str, str], ...], make: Any, where: str,
          extra: tuple[str, ...] = ()) -> tuple[list[Any], dict[str, list[Any]]]:
    """Records from named columns, each column type-checked whole; also the ``extra``
    columns, unchecked, for the caller."""
    if type(doc) is not dict or set(doc) != {name for name, _ in fields} | set(extra):
        raise _Bad(f"{where}: expected the columns {[n for n, _ in fields] + list(extra)}")
    length = None
    cols = []
    for name, kind in fields:
        col = doc[name]
        if type(col) is not list or (length is not None and len(col) != length):
            raise _Bad(f"{where}.{name}: expected a list as long as the other columns")
        length = len(col)
        if not set(map(type, col)) <= _TYPES[kind]:
            raise _Bad(f"{where}.{name}: expected {kind} values")
        if kind == "i" and col and min(col) < 0:
            raise _Bad(f"{where}.{name}: negative count")
        elif kind == "m" and not set(col) <= {None, "dev", "unseen"}:
            raise _Bad(f"{where}.{name}: expected dev, unseen or null")
        elif kind == "t":
            col = list(map(_fromiso, col))
            if any(t.tzinfo is None for t in col):
                raise _Bad(f"{where}.{name}: a time has no time zone")
        elif kind == "t?":
            col = [None if v is None else _time(v, f"{where}.{name}") for v in col]
        cols.append(col)
    for name in extra:
        if type(doc[name]) is not list or len(doc[name]) != length:
            raise _Bad(f"{where}.{name}: expected a list as long as the other columns")
    return list(map(make, *cols)), {name: doc[name] for name in extra}


def _rejection(value: Any, where: str) -> dict[str, Any]:
    if type(value) is not dict or tuple(value) != _REJECTION_KEYS \
            or not all(type(v) is str for v in value.values()):
        raise _Bad(f"{where}: expected {{{', '.join(_REJECTION_KEYS)}}} as strings")
    return value


def _metric(value: Any, where: str) -> dict[str, Any]:
    if type(value) is not dict or tuple(value) != _METRIC_KEYS:
        raise _Bad(f"{where}: expected {{{', '.join(_METRIC_KEYS)}}}")
    last = value["last"]
    if not (_count(value["requests"]) and _count(value["bootstrap"])
            and type(value["at"]) is str and type(last) is dict
            and all(type(k) is str and type(v) is float for k, v in last.items())):
        raise _Bad(f"{where}: a field has the wrong type")
    return value


_FIELDS = ("name", "events", "last_seq", "last_at", "invalid", "history", "stages",
           "candidates", "candidate_evals", "model_evals", "rejections", "metrics")


def _specialist(doc: Any, name: str) -> SpecialistState:
    if type(doc) is not dict:
        raise _Bad("not a JSON object")
    if tuple(doc) != _FIELDS:
        raise _Bad(f"expected the fields {', '.join(_FIELDS)} in that order")
    (got, events, last_seq, last_at, invalid, history, stages, candidates, candidate_evals,
     model_evals, rejections, metrics) = doc.values()
    if got != name:
        raise _Bad(f"names stream {got!r}")
    if not (_count(events) and _count(last_seq) and _count(invalid)
            and type(stages) is dict and type(rejections) is list and type(metrics) is dict):
        raise _Bad("a field has the wrong type")
    s = SpecialistState(name)
    s.events, s.last_seq, s.invalid = events, last_seq, invalid
    s.last_at = _maybe_time(last_at, "last_at")
    s.history, _ = _rows(history, _ASSIGNMENT, Assignment, "history")
    for stage, at in stages.items():
        if type(at) is not int or not 0 <= at < len(s.history) \
                or s.history[at].stage != stage:
            raise _Bad(f"stages.{stage}: not the index of a {stage} assignment in history")
        s.stages[stage] = s.history[at]
    evals, _ = _rows(candidate_evals, _EVAL, EvalRecord, "candidate_evals")
    found, more = _rows(candidates, _CANDIDATE, _candidate, "candidates",
                        ("lineage", "evaluations"))
    counts = more["evaluations"]
    if not set(map(type, counts)) <= {int} or (counts and min(counts) < 0) \
            or sum(counts) != len(evals):
        raise _Bad("candidates.evaluations: counts do not add up to candidate_evals")
    try:
        lineages = _LINEAGES.validate_python(more["lineage"], strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _Bad(f"candidates.lineage.{'.'.join(str(p) for p in first['loc'])}: "
                   f"{first['msg']}") from None
    start = 0
    for cand, lineage, n in zip(found, lineages, counts, strict=True):
        if cand.version in s.candidates:
            raise _Bad(f"candidate {cand.version} appears twice")
        cand.lineage = lineage
        cand.evals = evals[start:start + n]
        start += n
        s.candidates[cand.version] = cand
    s.model_evals, _ = _rows(model_evals, _EVAL, EvalRecord, "model_evals")
    s.rejections = [_rejection(r, f"rejection {i}") for i, r in enumerate(rejections)]
    s.metrics = {}
    for key, value in metrics.items():
        s.metrics[key] = _metric(value, f"metrics.{key}")
    return s


def _candidate(version: str, registered_at: datetime, event_id: str) -> Candidate:
    return Candidate(version, registered_at, event_id, _NO_LINEAGE)


def decode_specialist(data: bytes, name: str) -> SpecialistState:
    """A stream's state from its snapshot blob; SnapshotError naming the stream and the
    field for anything that is not what :func:`encode_specialist` writes."""
    try:
        return _specialist(json.loads(data), name)
    except _Bad as exc:
        raise SnapshotError(f"stream {name}: {exc}") from None
    except (ValueError, TypeError, RecursionError, OverflowError, MemoryError) as exc:
        # ValueError covers bad JSON, bad UTF-8, out-of-range numbers and bad times.
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise SnapshotError(f"stream {name}: unreadable ({why})") from None


def decode_meta(data: bytes) -> dict[str, Any]:
    """``_meta.json``, checked for shape and format version."""
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise SnapshotError(f"{META_NAME} is not JSON ({str(exc)[:200]})") from None
    if type(meta) is not dict:
        raise SnapshotError(f"{META_NAME} is not a JSON object")
    fmt = meta.get("format")
    if fmt != SNAPSHOT_FORMAT or type(fmt) is not int:
        raise SnapshotError(f"{META_NAME} has format {fmt!r}; this modelsmith reads format "
                            f"{SNAPSHOT_FORMAT} (a newer modelsmith wrote it?)")
    if meta.get("projection") != PROJECTION_FORMAT:
        raise StaleSnapshot(f"{META_NAME} folds with projection {meta.get('projection')!r}, "
                            f"this modelsmith with {PROJECTION_FORMAT}")
    position, event_id, parent = meta.get("position"), meta.get("event_id"), meta.get("parent")
    stream, seq, streams = meta.get("stream"), meta.get("seq"), meta.get("streams")
    if not (type(position) is int and position >= 1 and type(event_id) is str
            and (parent is None or type(parent) is str)
            and type(stream) is str and type(seq) is int and seq >= 1
            and type(streams) is list
            and all(type(n) is str and STREAM_RE.match(n) for n in streams)
            and len(set(streams)) == len(streams)):
        raise SnapshotError(f"{META_NAME}: position, event_id, parent, stream, seq or "
                            "streams missing or of the wrong type")
    return meta


def _held(v: Any) -> bool:
    return v is None or (type(v) is dict and tuple(v) == ("version", "since", "traffic")
                         and type(v["version"]) is str and type(v["since"]) is str
                         and (v["traffic"] is None or type(v["traffic"]) is float))


def _latest(v: Any) -> bool:
    return v is None or (type(v) is dict and tuple(v) == ("version", "composite",
                                                           "evaluations")
                         and type(v["version"]) is str and _count(v["evaluations"])
                         and (v["composite"] is None or type(v["composite"]) is float))


_ROW = ("name", "production", "canary", "shadow", "candidates", "latest_candidate",
        "rejections", "events", "last_seq", "last_event_at")


def decode_status(data: bytes, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """``_status.json``: one row per stream of ``meta``, in its order, each of the shape
    ``SpecialistState.to_dict`` gives, and adding up to the position meta claims."""
    try:
        rows = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise SnapshotError(f"{STATUS_NAME} is not JSON ({str(exc)[:200]})") from None
    if type(rows) is not list or len(rows) != len(meta["streams"]):
        raise SnapshotError(f"{STATUS_NAME} is not a list of one row per stream")
    for i, (row, name) in enumerate(zip(rows, meta["streams"], strict=True)):
        if not (type(row) is dict and tuple(row) == _ROW and row["name"] == name
                and _held(row["production"]) and _held(row["canary"])
                and _held(row["shadow"]) and _count(row["candidates"])
                and _latest(row["latest_candidate"]) and _count(row["rejections"])
                and _count(row["events"]) and row["last_seq"] == row["events"]
                and (row["last_event_at"] is None or type(row["last_event_at"]) is str)):
            raise SnapshotError(f"{STATUS_NAME}: row {i} is not a status row of stream "
                                f"{name} (fields, types, or seqs that do not add up)")
    if sum(row["events"] for row in rows) != meta["position"]:
        raise SnapshotError(f"{STATUS_NAME}: its rows do not add up to the "
                            f"{meta['position']} events it claims")
    return rows


def load_status(repo: pygit2.Repository, commit: pygit2.Commit, trailers: dict[str, str],
                tail: list[Event]) -> dict[str, Any]:
    """The status table (``FleetState.to_dict``) at the end of ``tail`` (the events after
    the commit's snapshot, in order), decoding only the streams ``tail`` touches."""
    meta, blobs, status = snapshot_entries(repo, commit, trailers)
    rows = {row["name"]: row for row in decode_status(repo[status].data, meta)}
    state = FleetState(position=meta["position"], last_event_id=meta["event_id"])
    with _no_gc():
        for name in dict.fromkeys(e.stream for e in tail):
            if name in blobs:
                held = state.specialists[name] = decode_specialist(repo[blobs[name]].data,
                                                                   name)
                if held.to_dict() != rows[name]:
                    raise SnapshotError(f"{STATUS_NAME}: the row of stream {name} is not "
                                        "what its state says")
    for event in tail:
        continue_from(state, event)
    for name, held in state.specialists.items():
        rows[name] = held.to_dict()
    return {"tip": None, "events": state.position,
            "specialists": [rows[n] for n in sorted(rows)]}


def check_state(state: FleetState, meta: dict[str, Any]) -> None:
    """The cheap consistency a snapshot owes its claims (the full check is ``verify``)."""
    total = sum(s.events for s in state.specialists.values())
    if total != meta["position"]:
        raise SnapshotError(f"its streams hold {total} events, but it claims to fold "
                            f"{meta['position']}")
    for s in state.specialists.values():
        if s.last_seq != s.events:
            raise SnapshotError(f"stream {s.name} ends at seq {s.last_seq} after "
                                f"{s.events} events")
    last = state.specialists.get(meta["stream"])
    if last is None or last.last_seq != meta["seq"]:
        raise SnapshotError(f"its last event ({meta['stream']}#{meta['seq']}) is not the "
                            "last of its stream")


# ---------------------------------------------------------------------- in the git log


def snapshot_trailer(message: str) -> str | None:
    """The snapshot tree a commit message names, if any (cheap: no tree is read)."""
    marker = f"\n{SNAPSHOT_TRAILER}: "
    at = message.rfind(marker)
    if at < 0:
        return None
    return message[at + len(marker):].split("\n", 1)[0].strip()


def snapshot_entries(repo: pygit2.Repository, commit: pygit2.Commit,
                     trailers: dict[str, str]
                     ) -> tuple[dict[str, Any], dict[str, pygit2.Oid], pygit2.Oid]:
    """A commit's snapshot, bound to it (``trailers``: its message's): (meta, stream ->
    blob id). SnapshotError says what does not match; nothing but ``_meta.json`` is read."""
    named = snapshot_trailer(commit.message)
    try:
        entry = commit.tree[SNAPSHOT_TREE]
    except KeyError:
        raise SnapshotError(f"its message names snapshot {named} but its tree has no "
                            f"{SNAPSHOT_TREE}") from None
    if entry.type_str != "tree":
        raise SnapshotError(f"{SNAPSHOT_TREE} is not a folder")
    if named != str(entry.id):
        raise SnapshotError(f"its message names snapshot {named}, its tree holds {entry.id}")
    tree = repo[entry.id]
    blobs: dict[str, pygit2.Oid] = {}
    meta_blob = status_blob = None
    for item in tree:
        if item.type_str != "blob" or not item.name.endswith(".json"):
            raise SnapshotError(f"{SNAPSHOT_TREE}/{item.name} is not a JSON file")
        if item.name == META_NAME:
            meta_blob = item.id
        elif item.name == STATUS_NAME:
            status_blob = item.id
        elif STREAM_RE.match(item.name[:-5]):
            blobs[item.name[:-5]] = item.id
        else:
            raise SnapshotError(f"{SNAPSHOT_TREE}/{item.name} names no stream")
    if meta_blob is None or status_blob is None:
        raise SnapshotError(f"{SNAPSHOT_TREE} lacks {META_NAME} or {STATUS_NAME}")
    meta = decode_meta(repo[meta_blob].data)
    parent = str(commit.parent_ids[0]) if commit.parent_ids else None
    for key, claimed, actual in (
            ("event id", meta["event_id"], trailers.get("Event-Id")),
            ("parent commit", meta["parent"], parent),
            ("stream", meta["stream"], trailers.get("Stream")),
            ("seq", str(meta["seq"]), trailers.get("Seq"))):
        if claimed != actual:
            raise SnapshotError(f"it claims {key} {claimed}, the commit carrying it has "
                                f"{actual}")
    if set(meta["streams"]) != set(blobs):
        raise SnapshotError(f"{META_NAME} lists {len(meta['streams'])} streams, the folder "
                            f"holds {len(blobs)}")
    return meta, blobs, status_blob


def load_snapshot(repo: pygit2.Repository, commit: pygit2.Commit, trailers: dict[str, str]
                  ) -> tuple[FleetState, dict[str, pygit2.Oid]]:
    """The fleet state a commit's snapshot holds, checked as far as is cheap (its binding
    to the commit, types, counts); SnapshotError otherwise. Never unpickles."""
    meta, blobs, _status = snapshot_entries(repo, commit, trailers)
    state = FleetState()
    with _no_gc():
        for name in meta["streams"]:
            state.specialists[name] = decode_specialist(repo[blobs[name]].data, name)
    state.position, state.last_event_id = meta["position"], meta["event_id"]
    check_state(state, meta)
    return state, blobs


def continue_from(state: FleetState, event: Event) -> None:
    """Apply an event after a snapshot, checking it continues its stream."""
    held = state.specialists.get(event.stream)
    last = held.last_seq if held is not None else 0
    if event.seq != last + 1:
        raise SnapshotError(f"the log after it does not continue stream {event.stream} "
                            f"(seq {event.seq} after {last})")
    state.apply(event)


@dataclass
class LiveState:
    """The appender's fold, kept with the blobs of the last snapshot written or loaded so
    only streams touched since are encoded again."""

    commit: str | None
    state: FleetState
    blobs: dict[str, pygit2.Oid] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)

    def apply(self, event: Event) -> None:
        self.state.apply(event)
        self.dirty.add(event.stream)

    def write(self, repo: pygit2.Repository, parent: str | None, event: Event) -> pygit2.Oid:
        """The snapshot tree of the state as it is now (after ``event``)."""
        state = self.state
        for name in self.dirty:
            self.blobs[name] = repo.create_blob(encode_specialist(state.specialists[name]))
        self.dirty.clear()
        builder = repo.TreeBuilder()
        builder.insert(META_NAME, repo.create_blob(
            encode_meta(state, parent, event.stream, event.seq)), pygit2.enums.FileMode.BLOB)
        builder.insert(STATUS_NAME, repo.create_blob(encode_status(state)),
                       pygit2.enums.FileMode.BLOB)
        for name, oid in self.blobs.items():
            builder.insert(f"{name}.json", oid, pygit2.enums.FileMode.BLOB)
        return builder.write()


class SnapshotChecker:
    """``verify``'s half: folds the log as it is walked and compares every snapshot with
    the fold at its position. A stream blob is compared by git id with the fold's
    encoding, and only where either side changed since the last snapshot."""

    def __init__(self, repo: pygit2.Repository, problem: Any) -> None:
        self.repo, self.problem = repo, problem  # problem(where, position, message)
        self.state = FleetState()
        self.dirty: set[str] = set()
        self.last: dict[str, pygit2.Oid] = {}
        self.snapshots = 0

    def feed(self, event: Event) -> None:
        self.state.apply(event)
        self.dirty.add(event.stream)

    def check(self, commit: pygit2.Commit, position: int, trailers: dict[str, str]) -> None:
        named = snapshot_trailer(commit.message)
        try:
            has_tree = SNAPSHOT_TREE in commit.tree
        except pygit2.GitError:
            has_tree = False
        if named is None and not has_tree:
            return
        where = str(commit.id)
        say = f"snapshot of the state (in the commit of event {position})"
        if named is None:
            self.problem(where, position, f"its tree carries {SNAPSHOT_TREE} but its message "
                         f"has no {SNAPSHOT_TRAILER} trailer")
            return
        self.snapshots += 1
        try:
            meta, blobs, status = snapshot_entries(self.repo, commit, trailers)
        except StaleSnapshot:
            return  # another projection version: nothing here to compare it with
        except SnapshotError as exc:
            self.problem(where, position, f"{say}: {exc}")
            return
        state = self.state
        if meta["position"] != position:
            self.problem(where, position, f"{say} claims to fold {meta['position']} events, "
                         f"but it is at event {position}")
        if meta["streams"] != list(state.specialists):
            self.problem(where, position, f"{say} lists streams other than the log's (or in "
                         "another order)")
        if str(status) != git_blob_hash(encode_status(state)):
            self.problem(where, position, f"{say}: its {STATUS_NAME} (the status table) "
                         "differs from the log's fold")
        bad = set()
        changed = {n for n, oid in blobs.items() if self.last.get(n) != oid}
        for name in sorted(self.dirty | changed | (set(self.last) ^ set(blobs))):
            held = state.specialists.get(name)
            if held is None or name not in blobs:
                bad.add(name)
                self.problem(where, position, f"{say} has stream {name} "
                             f"{'but the log does not' if held is None else 'missing'}")
                continue
            if str(blobs[name]) == git_blob_hash(encode_specialist(held)):
                continue
            bad.add(name)
            self.problem(where, position, f"{say} differs from the log's fold for stream "
                         f"{name}: {self._difference(blobs[name], held)}")
        self.last = blobs
        self.dirty = bad  # compared again at the next snapshot

    def _difference(self, blob: pygit2.Oid, held: SpecialistState) -> str:
        try:
            doc = json.loads(self.repo[blob].data)
        except (ValueError, RecursionError):
            return "it is not JSON"
        if type(doc) is not dict:
            return "it is not a JSON object"
        ours = json.loads(encode_specialist(held))
        fields = [k for k in ours if doc.get(k) != ours[k]] + [k for k in doc if k not in ours]
        return f"{', '.join(fields) or 'its encoding'} differ" + (
            "s" if len(fields) == 1 else "")
