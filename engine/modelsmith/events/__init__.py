"""The event log: event types, stores, projections."""

from modelsmith.events.store import (
    ConcurrencyError,
    EventConflictError,
    EventStore,
    EventStoreError,
    MemoryEventStore,
    UnknownTipError,
)
from modelsmith.events.types import (
    EVENT_TYPES,
    FLEET_STREAM,
    STAGES,
    Event,
    EventData,
    InvalidEventError,
)

__all__ = [
    "EVENT_TYPES",
    "FLEET_STREAM",
    "STAGES",
    "ConcurrencyError",
    "Event",
    "EventConflictError",
    "EventData",
    "EventStore",
    "EventStoreError",
    "InvalidEventError",
    "MemoryEventStore",
    "UnknownTipError",
]
