"""``modelsmith replay``: recorded or synthetic traffic sent through a running ``serve``.

Requests come from a JSONL file -- one chat completion body a line, ``{"model",
"messages", optional "reference", "user", "metadata", "feedback", and any other OpenAI chat
field}`` -- or from a specialist's eval suite (each scenario's input as the user message,
its expected answer as the ``reference``). Everything is checked before anything is sent:
every bad line is named by its line number and field (:class:`ReplayInputError`, exit 2),
and the ``model`` of every line must be one the server lists at ``GET /v1/models``.

Then a pool of ``concurrency`` workers sends them, paced to ``rate`` requests per second
overall (no catching up in bursts when the server fell behind: the rate is a ceiling).
After each answer a feedback score may follow (``POST /v1/feedback``): the line's recorded
``feedback``, a fixed number, or whether the answer agrees with the line's ``reference``
(:class:`ReferenceCheck`), optionally only for answers a given stage served. A server that
goes away (connection refused or reset) ends the run early; the summary says what was sent,
answered and not sent. The HTTP client is the standard library's: replaying needs no
dependency beyond the core install.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from modelsmith.errors import EXIT_INVALID, ModelsmithError
from modelsmith.evaluation.criteria import extract_label
from modelsmith.evaluation.stats import percentile

if TYPE_CHECKING:
    from modelsmith.specs import Repository

    from .live_scoring import LiveScorer

#: The largest request body ``serve`` accepts (its ``MAX_BODY``); a longer line is refused
#: before anything is sent, and is never read into memory whole.
MAX_LINE = 1 << 20
#: Suite splits a replay can send (``all``: core, dev and held-out; never the training pool).
SPLITS = ("core", "dev", "heldout", "all")
#: Feedback modes besides a fixed number: each line's recorded ``feedback`` (``line``, the
#: default), none at all, or agreement with the line's ``reference``.
FEEDBACK_MODES = ("line", "none", "reference")
#: Problems listed in the error message (all are kept on the exception).
SHOWN_ISSUES = 100

Progress = Callable[[int, int], None]


class ReplayError(ModelsmithError):
    """The replay cannot start: the server cannot be reached, refuses the token, or does not
    answer like ``modelsmith serve``."""


@dataclass(frozen=True)
class ReplayIssue:
    """One problem in the replay's input: ``source:line: field: message``."""

    source: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return ": ".join(p for p in (where, self.field, self.message) if p)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "line": self.line, "field": self.field,
                "message": self.message}


class ReplayInputError(ReplayError):
    """The requests (or the options) are invalid; carries every problem found. Nothing was
    sent."""

    exit_code = EXIT_INVALID

    def __init__(self, issues: Sequence[ReplayIssue], note: str | None = None) -> None:
        self.issues = list(issues)
        self.note = note
        super().__init__("\n".join(str(i) for i in self.issues))

    def user_lines(self) -> list[str]:
        lines = [f"error: {issue}" for issue in self.issues[:SHOWN_ISSUES]]
        if len(self.issues) > SHOWN_ISSUES:
            lines.append(f"... and {len(self.issues) - SHOWN_ISSUES} more problems")
        if self.note:
            lines.append(self.note)
        lines.append(f"{len(self.issues)} problem{'s' if len(self.issues) != 1 else ''}; "
                     "nothing was sent")
        return lines


@dataclass(frozen=True)
class ReplayRequest:
    """One request to send: the chat completion ``body`` as POSTed, and what follows it."""

    source: str  # the file (or "suite NAME")
    line: int | None  # 1-based line in the file; None for a suite's scenario
    body: dict[str, Any]
    feedback: float | None = None  # a recorded user rating, sent after the answer
    label: str = ""  # how the request is named in messages (file:line, scenario id)

    @property
    def model(self) -> Any:
        return self.body.get("model")

    @property
    def reference(self) -> Any:
        return self.body.get("reference")


# -- reading requests ---------------------------------------------------------------------


def feedback_mode(value: str | float) -> str | float:
    """``line``, ``none``, ``reference`` or a number in [0, 1] (``--feedback``), checked."""
    number: Any = value
    if isinstance(value, str):
        text = value.strip().casefold()
        if text in FEEDBACK_MODES:
            return text
        try:
            number = float(text)
        except ValueError:
            number = math.nan
    if isinstance(number, bool) or not isinstance(number, int | float) \
            or not 0.0 <= number <= 1.0:
        raise ReplayInputError([ReplayIssue(
            "--feedback", None, None,
            f"{value!r} is not line, none, reference or a number from 0 to 1")])
    return float(number)


