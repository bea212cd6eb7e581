"""Live metrics of the serving fleet, aggregated into ``MetricsObserved`` events per window
(never one event per request): per specialist, version and stage --

- ``requests``, ``latency_p50_ms``, ``latency_p95_ms``, ``error_rate``;
- ``format_rate``: answers that honour the task's output contract;
- ``score_mean``: the mean feedback score (``POST /v1/feedback``);
- ``rubric_score`` and ``pass_rate``: for requests that carried a reference, the mean rubric
  score and the share that passed, by the eval's scorer;
- for a shadow, ``agreement_rate``: how often its answer said the same as the one returned
  (the same label for a label task, else the same text).

A shadow that answers while its specialist bootstraps (nothing in production or canary; a
replayed request with a reference, policy ``bootstrap: replay``) is counted under the same
(specialist, version, ``"shadow"``) key as its mirrored answers -- requests, latency,
format, rubric -- and the event's ``bootstrap`` says how many of its requests those were.

``format_rate``, ``score_mean``, ``pass_rate`` and ``rubric_score`` are what the stage floors
and the rollback policy can name. ``prometheus()`` renders the running totals as Prometheus text.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modelsmith.evaluation.stats import percentile

#: Response ids remembered for feedback (oldest forgotten first): the ids this server
#: issued, each with what answered it and the feedback it got (counted once).
REMEMBERED = 100_000


@dataclass
class _Window:
    started: datetime
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # feedback
    formats: list[bool] = field(default_factory=list)  # answers honouring the contract
    rubric: list[float] = field(default_factory=list)  # rubric scores against a reference
    passes: list[bool] = field(default_factory=list)
    agreements: list[bool] = field(default_factory=list)  # shadow said what live said
    bootstrap: int = 0  # answers a shadow gave while bootstrapping (of ``requests``)


class LiveMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str, str], _Window] = {}
        # response id -> [its (specialist, version, stage), its feedback score or None]
        self._responses: OrderedDict[str, list[Any]] = OrderedDict()
        self.totals: dict[tuple[str, str, str], dict[str, float]] = {}

    def _window(self, key: tuple[str, str, str]) -> _Window:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(datetime.now(UTC))
        return window

    def _totals(self, key: tuple[str, str, str]) -> dict[str, float]:
        return self.totals.setdefault(key, {"requests": 0, "errors": 0, "feedback": 0,
                                            "score_sum": 0.0, "scored": 0,
                                            "rubric_sum": 0.0, "passed": 0,
                                            "bootstrap": 0})

    def _answered(self, key: tuple[str, str, str], latency_ms: float, error: bool,
                  format_ok: bool | None) -> _Window:
        """Count one answer (live or shadow) in its window and totals; under the lock."""
        window = self._window(key)
        window.requests += 1
        window.errors += int(error)
        window.latencies_ms.append(latency_ms)
        if format_ok is not None:
            window.formats.append(format_ok)
        totals = self._totals(key)
        totals["requests"] += 1
        totals["errors"] += int(error)
        return window

    def request(self, response_id: str, specialist: str, version: str, stage: str,
                latency_ms: float, error: bool = False, format_ok: bool | None = None,
                bootstrap: bool = False) -> None:
        """An answer returned to its caller; ``bootstrap``: given by a shadow while its
        specialist bootstraps (``stage`` is then ``"shadow"``)."""
        key = (specialist, version, stage)
        with self._lock:
            window = self._answered(key, latency_ms, error, format_ok)
            if bootstrap:
                window.bootstrap += 1
                self._totals(key)["bootstrap"] += 1
            self._responses[response_id] = [key, None]
            while len(self._responses) > REMEMBERED:
                self._responses.popitem(last=False)

    def first_token(self, key: tuple[str, str, str], seconds: float) -> None:
        """Time to a streamed answer's first token (a histogram in the asgi branch)."""

    def rubric(self, key: tuple[str, str, str], score: float | None,
               passed: bool | None) -> None:
        """The rubric score of an answer whose request carried a reference."""
        if score is None:
            return
        with self._lock:
            window = self._window(key)
            window.rubric.append(score)
            window.passes.append(bool(passed))
            totals = self._totals(key)
            totals["scored"] += 1
            totals["rubric_sum"] += score
            totals["passed"] += int(bool(passed))

    def shadow(self, specialist: str, version: str, latency_ms: float, agree: bool,
               error: bool = False, scored: Any = None) -> None:
        """A shadow's answer to a mirrored request: whether it agreed with the live one, and
        its :class:`~.live_scoring.LiveScore` when it answered."""
        key = (specialist, version, "shadow")
        with self._lock:
            window = self._answered(key, latency_ms, error,
                                    scored.format_ok if scored is not None else None)
            window.agreements.append(agree)
        if scored is not None:
            self.rubric(key, scored.score, scored.passed)

    def feedback(self, response_id: str, score: float
                 ) -> tuple[tuple[str, str, str], float | None] | None:
        """Record a score in [0, 1] for an earlier response, once: its key and ``None`` when
        counted now; its key and the score already counted when it had feedback (this one
        is not counted); ``None`` when this server issued no such response (or it is older
        than the last :data:`REMEMBERED`)."""
        with self._lock:
            issued = self._responses.get(response_id)
            if issued is None:
                return None
            key, counted = issued
            if counted is not None:
                return key, counted
            issued[1] = score
            self._window(key).scores.append(score)
            totals = self.totals[key]
            totals["feedback"] += 1
            totals["score_sum"] += score
            return key, None

    def flush(self, store: Any, actor: str = "serve") -> list[Any]:
        """Append one ``MetricsObserved`` per key with traffic since the last flush, in one
        append (one commit) per specialist."""
        from modelsmith.events.store import append_observation
        from modelsmith.events.types import Event, MetricsObserved

        with self._lock:
            windows, self._windows = self._windows, {}
        now = datetime.now(UTC)
        events: dict[str, list[Any]] = {}
        for (specialist, version, stage), w in sorted(windows.items()):
            if not w.requests and not w.scores and not w.rubric:
                continue
            metrics = {"error_rate": w.errors / w.requests if w.requests else 0.0}
            if w.latencies_ms:
                metrics["latency_p50_ms"] = percentile(w.latencies_ms, 50)
                metrics["latency_p95_ms"] = percentile(w.latencies_ms, 95)
            if w.formats:
                metrics["format_rate"] = sum(w.formats) / len(w.formats)
            if w.scores:
                metrics["score_mean"] = sum(w.scores) / len(w.scores)
            if w.rubric:
                metrics["rubric_score"] = sum(w.rubric) / len(w.rubric)
                metrics["pass_rate"] = sum(w.passes) / len(w.passes)
            if w.agreements:
                metrics["agreement_rate"] = sum(w.agreements) / len(w.agreements)
            payload = MetricsObserved(version=version, stage=stage, window_start=w.started,
                                      window_end=now, requests=w.requests, metrics=metrics,
                                      bootstrap=w.bootstrap)
            events.setdefault(specialist, []).append(Event.new(payload, actor=actor))
        return [recorded for specialist, batch in events.items()
                for recorded in append_observation(store, specialist, batch)]

    def prometheus(self) -> str:
        """The running totals in the Prometheus text format, one group per metric family."""
        with self._lock:
            items = sorted((key, dict(t)) for key, t in self.totals.items())
        families: list[tuple[str, str, str, Any]] = [
            ("modelsmith_requests_total", "counter", "Answers given (shadow answers included).",
             lambda t: t["requests"]),
            ("modelsmith_errors_total", "counter", "Answers that failed.",
             lambda t: t["errors"]),
            ("modelsmith_bootstrap_requests_total", "counter",
             "Answers a shadow gave while its specialist bootstrapped (replayed requests).",
             lambda t: t["bootstrap"] or None),
            ("modelsmith_feedback_score_mean", "gauge", "Mean feedback score.",
             lambda t: t["score_sum"] / t["feedback"] if t["feedback"] else None),
            ("modelsmith_rubric_score_mean", "gauge",
             "Mean rubric score of answers to requests with a reference.",
             lambda t: t["rubric_sum"] / t["scored"] if t["scored"] else None),
            ("modelsmith_rubric_pass_rate", "gauge",
             "Share of answers to requests with a reference that passed the rubric.",
             lambda t: t["passed"] / t["scored"] if t["scored"] else None),
        ]
        lines = []
        for name, kind, help_text, value in families:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            for (specialist, version, stage), totals in items:
                got = value(totals)
                if got is not None:
                    labels = f'specialist="{specialist}",version="{version}",stage="{stage}"'
                    shown = str(int(got)) if float(got).is_integer() else f"{got:.6g}"
                    lines.append(f"{name}{{{labels}}} {shown}")
        return "\n".join(lines) + "\n"
