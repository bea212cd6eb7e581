"""Helpers for tests that start and stop processes."""

from __future__ import annotations

import os
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