def _lines(stream: IO[bytes], limit: int) -> Iterator[tuple[int, bytes | None, int]]:
    """``(number, line, size)`` for each line; ``line`` is None for one over ``limit``
    bytes, which is skipped without being held in memory."""
    number = 0
    while True:
        chunk = stream.readline(limit + 1)
        if not chunk:
            return
        number += 1
        if len(chunk) <= limit or chunk.endswith(b"\n"):
            yield number, chunk, len(chunk.rstrip(b"\r\n"))
            continue
        size = len(chunk)
        while not chunk.endswith(b"\n"):
            chunk = stream.readline(1 << 16)
            if not chunk:
                break
            size += len(chunk)
        yield number, None, size - (1 if chunk.endswith(b"\n") else 0)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _is_score(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, int | float)
            and 0.0 <= value <= 1.0)


def read_requests(stream: IO[bytes], source: str, *, model: str | None = None,
                  max_line: int = MAX_LINE) -> tuple[list[ReplayRequest], list[ReplayIssue]]:
    """The requests of a JSONL stream and every problem found in it, by line. ``model``
    replaces each line's ``model``. Blank lines are skipped; the server's checks of a body
    are made here too, so that a bad line is found before anything is sent."""
    requests: list[ReplayRequest] = []
    issues: list[ReplayIssue] = []
    seen = 0
    for number, raw, size in _lines(stream, max_line):
        def bad(fld: str | None, message: str, number: int = number) -> None:
            issues.append(ReplayIssue(source, number, fld, message))

        if raw is None:
            bad(None, f"the line has {size} bytes; the server refuses bodies over "
                      f"{max_line} bytes (HTTP 413)")
            seen += 1
            continue
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            bad(None, f"not UTF-8 text (byte {exc.start + 1})")
            seen += 1
            continue
        if not text.strip():
            continue
        seen += 1
        try:
            body = json.loads(text, parse_constant=_reject_constant)
        except ValueError as exc:
            where = f" (column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
            bad(None, f"not JSON: {getattr(exc, 'msg', exc)}{where}")
            continue
        except RecursionError:
            bad(None, "not JSON this replay reads: nested too deeply")
            continue
        if not isinstance(body, dict):
            bad(None, f"must be a JSON object (a chat completion request), not "
                      f"{_kind(body)}")
            continue
        found = check_body(body, has_model=model is not None)
        for fld, message in found:
            bad(fld, message)
        if found:
            continue
        recorded = body.pop("feedback", None)
        if model is not None:
            body["model"] = model
        requests.append(ReplayRequest(source, number, body,
                                      None if recorded is None else float(recorded),
                                      f"{source}:{number}"))
    if not seen:
        issues.append(ReplayIssue(source, None, None, "no requests: the file is empty"))
    return requests, issues


