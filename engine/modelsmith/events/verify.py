"""Checks that a log is well formed: ids unique, seqs contiguous, every event valid."""

from __future__ import annotations

from dataclasses import dataclass, field

from modelsmith.events.types import Event, InvalidEventError


@dataclass(frozen=True)
class VerifyProblem:
    """One thing wrong with the log, located by commit (git) or event id (memory)."""

    where: str
    position: int | None
    message: str

    def __str__(self) -> str:
        at = f" (event {self.position})" if self.position else ""
        return f"{self.where}{at}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {"where": self.where, "position": self.position, "message": self.message}


@dataclass
class VerifyReport:
    events: int = 0
    tip: str | None = None
    snapshots: int = 0  # state snapshots found in the log (each compared with the fold)
    anchors: int = 0  # anchors found on main (each names a commit and its position)
    unanchored: int = 0  # events after the newest anchor that holds (no anchor: all)
    problems: list[VerifyProblem] = field(default_factory=list)
    signed: int = 0  # events whose signature verifies against the allowed signers
    unsigned: int = 0  # events with no signature at all
    signers_file: str | None = None  # the allowed-signers blob the signatures were checked by
    warnings: list[str] = field(default_factory=list)  # not problems: the log is still ok

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "events": self.events,
            "tip": self.tip,
            "snapshots": self.snapshots,
            "anchors": self.anchors,
            "unanchored": self.unanchored,
            "problems": [p.to_dict() for p in self.problems],
            "signed": self.signed,
            "unsigned": self.unsigned,
            "signers_file": self.signers_file,
            "warnings": list(self.warnings),
        }


class EventChecker:
    """Feeds events in log order and records what breaks the log's invariants."""

    def __init__(self, report: VerifyReport) -> None:
        self.report = report
        self._ids: dict[str, str] = {}
        self._seqs: dict[str, int] = {}

    def problem(self, where: str, position: int | None, message: str) -> None:
        self.report.problems.append(VerifyProblem(where, position, message))

    def feed(self, event: Event, where: str) -> None:
        pos = event.position or None
        self.report.events += 1
        first = self._ids.get(event.id)
        if first is not None:
            self.problem(where, pos, f"event id {event.id} was already recorded at {first}")
        else:
            self._ids[event.id] = where
        last = self._seqs.get(event.stream, 0)
        if event.seq != last + 1:
            self.problem(
                where, pos, f"stream {event.stream!r} jumps from seq {last} to {event.seq}"
            )
        self._seqs[event.stream] = max(last, event.seq)
        try:
            event.payload()
        except InvalidEventError as exc:
            self.problem(where, pos, str(exc))


def verify_events(events: list[Event]) -> VerifyReport:
    """Verify any store's events (the git store adds its own history checks)."""
    report = VerifyReport(tip=events[-1].id if events else None)
    checker = EventChecker(report)
    for event in events:
        checker.feed(event, f"event {event.id}")
    return report
