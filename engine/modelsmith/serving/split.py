"""The traffic split: which version of a specialist answers a request, from the event log.

Per specialist, from the folded log (never from the YAML: desired is not actual): the
production version answers; the canary version answers the requests whose key hashes
below its share (a stable hash -- the same key always lands on the same side, across
processes and restarts); the shadow version gets a mirrored copy whose answer is scored
and compared, never returned. The split follows the log: when its tip moves (a promotion,
a rollback), the next lookup folds the new events -- no restart.

Bootstrap: a specialist's first version has no production to mirror. While nothing holds
production or canary, a request that carries a ``reference`` (replayed, labelled traffic)
is answered by the shadow when the policy's ``bootstrap`` is ``replay``; every other
request is a :class:`NoVersion` that says why and what to do.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelsmith.errors import ModelsmithError

if TYPE_CHECKING:
    from modelsmith.events.projection import Assignment as Held
    from modelsmith.events.projection import FleetState
    from modelsmith.events.store import EventStore

#: Hash buckets: the canary share is resolved to 1/BUCKETS.
BUCKETS = 10_000


def bucket(key: str) -> int:
    """A stable bucket in ``[0, BUCKETS)`` for a request key (SHA-256, not ``hash()``,
    which changes per process)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


class NoVersion(ModelsmithError, LookupError):
    """The specialist has nothing in production or canary to answer with (and its shadow,
    if any, may not answer this request while bootstrapping)."""


@dataclass(frozen=True)
class Assignment:
    """How one request is served."""

    specialist: str
    version: str  # answers
    stage: str  # "production" | "canary" | "shadow" (bootstrapping only)
    shadow: str | None  # also runs, mirrored, never returned
    # The shadow answers (and is returned) because nothing holds production or canary and
    # the request carried a reference (policy ``bootstrap: replay``).
    bootstrap: bool = False


@dataclass(frozen=True)
class Stages:
    production: str | None
    canary: str | None
    traffic: float  # the canary's share
    shadow: str | None
    fallback: str | None = None  # what a rollback of production goes back to

    @property
    def versions(self) -> set[str]:
        """The versions this split may need: those serving, and production's fallback
        (kept loaded, so that a rollback answers at once)."""
        return {v for v in (self.production, self.canary, self.shadow, self.fallback) if v}

    def assign(self, specialist: str, key: str, *, referenced: bool = False,
               bootstrap: str = "off") -> Assignment:
        """Who answers the request with ``key``. ``referenced``: it carries a reference;
        ``bootstrap``: the specialist's policy's ``bootstrap`` mode (``replay`` lets the
        shadow answer referenced requests while nothing holds production or canary)."""
        on_canary = self.canary is not None and bucket(key) < round(self.traffic * BUCKETS)
        if on_canary or self.production is None:
            if self.canary is None:
                if self.shadow is not None and bootstrap == "replay" and referenced:
                    return Assignment(specialist, self.shadow, "shadow", None, bootstrap=True)
                raise NoVersion(self.unanswered(specialist, bootstrap))
            return Assignment(specialist, self.canary, "canary", self.shadow)
        return Assignment(specialist, self.production, "production", self.shadow)

    def unanswered(self, specialist: str, bootstrap: str) -> str:
        """Why a request to a specialist with nothing in production or canary gets no
        answer, and what to do."""
        head = f"{specialist} has no version in production or canary"
        if self.shadow is None:
            return f"{head}, nor one in shadow: promote a candidate to shadow first"
        if bootstrap == "replay":
            return (f"{head}; its shadow {self.shadow} answers only replayed requests with a "
                    "reference while bootstrapping (policy bootstrap: replay)")
        if bootstrap == "approval":
            return (f"{head}; its shadow {self.shadow} gets no bootstrap traffic (policy "
                    "bootstrap: approval): its first canary promotion needs an approved "
                    "change")
        return (f"{head}; its shadow {self.shadow} answers nothing while bootstrapping "
                f"(policy bootstrap: {bootstrap}), so it cannot leave shadow: set the "
                "policy's bootstrap to replay (and replay requests with a reference) or to "
                "approval")


def stages_of(fleet: FleetState, specialist: str) -> Stages:
    state = fleet.specialists.get(specialist)

    def held(stage: str) -> Held | None:
        return state.holder(stage) if state else None

    production, canary, shadow = held("production"), held("canary"), held("shadow")
    return Stages(production.version if production else None,
                  canary.version if canary else None,
                  (canary.traffic or 0.0) if canary else 0.0,
                  shadow.version if shadow else None,
                  state.previous_holder("production") if state else None)


class TrafficSplit:
    """The split of every specialist, kept in step with the event log's tip."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._tip: str | None = None
        self._fleet: FleetState | None = None
        self.reloads = 0

    def _current(self) -> FleetState:
        from modelsmith.events.projection import fold

        tip = self.store.tip()
        with self._lock:
            if self._fleet is None or tip != self._tip:
                self._fleet = fold(self.store)
                self._tip = tip
                self.reloads += 1
            return self._fleet

    def stages(self, specialist: str) -> Stages:
        return stages_of(self._current(), specialist)

    def assign(self, specialist: str, key: str, *, referenced: bool = False,
               bootstrap: str = "off") -> Assignment:
        return self.stages(specialist).assign(specialist, key, referenced=referenced,
                                              bootstrap=bootstrap)
