"""Scoring live answers with the eval's own scorer.

Every answer is checked against the task's output contract (what the eval's ``format_rate``
checks). An answer to a request that carried a ``reference`` -- the expected answer, in the
same shape as a scenario's ``expected`` -- is scored by the suite's rubric with
:func:`modelsmith.evaluation.scoring.score_output`, the scorer behind the eval and the GRPO
reward: same criteria, same labels, same pass threshold. A rubric with ``judge`` criteria
builds its judge model on first use, as ``modelsmith eval`` does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelsmith.evaluation.criteria import ScoringContext, extract_label
from modelsmith.evaluation.scoring import format_ok, output_labels, score_output


@dataclass(frozen=True)
class LiveScore:
    format_ok: bool
    score: float | None = None  # the rubric score, when the request carried a reference
    passed: bool | None = None


class LiveScorer:
    """One specialist's rubric and output contract, ready to score answers."""

    def __init__(self, repo: Any, specialist: str, make_judge: Callable[[], Any]) -> None:
        spec = repo.specialists[specialist]
        suite = repo.suite_for(spec)
        self.contract = spec.spec.task.output
        self.labels = output_labels(self.contract)
        self.rubric = list(suite.suite.spec.rubric)
        self.threshold = suite.suite.spec.pass_threshold
        self._needs_judge = any(c.kind == "judge" for c in self.rubric)
        self._make_judge = make_judge
        self._judge: Any = None
        self._lock = threading.Lock()

    def judge(self) -> Any:
        if not self._needs_judge:
            return None
        with self._lock:
            if self._judge is None:
                self._judge = self._make_judge()
            return self._judge

    def score(self, text: str, reference: Any = None, *,
              count_tokens: Callable[[str], int] | None = None) -> LiveScore:
        """The format check, and the rubric's score when there is a ``reference`` (a JSON
        ``null`` is no reference: the server never passes one)."""
        ok = format_ok(text, self.contract)
        if reference is None:
            return LiveScore(ok)
        ctx = ScoringContext(expected=reference, labels=self.labels,
                             count_tokens=count_tokens, judge=self.judge())
        scored = score_output(self.rubric, text, ctx, self.threshold, self.contract)
        return LiveScore(ok, scored.score, scored.passed)

    def same(self, a: str | None, b: str | None) -> bool:
        """Whether two answers say the same: the same label (as the contract reads labels),
        else the same text up to surrounding whitespace."""
        if a is None or b is None:
            return False
        if self.labels is not None:
            return extract_label(a).casefold() == extract_label(b).casefold()
        return a.strip() == b.strip()

    def close(self) -> None:
        if self._judge is not None:
            self._judge.close()
