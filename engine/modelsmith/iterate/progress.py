"""The loop's live progress: where it is (iteration, phase, step), the composite so far
and an estimate of the time left, for a person (one status line on stderr, redrawn in
place on a terminal) and for an agent (``{"event": "progress", ...}`` JSON lines).

The estimate has two parts: the current phase's time left, from its own rate (scenarios
evaluated, training steps taken), and the iterations still allowed by the budget, at the
mean duration of the iterations finished so far. It is an upper bound: the loop stops
earlier when the target holds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, TextIO

#: ``progress phase=sft step=3 total=80 loss=1.2`` -- a training job's progress line.
_FIELD = re.compile(r"(\w+)=(\S+)")


def parse_job_line(line: str) -> dict[str, str] | None:
    """The fields of a training job's ``progress ...`` line, None for other lines."""
    if not line.startswith("progress "):
        return None
    return dict(_FIELD.findall(line))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class LoopProgress:
    """Collects the loop's progress and shows it (see the module docstring)."""

    def __init__(self, *, max_iterations: int, emit: Callable[[dict[str, Any]], None],
                 stream: TextIO | None = None, interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_iterations = max_iterations
        self.emit = emit
        self.stream = stream
        tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.tty = tty
        self.interval_s = interval_s if interval_s is not None else (0.25 if tty else 15.0)
        self.clock = clock
        self.iteration = 1
        self.phase = "eval"
        self.detail = ""
        self.done: int | None = None
        self.total: int | None = None
        self.composite: float | None = None
        self.decision: tuple[str, float] | None = None  # (dev|unseen, value) last measured
        self.durations: list[float] = []  # finished iterations, seconds
        self._stage = ""
        self._rate_from = (clock(), 0)  # (when, done) the current rate is measured from
        self._last_step = clock()
        self.iteration_started = clock()
        self._last_shown = -1e9
        self._last_emitted = -1e9

    # -- what the loop reports -------------------------------------------------------------

    def start_iteration(self, iteration: int, history: list[Any]) -> None:
        self.iteration = iteration
        self.durations = [r.duration_s for r in history if r.duration_s]
        scores = [r for r in history if r.composite is not None]
        self.composite = scores[-1].composite if scores else None
        self.decision = _decision(scores[-1]) if scores else None
        self.iteration_started = self.clock()

    def start_phase(self, phase: str) -> None:
        self.phase, self.detail, self.done, self.total = phase, "", None, None
        self._stage, self._rate_from = "", (self.clock(), 0)
        self._last_step = self.clock()
        self.update(force=True)

    def steps(self, done: int, total: int, detail: str = "", stage: str = "") -> None:
        """``done`` of ``total`` units of the current phase (scenarios, training steps);
        a new ``stage`` (SFT, then GRPO) restarts the count and the rate."""
        if stage != self._stage or self.done is None or done < self.done:
            # Counted from the last report of the stage before (or the phase's start).
            self._stage, self._rate_from = stage, (self._last_step, 0)
        self._last_step = self.clock()
        self.done, self.total, self.detail = done, total, detail
        self.update(force=done >= total)

    def job_line(self, line: str) -> None:
        """A training job's output line: its progress lines move the training steps."""
        fields = parse_job_line(line)
        if not fields:
            return
        try:
            done, total = int(fields["step"]), int(fields["total"])
        except (KeyError, ValueError):
            return
        stage = fields.get("phase", "train")
        shown = " ".join(f"{k}={fields[k]}" for k in ("loss", "reward") if k in fields)
        self.steps(done, total, f"{stage} {shown}".strip(), stage)

    def finished_iteration(self, composite: float | None, seconds: float,
                           record: Any = None) -> None:
        self.composite = composite
        self.decision = _decision(record) if record is not None else None
        self.durations.append(seconds)

    # -- estimates ---------------------------------------------------------------------------

    def phase_eta(self) -> float | None:
        """Seconds left in the current stage of the phase, at its rate so far."""
        since, base = self._rate_from
        if not self.done or not self.total or self.done <= base:
            return None
        return (self.clock() - since) / (self.done - base) * (self.total - self.done)

    def loop_eta(self) -> float | None:
        """Seconds until the budget is spent, at the pace so far (None before one
        iteration finished)."""
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        current = max(mean - (self.clock() - self.iteration_started), self.phase_eta() or 0.0)
        return current + mean * max(0, self.max_iterations - self.iteration)

    # -- showing -----------------------------------------------------------------------------

    def line(self) -> str:
        parts = [f"iteration {self.iteration}/{self.max_iterations}", self.phase]
        if self.total:
            parts.append(f"{self.done}/{self.total}" + (f" {self.detail}" if self.detail else ""))
        if self.decision is not None:
            parts.append(f"{self.decision[0]} {self.decision[1]:.3f}")
        if self.composite is not None:
            parts.append(f"composite {self.composite:.3f}")
        phase_eta = self.phase_eta()
        if phase_eta is not None:
            parts.append(f"phase ETA {duration(phase_eta)}")
        loop_eta = self.loop_eta()
        parts.append(f"loop ETA ≤ {duration(loop_eta)}" if loop_eta is not None
                     else "loop ETA after iteration 1")
        return " · ".join(parts)

    def update(self, force: bool = False) -> None:
        now = self.clock()
        if force or now - self._last_emitted >= 1.0:
            self._last_emitted = now
            self.emit({"event": "progress", "iteration": self.iteration, "phase": self.phase,
                       "done": self.done, "total": self.total, "detail": self.detail,
                       "composite": self.composite,
                       "decision_metric": self.decision[0] if self.decision else None,
                       "decision": self.decision[1] if self.decision else None,
                       "phase_eta_s": _round(self.phase_eta()),
                       "loop_eta_s": _round(self.loop_eta())})
        if self.stream is None or (not force and now - self._last_shown < self.interval_s):
            return
        self._last_shown = now
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """End the redrawn line before other output (a terminal only)."""
        if self.stream is not None and self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _decision(record: Any) -> tuple[str, float] | None:
    metric, value = getattr(record, "decision_metric", None), getattr(record, "decision", None)
    return (metric, value) if metric and value is not None else None