def _kind(value: Any) -> str:
    names = {list: "a list", str: "a string", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def check_body(body: dict[str, Any], *, has_model: bool = False) -> list[tuple[str, str]]:
    """``(field, problem)`` for each thing in a request line the server (or the replay)
    would refuse; ``[]`` when it can be sent. ``has_model``: ``--model`` replaces it."""
    problems: list[tuple[str, str]] = []
    model = body.get("model")
    if not has_model:
        if "model" not in body:
            problems.append(("model", "missing: a specialist's name, or auto"))
        elif not isinstance(model, str) or not model.strip():
            problems.append(("model", f"must be a specialist's name or auto, not "
                                      f"{_kind(model)}"))
    messages = body.get("messages")
    if "messages" not in body:
        problems.append(("messages", "missing: a non-empty list of {role, content}"))
    elif not isinstance(messages, list) or not messages:
        problems.append(("messages", "must be a non-empty list of {role, content}, not "
                                     f"{'an empty list' if messages == [] else _kind(messages)}"))
    else:
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                problems.append((f"messages[{i}]", "must be an object with role and "
                                                   f"content, not {_kind(message)}"))
                continue
            role = message.get("role")
            if not isinstance(role, str) or not role:
                problems.append((f"messages[{i}].role",
                                 "missing" if role is None else "must be a non-empty string"))
            if not isinstance(message.get("content"), str):
                problems.append((f"messages[{i}].content",
                                 "missing" if message.get("content") is None
                                 else "must be a string"))
        if not problems and not any(m.get("role") == "user" for m in messages):
            problems.append(("messages", "has no user message (role: user)"))
    if "feedback" in body and body["feedback"] is not None \
            and not _is_score(body["feedback"]):
        problems.append(("feedback", f"must be a number from 0 to 1, not "
                                     f"{json.dumps(body['feedback'])[:40]}"))
    if "user" in body and body["user"] is not None and not isinstance(body["user"], str):
        problems.append(("user", f"must be a string, not {_kind(body['user'])}"))
    meta = body.get("metadata")
    if meta is not None and not (isinstance(meta, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        problems.append(("metadata", "must map strings to strings"))
    if body.get("stream") not in (None, False):
        problems.append(("stream", "replay reads whole answers: leave it out or set it "
                                   "to false"))
    return problems


def suite_requests(repo: Repository, specialist: str, split: str = "core", *,
                   model: str | None = None) -> list[ReplayRequest]:
    """A specialist's eval scenarios as requests: the scenario's input as the user message,
    its expected answer as the ``reference``, and ``replay-<scenario id>`` as the ``user``
    (a stable key per scenario, so a canary gets its share of them). ``split``: core, dev,
    heldout, or all three."""
    spec = repo.specialists.get(specialist)
    source = f"--suite {specialist}"
    if spec is None:
        known = ", ".join(sorted(repo.specialists)) or "none"
        raise ReplayInputError([ReplayIssue(source, None, None,
                                            f"no specialist {specialist!r} in {repo.root} "
                                            f"(specialists: {known})")])
    if split not in SPLITS:
        raise ReplayInputError([ReplayIssue("--split", None, None,
                                            f"{split!r} is not one of {', '.join(SPLITS)}")])
    suite = repo.suite_for(spec)
    chosen = {"core": suite.core, "dev": suite.dev, "heldout": suite.heldout,
              "all": suite.core + suite.dev + suite.heldout}[split]
    if not chosen:
        raise ReplayInputError([ReplayIssue(source, None, None,
                                            f"the suite {suite.name} has no {split} "
                                            "scenarios")])
    requests = []
    for scenario in chosen:
        body: dict[str, Any] = {"model": model or specialist,
                                "messages": [{"role": "user", "content": scenario.input}],
                                "user": f"replay-{scenario.id}"}
        if scenario.expected is not None:
            body["reference"] = scenario.expected
        requests.append(ReplayRequest(f"suite {suite.name}", None, body,
                                      label=f"scenario {scenario.id}"))
    return requests


def check_models(requests: Sequence[ReplayRequest], known: Sequence[str], url: str, *,
                 override: str | None = None) -> list[ReplayIssue]:
    """Each request whose ``model`` the server does not serve (``known``: its
    ``/v1/models``, which lists ``auto`` too); one issue for a wrong ``--model``."""
    served = ", ".join(known)
    if override is not None:
        if override in known:
            return []
        return [ReplayIssue("--model", None, None,
                            f"{override!r} is not served at {url} (it serves {served})")]
    # A suite's requests have no lines: one issue says it for all of them.
    return list(dict.fromkeys(
        ReplayIssue(r.source, r.line, "model",
                    f"{r.model!r} is not served at {url} (it serves {served})")
        for r in requests if r.model not in known))


# -- the HTTP client ----------------------------------------------------------------------


class ConnectionLost(Exception):
    """The server could not be reached, or dropped the connection."""


class Client:
    """Requests to one ``modelsmith serve`` (stdlib ``http.client``; one connection per
    request, as the server closes each). ``url`` is the server's base, with or without its
    ``/v1``."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 120.0) -> None:
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ReplayInputError([ReplayIssue("--url", None, None,
                                                f"{url!r} is not an http:// or https:// URL "
                                                "of a running `modelsmith serve`")])
        try:
            self.port = parts.port
        except ValueError:
            raise ReplayInputError([ReplayIssue("--url", None, None,
                                                f"{url!r} has a bad port")]) from None
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        prefix = parts.path.rstrip("/")
        self.prefix = prefix[:-3] if prefix.endswith("/v1") else prefix
        self.url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, self.prefix, "", ""))
        self.token = token
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """``(status, JSON body or None)``. Raises :class:`TimeoutError` past the timeout
        and :class:`ConnectionLost` when the server is gone."""
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = kind(self.host, self.port, timeout=self.timeout_s)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, self.prefix + path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except TimeoutError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise ConnectionLost(_describe(exc)) from None
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError):
            return response.status, None

    def models(self) -> list[str]:
        """What the server serves (``GET /v1/models``); :class:`ReplayError` when it cannot
        be asked."""
        try:
            status, body = self.call("GET", "/v1/models")
        except TimeoutError:
            raise ReplayError(f"{self.url} did not answer GET /v1/models within "
                              f"{self.timeout_s:g} s") from None
        except ConnectionLost as exc:
            raise ReplayError(f"cannot reach {self.url}: {exc} (is `modelsmith serve` "
                              "running there?)") from None
        if status == 401:
            raise ReplayError(f"{self.url} wants a bearer token (401: "
                              f"{_message(body) or 'unauthorised'}); put it in the variable "
                              "--token-env names (MODELSMITH_SERVE_TOKEN by default)")
        models = body.get("data") if isinstance(body, dict) else None
        if status != 200 or not isinstance(models, list):
            raise ReplayError(f"{self.url}/v1/models answered {status} "
                              f"{_message(body) or '(not a model list)'}: is this "
                              "`modelsmith serve`?")
        return [m["id"] for m in models if isinstance(m, dict) and isinstance(m.get("id"), str)]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _message(body: Any) -> str | None:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return None


# -- feedback by reference ----------------------------------------------------------------


def normalised(value: Any) -> str:
    """Text up to case and whitespace; a non-string as its JSON."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return " ".join(text.casefold().split())


class ReferenceCheck:
    """Whether an answer agrees with its request's ``reference``: 1.0 or 0.0.

    With the repository's specs (``repo``) and a specialist it knows: for a label task, the
    same label as the contract reads labels (the first word, case-blind); otherwise the
    suite's rubric passes, by the eval's scorer (:class:`~.live_scoring.LiveScorer`, what
    the server's ``pass_rate`` counts), unless the rubric needs a judge model. Else: the
    same text up to case and whitespace (a JSON reference: the answer parses to it)."""

    def __init__(self, repo: Repository | None = None) -> None:
        self.repo = repo
        self._scorers: dict[str, LiveScorer | None] = {}
        self._lock = threading.Lock()

    def _scorer(self, specialist: str) -> LiveScorer | None:
        with self._lock:
            if specialist not in self._scorers:
                scorer = None
                if self.repo is not None and specialist in self.repo.specialists:
                    from .live_scoring import LiveScorer

                    scorer = LiveScorer(self.repo, specialist, lambda: None)
                    if scorer.labels is None and any(c.kind == "judge"
                                                     for c in scorer.rubric):
                        scorer = None  # no model is loaded to grade a replay
                self._scorers[specialist] = scorer
            return self._scorers[specialist]

    def __call__(self, specialist: str, answer: str, reference: Any) -> float:
        scorer = self._scorer(specialist)
        if scorer is not None and scorer.labels is not None:
            expected = reference if isinstance(reference, str) else json.dumps(reference)
            return float(extract_label(answer).casefold()
                         == extract_label(expected).casefold() != "")
        if scorer is not None:
            return float(bool(scorer.score(answer, reference).passed))
        if not isinstance(reference, str):
            try:
                return float(json.loads(answer) == reference)
            except ValueError:
                pass
        return float(normalised(answer) == normalised(reference))


# -- sending ------------------------------------------------------------------------------


@dataclass
class ReplaySummary:
    """What a replay did. ``stopped`` says why it ended early (the server went away, or it
    was interrupted); ``not_sent`` counts the requests it never sent."""

    url: str
    requests: int  # to send (after --limit)
    concurrency: int
    rate: float | None
    sent: int = 0
    ok: int = 0
    duration_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    errors: dict[tuple[str, int | None, str | None], list[Any]] = field(default_factory=dict)
    served: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    feedback_mode: str | float = "line"
    feedback_stage: str | None = None
    feedback_sent: int = 0
    feedback_failed: int = 0
    feedback_scores: list[float] = field(default_factory=list, repr=False)
    feedback_error: str | None = None
    stopped: str | None = None

    @property
    def failed(self) -> int:
        return self.sent - self.ok

    @property
    def not_sent(self) -> int:
        return self.requests - self.sent

    @property
    def clean(self) -> bool:
        """Everything was sent and answered, and every feedback landed."""
        return self.ok == self.requests and not self.feedback_failed and not self.stopped

    def latency(self) -> dict[str, float | None]:
        return {f"p{q}": (round(percentile(self.latencies_ms, q), 2)
                          if self.latencies_ms else None) for q in (50, 90, 99)}

    def to_dict(self) -> dict[str, Any]:
        duration = self.duration_s
        mean = (sum(self.feedback_scores) / len(self.feedback_scores)
                if self.feedback_scores else None)
        return {
            "url": self.url,
            "requests": self.requests, "sent": self.sent, "ok": self.ok,
            "failed": self.failed, "not_sent": self.not_sent, "stopped": self.stopped,
            "duration_s": round(duration, 3),
            "requests_per_s": round(self.sent / duration, 2) if duration > 0 else None,
            "rate": self.rate, "concurrency": self.concurrency,
            "latency_ms": self.latency(),
            "errors": [{"kind": kind, "status": status, "code": code, "count": n,
                        "message": message}
                       for (kind, status, code), (n, message) in self.errors.items()],
            "served": [{"specialist": s, "version": v, "stage": st, "requests": n}
                       for (s, v, st), n in sorted(self.served.items())],
            "feedback": {"mode": self.feedback_mode, "stage": self.feedback_stage,
                         "sent": self.feedback_sent, "failed": self.feedback_failed,
                         "mean": None if mean is None else round(mean, 4),
                         "error": self.feedback_error},
        }


def check_options(concurrency: int, rate: float | None,
                  feedback: str | float) -> str | float:
    """Raise :class:`ReplayInputError` for a bad ``concurrency``, ``rate`` or
    ``feedback``; the feedback mode."""
    issues = []
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        issues.append(ReplayIssue("--concurrency", None, None, "must be at least 1"))
    if rate is not None and not (isinstance(rate, int | float) and 0 < rate < math.inf):
        issues.append(ReplayIssue("--rate", None, None,
                                  "must be a positive number of requests per second"))
    try:
        mode = feedback_mode(feedback)
    except ReplayInputError as exc:
        issues += exc.issues
    if issues:
        raise ReplayInputError(issues)
    return mode


class _Pacer:
    """Hands out send times ``1 / rate`` apart overall; a slot is never earlier than now,
    so a server that fell behind is not hit with a catching-up burst."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next: float | None = None
        self._lock = threading.Lock()

    def slot(self) -> float:
        with self._lock:
            now = time.monotonic()
            at = now if self._next is None else max(self._next, now)
            self._next = at + self.interval
            return at


class Replayer:
    """Sends ``requests`` through ``client`` and tallies what came back."""

    def __init__(self, client: Client, requests: Sequence[ReplayRequest], *,
                 concurrency: int = 4, rate: float | None = None,
                 feedback: str | float = "line", feedback_stage: str | None = None,
                 check: Callable[[str, str, Any], float] | None = None,
                 progress: Progress | None = None) -> None:
        self.feedback = check_options(concurrency, rate, feedback)
        self.client = client
        self.requests = list(requests)
        self.feedback_stage = feedback_stage
        self.check = check or ReferenceCheck()
        self.progress = progress
        self.summary = ReplaySummary(client.url, len(self.requests), concurrency, rate,
                                     feedback_mode=self.feedback,
                                     feedback_stage=feedback_stage)
        self._pacer = _Pacer(rate)
        self._next = 0
        self._done = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._first: float | None = None
        self._last: float | None = None

    def stop(self, reason: str) -> None:
        with self._lock:
            if self.summary.stopped is None:
                self.summary.stopped = reason
        self._stop.set()

    def run(self) -> ReplaySummary:
        """Send everything (or until the server goes away); the summary."""
        workers = min(self.summary.concurrency, len(self.requests)) or 1
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="replay")
        futures = [pool.submit(self._work) for _ in range(workers)]
        try:
            try:
                wait(futures)
            except KeyboardInterrupt:
                self.stop("interrupted")
                wait(futures)
        finally:
            pool.shutdown(wait=True)
        for future in futures:
            error = future.exception()
            if error is not None:  # a bug in the tally, not the server's doing
                raise error
        if self._first is not None and self._last is not None:
            self.summary.duration_s = max(0.0, self._last - self._first)
        return self.summary

    def _take(self) -> ReplayRequest | None:
        with self._lock:
            if self._stop.is_set() or self._next >= len(self.requests):
                return None
            request = self.requests[self._next]
            self._next += 1
            return request

    def _work(self) -> None:
        while (request := self._take()) is not None:
            delay = self._pacer.slot() - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            if self._stop.is_set():
                return
            with self._lock:
                self.summary.sent += 1
                if self._first is None:
                    self._first = time.monotonic()
            self._send(request)
            with self._lock:
                self._done += 1
                self._last = time.monotonic()
                if self.progress is not None:
                    self.progress(self._done, self.summary.requests)

    def _error(self, kind: str, status: int | None, code: str | None, message: str) -> None:
        with self._lock:
            entry = self.summary.errors.setdefault((kind, status, code), [0, message])
            entry[0] += 1

    def _send(self, request: ReplayRequest) -> None:
        started = time.monotonic()
        try:
            status, body = self.client.call("POST", "/v1/chat/completions", request.body)
        except TimeoutError:
            self._error("timeout", None, None,
                        f"no answer within {self.client.timeout_s:g} s")
            return
        except ConnectionLost as exc:
            self._error("connection", None, None, str(exc))
            self.stop(f"the server went away ({exc})")
            return
        latency_ms = (time.monotonic() - started) * 1000
        if status != 200:
            error = body.get("error") if isinstance(body, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            self._error("http", status, code if isinstance(code, str) else None,
                        _message(body) or f"HTTP {status}")
            return
        answer = _answer(body)
        if answer is None:
            self._error("bad_response", 200, None,
                        "a 200 answer that is not a chat completion from modelsmith serve")
            return
        response_id, specialist, version, stage, text = answer
        with self._lock:
            self.summary.ok += 1
            self.summary.latencies_ms.append(latency_ms)
            self.summary.served[(specialist, version, stage)] += 1
        score = self._score(request, specialist, stage, text)
        if score is not None:
            self._feedback(response_id, score)

    def _score(self, request: ReplayRequest, specialist: str, stage: str,
               text: str) -> float | None:
        """The feedback to send for this answer, if any."""
        mode = self.feedback
        if mode == "none":
            return None
        if self.feedback_stage is not None and stage != self.feedback_stage:
            return None
        if isinstance(mode, float):
            return mode
        if mode == "reference" and request.reference is not None:
            try:
                return self.check(specialist, text, request.reference)
            except Exception:  # an answer the scorer cannot read disagrees
                return 0.0
        return request.feedback

    def _feedback(self, response_id: str, score: float) -> None:
        try:
            status, body = self.client.call("POST", "/v1/feedback",
                                            {"id": response_id, "score": score})
        except TimeoutError:
            status, body = None, None
            message = f"no answer within {self.client.timeout_s:g} s"
        except ConnectionLost as exc:
            self.stop(f"the server went away ({exc})")
            status, body, message = None, None, str(exc)
        else:
            message = _message(body) or f"HTTP {status}"
        with self._lock:
            if status == 200:
                self.summary.feedback_sent += 1
                self.summary.feedback_scores.append(score)
            else:
                self.summary.feedback_failed += 1
                if self.summary.feedback_error is None:
                    self.summary.feedback_error = (f"{status}: {message}" if status
                                                   else message)


def _answer(body: Any) -> tuple[str, str, str, str, str] | None:
    """``(id, specialist, version, stage, text)`` of a completion from ``serve``."""
    if not isinstance(body, dict):
        return None
    served = body.get("modelsmith") or body.get("x_modelsmith")
    try:
        text = body["choices"][0]["message"]["content"]
        found = (body["id"], body["model"], served["version"], served["stage"], text)
    except (KeyError, IndexError, TypeError):
        return None
    return found if all(isinstance(x, str) for x in found) else None


def replay(requests: Sequence[ReplayRequest], client: Client, *, limit: int | None = None,
           concurrency: int = 4, rate: float | None = None, feedback: str | float = "line",
           feedback_stage: str | None = None, check: Callable[[str, str, Any], float] | None
           = None, issues: Sequence[ReplayIssue] = (), model: str | None = None,
           progress: Progress | None = None) -> ReplaySummary:
    """Check ``requests`` against what the server serves (with the ``issues`` already
    found reading them), then send the first ``limit`` of them. Raises
    :class:`ReplayInputError` listing every problem before anything is sent, and
    :class:`ReplayError` when the server cannot be asked."""
    check_options(concurrency, rate, feedback)
    found = list(issues)
    try:
        known = client.models()
    except ReplayError as exc:
        if found:  # report the input's problems, and that the models were not checked
            raise ReplayInputError(found, note=f"(models not checked: {exc})") from None
        raise
    found += check_models(requests, known, client.url, override=model)
    if found:
        raise ReplayInputError(found)
    chosen = list(requests)[:limit] if limit else list(requests)
    replayer = Replayer(client, chosen, concurrency=concurrency, rate=rate,
                        feedback=feedback, feedback_stage=feedback_stage, check=check,
                        progress=progress)
    return replayer.run()
