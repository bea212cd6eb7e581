"""Helpers for tests that start and stop processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path


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


def race_reconcilers(clones: list[Path], folder: Path) -> tuple[list[dict], list[str]]:
    """Run :data:`RACING_RECONCILER` in every clone at once; each one's ``--json`` result and
    its stderr (first line: the id of the event it appended), once all succeeded."""
    script = folder / "reconciler.py"
    script.write_text(RACING_RECONCILER)
    procs = [subprocess.Popen([sys.executable, str(script), str(path), str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n, path in enumerate(clones)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    return [json.loads(out) for out, _ in outputs], [err for _, err in outputs]
