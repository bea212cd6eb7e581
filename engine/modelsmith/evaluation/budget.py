"""Token budgets that fit the task: how many tokens a model may write for one answer.

The budget follows the output contract and the reference answers, never a fixed number that
suits one task and starves another (a 4-token budget scores every JSON answer 0):

- a label task needs its longest label, as it follows the prompt, and the end-of-sequence
  token: ``longest + 1``;
- a text or JSON task needs its longest reference answer with headroom, since a correct
  answer may be phrased or spaced a little longer: ``ceil(longest × 1.25) + 4``.

Evaluation (``max_new_tokens``) and GRPO training (``max_completion_length``) both size
their budget here. Token counts come from the model's tokenizer where one is at hand (an
OpenAI-compatible endpoint only estimates them: a quarter of the characters, see
``inference.openai_backend.estimate_tokens``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

#: Tokens after a label: the end-of-sequence token that ends the answer.
EOS_TOKENS = 1
#: A text or JSON answer's budget is its longest reference × this, plus HEADROOM_TOKENS.
HEADROOM = 1.25
HEADROOM_TOKENS = 4


def reference_text(expected: Any) -> str | None:
    """A scenario's expected value as the answer text it stands for: a string as is, any
    other value as JSON; ``None`` (no reference) stays ``None``."""
    from .references import reference_answer

    return None if expected is None else reference_answer(expected)


def label_forms(labels: Iterable[str]) -> list[str]:
    """Each label as a model may write it: after a prompt ending in a word (`` ACCEPT``, with
    the space) and at the start of a turn (``ACCEPT``)."""
    return [form for label in labels for form in (" " + label, label)]


def longest(texts: Iterable[str], count_tokens: Callable[[str], int]) -> tuple[int, int | None]:
    """The most tokens among ``texts`` and the index of the first text that long; ``(0,
    None)`` for no texts."""
    best, where = 0, None
    for index, text in enumerate(texts):
        tokens = count_tokens(text)
        if where is None or tokens > best:
            best, where = tokens, index
    return best, where


def answer_budget(kind: str, longest_tokens: int) -> int:
    """Tokens to generate for answers whose longest needs ``longest_tokens``: ``+ 1`` (EOS)
    for a label, ``ceil(× 1.25) + 4`` for text or JSON."""
    if kind == "label":
        return longest_tokens + EOS_TOKENS
    return math.ceil(longest_tokens * HEADROOM) + HEADROOM_TOKENS
