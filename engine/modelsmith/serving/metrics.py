"""Live metrics of the serving fleet, aggregated into ``MetricsObserved`` events per window
(never one event per request): per specialist, version and stage, the requests, latency
p50/p95, error rate and the mean feedback score (``score_mean``, what the rollback policy
and the stage floors read); for a shadow, how often its answer agreed with the one
returned (``agreement_rate``). ``prometheus()`` renders the running totals as Prometheus text.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: Response ids remembered for feedback (oldest forgotten first).
REMEMBERED = 100_000


@dataclass
class _Window:
    started: datetime
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    agreements: list[bool] = field(default_factory=list)  # shadow answers == live answers


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class LiveMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str, str], _Window] = {}
        self._responses: OrderedDict[str, tuple[str, str, str]] = OrderedDict()
        self.totals: dict[tuple[str, str, str], dict[str, float]] = {}

    def _window(self, key: tuple[str, str, str]) -> _Window:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(datetime.now(UTC))
        return window

    def request(self, response_id: str, specialist: str, version: str, stage: str,
                latency_ms: float, error: bool = False) -> None:
        key = (specialist, version, stage)
        with self._lock:
            window = self._window(key)
            window.requests += 1
            window.errors += int(error)
            window.latencies_ms.append(latency_ms)
            totals = self.totals.setdefault(key, {"requests": 0, "errors": 0,
                                                  "feedback": 0, "score_sum": 0.0})
            totals["requests"] += 1
            totals["errors"] += int(error)
            self._responses[response_id] = key
            while len(self._responses) > REMEMBERED:
                self._responses.popitem(last=False)

    def shadow(self, specialist: str, version: str, latency_ms: float, agree: bool,
               error: bool = False) -> None:
        """A shadow's answer to a mirrored request: whether it agreed with the live one."""
        with self._lock:
            window = self._window((specialist, version, "shadow"))
            window.requests += 1
            window.errors += int(error)
            window.latencies_ms.append(latency_ms)
            window.agreements.append(agree)

    def feedback(self, response_id: str, score: float) -> tuple[str, str, str] | None:
        """Record a score in [0, 1] for an earlier response; its key, or None if unknown."""
        with self._lock:
            key = self._responses.get(response_id)
            if key is None:
                return None
            self._window(key).scores.append(score)
            totals = self.totals[key]
            totals["feedback"] += 1
            totals["score_sum"] += score
            return key

    def flush(self, store: Any, actor: str = "serve") -> list[Any]:
        """Append one ``MetricsObserved`` per key with traffic since the last flush."""
        from modelsmith.events.store import append_observation
        from modelsmith.events.types import Event, MetricsObserved

        with self._lock:
            windows, self._windows = self._windows, {}
        now = datetime.now(UTC)
        recorded = []
        for (specialist, version, stage), w in sorted(windows.items()):
            if not w.requests and not w.scores:
                continue
            metrics = {"error_rate": w.errors / w.requests if w.requests else 0.0}
            if w.latencies_ms:
                metrics["latency_p50_ms"] = _percentile(w.latencies_ms, 50)
                metrics["latency_p95_ms"] = _percentile(w.latencies_ms, 95)
            if w.scores:
                metrics["score_mean"] = sum(w.scores) / len(w.scores)
            if w.agreements:
                metrics["agreement_rate"] = sum(w.agreements) / len(w.agreements)
            payload = MetricsObserved(version=version, stage=stage, window_start=w.started,
                                      window_end=now, requests=w.requests, metrics=metrics)
            recorded += append_observation(store, specialist, [Event.new(payload, actor=actor)])
        return recorded

    def prometheus(self) -> str:
        lines = ["# TYPE modelsmith_requests_total counter",
                 "# TYPE modelsmith_errors_total counter",
                 "# TYPE modelsmith_feedback_score_mean gauge"]
        with self._lock:
            items = sorted(self.totals.items())
        for (specialist, version, stage), t in items:
            labels = f'specialist="{specialist}",version="{version}",stage="{stage}"'
            lines.append(f"modelsmith_requests_total{{{labels}}} {t['requests']:g}")
            lines.append(f"modelsmith_errors_total{{{labels}}} {t['errors']:g}")
            if t["feedback"]:
                lines.append(f"modelsmith_feedback_score_mean{{{labels}}} "
                             f"{t['score_sum'] / t['feedback']:.6g}")
        return "\n".join(lines) + "\n"
