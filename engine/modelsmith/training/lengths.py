"""Token lengths that fit the task, settled before any training step.

GRPO generates at most ``max_completion_length`` tokens per completion; an answer cut
shorter than its reference scores 0 however good it is, and every group of equal zeros
teaches nothing. So the length follows the task, not a number that suited another one:

- a profile without ``max_completion_length`` gets one from the output contract and the
  rows' reference answers (:mod:`modelsmith.evaluation.budget`): a label task its longest
  label as it follows the prompt, + 1 for EOS; a text or JSON task its longest reference
  with headroom (``ceil(× 1.25) + 4``), within what the model's ``max_length`` leaves after
  the longest prompt;
- a profile whose ``max_completion_length`` is shorter than the longest reference answer is
  refused, with the numbers and the row;
- a prompt (GRPO: with ``max_completion_length`` new tokens; SFT: with its reference answer
  and EOS) longer than the model's ``max_length`` is refused, never cut to fit.

No torch here: token counts come in as functions (the tokenizer's).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelsmith.evaluation.budget import answer_budget, longest, reference_text
from modelsmith.specs.clusters import HyperParams

from .config import TrainingConfigError
from .dataset import completion_for

CountFn = Callable[[str], int]

#: config.json keys that name a model's longest sequence, in order of preference.
_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
#: A tokenizer's ``model_max_length`` at or above this means "not set" (transformers
#: fills in a huge number).
_UNSET_LENGTH = 1_000_000
#: The token TRL appends after an SFT reference answer.
SFT_EOS_TOKENS = 1


class LengthError(TrainingConfigError):
    """A prompt or reference answer that does not fit the model or the profile's
    ``max_completion_length``; the message has the numbers and the row."""


@dataclass(frozen=True)
class Lengths:
    """The lengths a run trains with, and what they rest on."""

    max_length: int | None  # the model's; None: not known
    max_completion_length: int | None  # GRPO's; None for SFT alone
    derived: bool  # max_completion_length came from the task, not the profile
    longest_prompt: int  # tokens
    longest_answer: int  # tokens of the longest reference answer, as it follows its prompt

    @property
    def cap(self) -> int | None:
        """The most completion tokens every prompt leaves room for (None: no known limit)."""
        return None if self.max_length is None else self.max_length - self.longest_prompt


def model_max_length(model_path: Path, tokenizer_limit: int | None = None) -> int | None:
    """The longest sequence (prompt + completion, in tokens) the model at ``model_path``
    takes: its config's position limit, and the tokenizer's ``model_max_length`` when that
    is set and shorter; ``None`` when neither says."""
    limits = []
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    for key in _LENGTH_KEYS:
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, int) and value > 0:
            limits.append(value)
            break
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < _UNSET_LENGTH:
        limits.append(tokenizer_limit)
    return min(limits) if limits else None


def _row_name(rows: Sequence[dict[str, Any]], index: int) -> str:
    row_id = rows[index].get("id")
    return f"training row {index}" + (f" ({row_id})" if row_id else "")


def reference_completion(row: dict[str, Any]) -> str | None:
    """A row's reference answer as the model should write it after the prompt: its
    ``completion``, else its ``expected`` value as text (:func:`completion_for`); None for
    a row without either."""
    if row.get("completion"):
        return str(row["completion"])
    answer = reference_text(row.get("expected"))
    return None if answer is None else completion_for(str(row["prompt"]), answer)


def _check_sft(rows: Sequence[dict[str, Any]], count_prompt: CountFn,
               max_length: int | None) -> None:
    """Each SFT row's prompt, reference answer and EOS within the model's length."""
    if max_length is None:
        return
    for index, row in enumerate(rows):
        if not row.get("completion"):
            continue
        total = count_prompt(str(row["prompt"]) + str(row["completion"])) + SFT_EOS_TOKENS
        if total > max_length:
            raise LengthError(
                f"{_row_name(rows, index)}: its prompt and reference answer need {total} "
                f"tokens (with EOS), more than the model's max_length {max_length}; "
                "SFT would cut the answer off. Shorten the prompt or use a model that "
                "takes longer sequences"
            )


def _label_forms(rows: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[str]:
    """Each label as it follows the rows' prompts (with a space after ``Verdict:``)."""
    prompts = {str(row["prompt"])[-1:] for row in rows}  # completion_for looks at the end
    return list(dict.fromkeys(completion_for(p, label) for p in prompts for label in labels))


def fit_lengths(
    method: str,
    rows: Sequence[dict[str, Any]],
    profile: HyperParams,
    count_tokens: CountFn,
    *,
    max_length: int | None,
    count_prompt: CountFn | None = None,
    output: Any = None,
    profile_name: str | None = None,
) -> Lengths:
    """The lengths ``method`` trains ``rows`` with, or :class:`LengthError` (see the module
    docstring). ``count_tokens`` counts an answer's tokens (no special tokens),
    ``count_prompt`` a prompt's as the trainer encodes it (default ``count_tokens``);
    ``output`` is the specialist's output contract (None: sized as text); ``profile_name``
    names the profile in messages."""
    count_prompt = count_prompt or count_tokens
    if method != "grpo":
        _check_sft(rows, count_prompt, max_length)
    prompts = [count_prompt(str(row["prompt"])) for row in rows]
    longest_prompt = max(prompts, default=0)
    references = [reference_completion(row) for row in rows]
    answer_tokens, answer_row = longest(
        (text if text is not None else "" for text in references), count_tokens)
    if method == "sft":
        return Lengths(max_length, None, False, longest_prompt, answer_tokens)
    kind = getattr(output, "kind", "text")
    if profile.max_completion_length is not None:
        budget, derived = profile.max_completion_length, False
        if budget < answer_tokens and answer_row is not None:
            named = f"profile '{profile_name}'" if profile_name else "the profile"
            raise LengthError(
                f"{named} sets max_completion_length {budget}, shorter than the longest "
                f"reference answer: {answer_tokens} tokens in {_row_name(rows, answer_row)}; "
                f"GRPO would cut every such answer off and score it 0. Raise it to at least "
                f"{answer_budget(kind, answer_tokens)}, or leave it out to derive it"
            )
    else:
        need = answer_tokens
        if kind == "label" and getattr(output, "labels", None):
            need = max(need, longest(_label_forms(rows, output.labels), count_tokens)[0])
        budget, derived = answer_budget(kind, need), True
        if max_length is not None:
            room = max_length - longest_prompt
            if room < answer_tokens:
                index = prompts.index(longest_prompt)
                raise LengthError(
                    f"{_row_name(rows, index)}: its prompt has {longest_prompt} tokens, "
                    f"leaving {room} of the model's max_length {max_length} for the answer, "
                    f"fewer than the longest reference answer needs ({answer_tokens} tokens)"
                )
            budget = min(budget, room)
    if max_length is not None:
        for index, tokens in enumerate(prompts):
            if tokens + budget > max_length:
                raise LengthError(
                    f"{_row_name(rows, index)}: its prompt has {tokens} tokens; with "
                    f"max_completion_length {budget} that is more than the model's "
                    f"max_length {max_length}, and the prompt would have to be cut. Shorten "
                    f"the prompt or lower max_completion_length to at most "
                    f"{max_length - longest_prompt}"
                )
    return Lengths(max_length, budget, derived, longest_prompt, answer_tokens)
