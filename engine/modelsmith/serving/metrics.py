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
and the rollback policy can name.

Each :class:`LiveMetrics` also keeps a ``prometheus_client`` registry of its own
(``registry``; ``GET /metrics`` serves it, :meth:`LiveMetrics.prometheus` renders it), every
family labelled specialist, version and stage: the histograms
``modelsmith_request_duration_seconds`` and ``modelsmith_first_token_seconds``; the
counters ``modelsmith_requests_total``, ``modelsmith_errors_total``,
``modelsmith_feedback_total`` and ``modelsmith_bootstrap_requests_total``; the running means
``modelsmith_feedback_score_mean``, ``modelsmith_rubric_score_mean`` and
``modelsmith_rubric_pass_rate``; and ``modelsmith_window_<metric>`` gauges holding the
ratios of the last window recorded (``error_rate``, ``format_rate``, ``score_mean``,
``rubric_score``, ``pass_rate``, ``agreement_rate``). prometheus_client is imported when a
``LiveMetrics`` is made (the ``serve`` extra), never by ``import modelsmith``.
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


#: Buckets (seconds) of the request-duration and first-token histograms.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: The window ratios that get a ``modelsmith_window_<name>`` gauge.
WINDOW_GAUGES = ("error_rate", "format_rate", "score_mean", "rubric_score", "pass_rate",
                 "agreement_rate")
_LABELS = ("specialist", "version", "stage")


class _Families:
    """The Prometheus families of one :class:`LiveMetrics`, in a registry of their own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.duration = Histogram("modelsmith_request_duration_seconds",
                                  "Time to answer a request (shadow answers included).",
                                  _LABELS, buckets=BUCKETS, registry=r)
        self.first_token = Histogram("modelsmith_first_token_seconds",
                                     "Time to the first streamed token.", _LABELS,
                                     buckets=BUCKETS, registry=r)
        self.requests = Counter("modelsmith_requests", "Answers given (shadow answers "
                                "included).", _LABELS, registry=r)
        self.errors = Counter("modelsmith_errors", "Answers that failed.", _LABELS,
                              registry=r)
        self.feedback = Counter("modelsmith_feedback", "Feedback scores counted.", _LABELS,
                                registry=r)
        self.bootstrap = Counter("modelsmith_bootstrap_requests", "Answers a shadow gave "
                                 "while its specialist bootstrapped (replayed requests).",
                                 _LABELS, registry=r)
        self.score_mean = Gauge("modelsmith_feedback_score_mean", "Mean feedback score.",
                                _LABELS, registry=r)
        self.rubric_mean = Gauge("modelsmith_rubric_score_mean", "Mean rubric score of "
                                 "answers to requests with a reference.", _LABELS, registry=r)
        self.pass_rate = Gauge("modelsmith_rubric_pass_rate", "Share of answers to requests "
                               "with a reference that passed the rubric.", _LABELS,
                               registry=r)
        self.window = {name: Gauge(f"modelsmith_window_{name}", f"The {name} of the last "
                                   "window recorded (MetricsObserved).", _LABELS, registry=r)
                       for name in WINDOW_GAUGES}


class LiveMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str, str], _Window] = {}
        # response id -> [its (specialist, version, stage), its feedback score or None]
        self._responses: OrderedDict[str, list[Any]] = OrderedDict()
        self.totals: dict[tuple[str, str, str], dict[str, float]] = {}
        self._families = _Families()
        #: The Prometheus registry ``GET /metrics`` serves.
        self.registry = self._families.registry

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
        families = self._families
        families.requests.labels(*key).inc()
        families.duration.labels(*key).observe(latency_ms / 1000)
        if error:
            families.errors.labels(*key).inc()
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
                self._families.bootstrap.labels(*key).inc()
            self._responses[response_id] = [key, None]
            while len(self._responses) > REMEMBERED:
                self._responses.popitem(last=False)

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
            self._families.rubric_mean.labels(*key).set(totals["rubric_sum"] / totals["scored"])
            self._families.pass_rate.labels(*key).set(totals["passed"] / totals["scored"])

    def first_token(self, key: tuple[str, str, str], seconds: float) -> None:
        """The time to the first streamed token of an answer ``key`` gave."""
        self._families.first_token.labels(*key).observe(seconds)

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
            self._families.feedback.labels(*key).inc()
            self._families.score_mean.labels(*key).set(totals["score_sum"] / totals["feedback"])
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
            for name, gauge in self._families.window.items():
                if name in metrics:
                    gauge.labels(specialist, version, stage).set(metrics[name])
            payload = MetricsObserved(version=version, stage=stage, window_start=w.started,
                                      window_end=now, requests=w.requests, metrics=metrics,
                                      bootstrap=w.bootstrap)
            events.setdefault(specialist, []).append(Event.new(payload, actor=actor))
        return [recorded for specialist, batch in events.items()
                for recorded in append_observation(store, specialist, batch)]

    def prometheus(self) -> str:
        """The registry in the Prometheus text format (what ``GET /metrics`` serves)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode("utf-8")
