"""What the pages read: the event log, folded once per tip, and what the façade wires in.

A :class:`Source` keeps what it computed for the log's tip it saw; a page asked for after
the tip moved reads the new tip (the dashboard follows the log without a restart). Nothing
here writes: the log, the evidence and the specs are only read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelsmith.errors import ModelsmithError
from modelsmith.events.projection import FleetState, fleet_status, fold
from modelsmith.events.store import EventStore
from modelsmith.events.types import Event

StatusFn = Callable[[], dict[str, Any]]
PlanFn = Callable[[], dict[str, Any]]
TargetsFn = Callable[[], dict[str, float]]


class Source:
    """The pages' data over ``store``.

    ``status`` is the status table (``modelsmith status --json``'s object: the façade wires
    its own, so the fleet page shows the same numbers); without it, the log's rows alone.
    ``plan`` is the plan report with the forge's open proposals (``modelsmith plan
    --json``'s object); without it the proposals page says none is wired. ``cache_dir``
    holds the projection caches the façade shares (never written here but by the fold).
    ``report_url`` is where the static report is published, when it is. ``targets`` gives
    each specialist's target (its spec's ``target.composite``, which the loop steers the
    decision metric to); without it, the pages show none. The plan is kept
    for ``plan_ttl`` seconds at most besides the tip: a new pull request changes it without
    moving the log.
    """

    def __init__(self, store: EventStore, *, cache_dir: Path | None = None,
                 status: StatusFn | None = None, plan: PlanFn | None = None,
                 title: str = "Modelsmith", report_url: str | None = None,
                 targets: TargetsFn | None = None, plan_ttl: float = 5.0) -> None:
        self.store = store
        self.cache_dir = cache_dir
        self.title = title
        self.report_url = report_url
        self._status = status
        self._plan = plan
        self._targets = targets
        self._lock = threading.RLock()
        self._tip: str | None = None
        self._memo: dict[Any, Any] = {}
        self.plan_ttl = plan_ttl

    def tip(self) -> str | None:
        """The log's tip now (a commit id; None for an empty log)."""
        with self._lock:  # one thread at a time in the store (a git repository object)
            return self.store.tip()

    def memo(self, key: Any, compute: Callable[[], Any], ttl: float | None = None) -> Any:
        """``compute()``, kept until the log's tip moves (and, with ``ttl``, for that many
        seconds at most). It computes under the lock: what it reads shares one store."""
        tip = self.tip()
        with self._lock:
            if tip != self._tip:
                self._memo.clear()
                self._tip = tip
            kept = self._memo.get(key)
            if kept is None or (ttl is not None and time.monotonic() - kept[0] >= ttl):
                kept = self._memo[key] = (time.monotonic(), compute())
            return kept[1]

    def state(self) -> FleetState:
        """The log folded to the fleet's state (every specialist's stages, history,
        candidates with their evaluations, metrics windows)."""
        cache = self.cache_dir / "fleet.pickle" if self.cache_dir else None
        return self.memo("state", lambda: fold(self.store, cache))

    def status(self) -> dict[str, Any]:
        """The status table: ``modelsmith status --json``'s object."""
        if self._status is not None:
            return self.memo("status", self._status)
        return self.memo("status", lambda: fleet_status(self.store, self.cache_dir))

    def plan(self) -> dict[str, Any] | None:
        """The plan report with the open proposals (``modelsmith plan --json``), or
        ``{"error": ...}`` when it cannot be made (specs that do not load, a forge that
        cannot be listed); None when no plan is wired."""
        if self._plan is None:
            return None

        def make() -> dict[str, Any]:
            try:
                return self._plan()  # type: ignore[misc]
            except ModelsmithError as exc:
                return {"error": str(exc)}
        return self.memo("plan", make, ttl=self.plan_ttl)

    def targets(self) -> dict[str, float]:
        """Each specialist's target composite, from the specs when the façade wires them;
        ``{}`` without them or when they cannot be read."""
        if self._targets is None:
            return {}

        def make() -> dict[str, float]:
            try:
                return dict(self._targets())  # type: ignore[misc]
            except ModelsmithError:
                return {}
        return self.memo("targets", make)

    def events(self, stream: str | None = None) -> list[Event]:
        """Every event of the log (or of one stream), oldest first."""
        return self.memo(("events", stream), lambda: list(self.store.read(stream)))

    def event(self, event_id: str) -> Event | None:
        return self.memo(("event", event_id), lambda: self.store.get(event_id))

    def commit_of(self, event_id: str) -> str | None:
        """The commit that recorded the event (a git store), else None."""
        find = getattr(self.store, "commit_of", None)
        if find is None:
            return None
        with self._lock:
            return find(event_id)

    def runs(self, event: Event) -> list[Any]:
        """The scenario runs an ``EvalCompleted`` carries as evidence (``results.jsonl``):
        every scenario's input, outputs, score and each criterion's reason."""
        from modelsmith.evaluation.service import load_runs

        return self.memo(("runs", event.id), lambda: load_runs(self.store, event))
