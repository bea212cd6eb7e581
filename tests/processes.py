"""Helpers for tests that start and stop processes."""

from __future__ import annotations

import os
import textwrap
import time


def assert_gone(pid: int, within_s: float, what: str) -> None:
    """Fail unless process ``pid`` has ended within ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, f"{what} (pid {pid}) is still running"
        time.sleep(0.05)


#: One racing reconciler (``python SCRIPT CLONE N``): it appends an observation of its own
#: to its clone's log (verified there: the local-only event is the last verified tip, printed
#: on stderr), then runs ``reconcile --push --json``.
RACING_RECONCILER = textwrap.dedent("""
    import sys
    from datetime import UTC, datetime
    from modelsmith.cli import main
    from modelsmith.events.gitstore import GitEventStore
    from modelsmith.events.types import Event, MetricsObserved

    clone, n = sys.argv[1], sys.argv[2]
    store = GitEventStore(clone)
    now = datetime.now(UTC)
    seen = MetricsObserved(version="v1", stage="shadow", window_start=now, window_end=now,
                           requests=1, metrics={"format_rate": 1.0})
    (mine,) = store.append("rtb-quality", [Event.new(seen, actor=f"serve-{n}")],
                           store.last_seq("rtb-quality"))
    assert store.verify().ok  # the local-only event is the last verified tip
    print(mine.id, file=sys.stderr)
    main(["-C", clone, "reconcile", "--push", "--json"])
""")
