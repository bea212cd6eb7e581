"""A teacher model that rephrases failed inputs, keeping their label.

Any backend can teach (``openai:NAME`` for an OpenAI-compatible endpoint, a local model
profile or folder). For each input it is asked for ``n`` rewrites that keep every name and
number; a rewrite is kept only when it does: its numbers (as a multiset) are the input's,
it names every joined word of the input (``casino-ads.example``, ``user_id``), it is not
the input itself up to case and punctuation, and it is one line. The label is the input's:
that is why a rewrite that changed a value is dropped rather than trusted. Validation then
applies the same leakage guard and duplicate checks to teacher rows as to any other row.

Teacher rows are not reproducible from the event log (a model's sampling), so a dataset
with them is rebuilt from its DVC-versioned file rather than regenerated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from modelsmith.inference.base import Backend, GenerationRequest

from .similarity import normalise, text_tokens

PROMPT = (
    "Rewrite the input below in {n} different ways. Keep every name, value and number "
    "exactly as written; change only the wording and the order. Write one rewrite per "
    "line and nothing else.\n\nInput: {text}"
)
#: Leading list markers a model puts before each line ("1.", "-", "*", "2)").
_MARKER = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+")
#: Joined words (``casino-ads.example``, ``user_id``, ``a/b``); numbers are compared apart.
_IDENTIFIER = re.compile(r"[^\W_]+(?:[.\-_/][^\W_]+)+")


def _identifiers(text: str) -> frozenset[str]:
    return frozenset(m.group(0).casefold() for m in _IDENTIFIER.finditer(text)
                     if any(ch.isalpha() for ch in m.group(0)))


def _numbers(text: str) -> list[str]:
    return sorted(t for t in text_tokens(text) if t[0].isdigit())


def keeps_values(original: str, rewrite: str) -> bool:
    """Whether ``rewrite`` says the same values as ``original``: the same numbers and the
    same identifiers (``casino-ads.example``), and is not ``original`` itself (up to case
    and punctuation)."""
    if normalise(rewrite) == normalise(original):
        return False
    return (_numbers(rewrite) == _numbers(original)
            and _identifiers(original) <= _identifiers(rewrite))


def parse_rewrites(original: str, reply: str, n: int) -> list[str]:
    """At most ``n`` distinct rewrites from a reply, in order, list markers removed, each
    keeping the original's values."""
    kept: list[str] = []
    for line in reply.splitlines():
        text = _MARKER.sub("", line).strip()
        if text and text not in kept and keeps_values(original, text):
            kept.append(text)
        if len(kept) == n:
            break
    return kept


class BackendTeacher:
    """A :data:`~modelsmith.training.augment.Teacher` on a backend; ``prefetch`` asks for
    many inputs in one batch (the backend's own concurrency or batching applies)."""

    def __init__(self, backend: Backend, *, temperature: float = 0.7, seed: int = 0,
                 tokens_per_rewrite: int = 64) -> None:
        self.backend = backend
        self.temperature = temperature
        self.seed = seed
        self.tokens_per_rewrite = tokens_per_rewrite
        self.asked = 0
        self.dropped = 0  # rewrites that changed a value or repeated the input
        self._cache: dict[tuple[str, int], list[str]] = {}

    def prefetch(self, texts: Iterable[str], n: int) -> None:
        todo = [t for t in dict.fromkeys(texts) if (t, n) not in self._cache]
        if not todo or n <= 0:
            return
        requests = [GenerationRequest(prompt=PROMPT.format(n=n, text=t),
                                      max_new_tokens=self.tokens_per_rewrite * n,
                                      temperature=self.temperature, seed=self.seed)
                    for t in todo]
        for text, generation in zip(todo, self.backend.generate(requests), strict=True):
            if generation.error:
                raise RuntimeError(generation.error)
            rewrites = parse_rewrites(text, generation.text, n)
            self.asked += n
            self.dropped += n - len(rewrites)
            self._cache[(text, n)] = rewrites

    def __call__(self, text: str, n: int) -> list[str]:
        self.prefetch([text], n)
        return list(self._cache[(text, n)])


def prefetch_for(teacher: object, texts: Sequence[str], n: int) -> None:
    """Batch the teacher's requests when it can (a :class:`BackendTeacher`)."""
    prefetch = getattr(teacher, "prefetch", None)
    if callable(prefetch):
        prefetch(texts, n)
