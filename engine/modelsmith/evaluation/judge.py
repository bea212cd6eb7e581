"""The `judge` criterion's grader: another model scores an output against a rubric text.

Any backend serves as a judge (usually `openai:NAME` for a hosted frontier model); backends
are built on first use and reused, so a rubric without a judge criterion costs nothing.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from modelsmith.inference.base import Backend, GenerationRequest

JUDGE_SYSTEM = (
    "You grade one answer of another model. Follow the rubric strictly. Reply with the "
    "score as an integer from 0 to 10 on the first line, then one short line of reason."
)
JUDGE_PROMPT = "Rubric:\n{rubric}\n\nReference answer:\n{expected}\n\nAnswer to grade:\n{output}"
MAX_OUTPUT_CHARS = 8000  # a runaway output must not blow the judge's context
_SCORE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)")


def parse_verdict(text: str) -> tuple[float, str] | None:
    """(score in [0, 1], reason) from a judge reply, or None when it holds no score."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    match = _SCORE.search(lines[0])
    if match is None:
        return None
    score = min(10.0, float(match.group(1))) / 10.0
    reason = " ".join(lines[1:]) or lines[0]
    return score, reason[:200]


class BackendJudge:
    """Callable as the scorer's ``judge``: ``(rubric, model, output, expected)``."""

    def __init__(self, make: Callable[[str], Backend], max_new_tokens: int = 64) -> None:
        self._make = make
        self._backends: dict[str, Backend] = {}
        self._lock = threading.Lock()
        self.max_new_tokens = max_new_tokens

    def _backend(self, model: str) -> Backend:
        with self._lock:
            if model not in self._backends:
                self._backends[model] = self._make(model)
            return self._backends[model]

    def __call__(self, rubric: str, model: str, output: str, expected: Any) -> tuple[float, str]:
        prompt = JUDGE_PROMPT.format(rubric=rubric, expected=expected,
                                     output=output[:MAX_OUTPUT_CHARS])
        request = GenerationRequest(prompt=prompt, system=JUDGE_SYSTEM,
                                    max_new_tokens=self.max_new_tokens, temperature=0.0, seed=0)
        (reply,) = self._backend(model).generate([request])
        if reply.error:
            return 0.0, f"judge {model} failed: {reply.error}"[:200]
        verdict = parse_verdict(reply.text)
        if verdict is None:
            return 0.0, f"judge {model} gave no score: {reply.text.strip()[:120]!r}"
        return verdict

    def close(self) -> None:
        with self._lock:
            for backend in self._backends.values():
                backend.close()
            self._backends.clear()
