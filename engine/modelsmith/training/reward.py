"""The GRPO reward: the eval scorer behind TRL's reward-function interface, nothing more.

TRL calls a reward function as ``fn(prompts=..., completions=..., completion_ids=...,
trainer_state=..., log_extra=..., log_metric=..., <every dataset column>=...)`` with one
list entry per completion. Each completion is scored by :func:`score_output` with the rubric
the evaluation uses for its scenario, so training optimises exactly what the gates measure.

Expected values travel through the dataset as JSON text (``expected_json``): Arrow columns
need one type, and a suite's expected values may be labels, numbers or JSON objects with
differing keys. A plain ``expected`` column is accepted too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from modelsmith.errors import ModelsmithError
from modelsmith.evaluation.criteria import Judge, ScoringContext
from modelsmith.evaluation.results import ScenarioScore
from modelsmith.evaluation.scoring import output_labels, rubric_for, score_output
from modelsmith.specs import LoadedSuite, Specialist
from modelsmith.specs.rubric import Criterion

#: Dataset column carrying each row's expected value as JSON text.
EXPECTED_JSON = "expected_json"
#: Dataset column carrying each row's expected value as is.
EXPECTED = "expected"
#: Dataset column naming the scenario whose rubric scores the row.
SCENARIO_ID = "scenario_id"
#: Dataset column saying whose rubric scores the row: ``""`` its scenario's, ``"suite"``
#: the suite's default, else the row's own criteria as JSON text (:func:`rubric_key`).
RUBRIC_KEY = "rubric_key"
#: The reward's name in TRL's metrics (``rewards/rubric/mean``).
REWARD_NAME = "rubric"


class RewardInputError(ModelsmithError, ValueError):
    """The reward function was called without what it needs to score (a column missing)."""


def encode_expected(value: Any) -> str:
    """``value`` as the JSON text of an ``expected_json`` column."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def rubric_key(row: Mapping[str, Any]) -> str:
    """The :data:`RUBRIC_KEY` of a training row as a dict (``TrainingRow.to_dict``): its own
    rubric as JSON, ``"suite"`` for a generator row without one, ``""`` for a row its
    scenario's rubric scores (eval and pool rows; rows from older datasets)."""
    from .dataset import SCENARIO_RUBRIC_SOURCES

    if row.get("rubric"):
        return json.dumps(row["rubric"], sort_keys=True, ensure_ascii=False)
    source = row.get("source")
    return "suite" if source is not None and source not in SCENARIO_RUBRIC_SOURCES else ""


def parse_rubric(text: str) -> list[Criterion]:
    """Criteria from their JSON text (a generator row's own rubric)."""
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(list[Criterion]).validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "rubric"
        raise RewardInputError(f"a row's own rubric is invalid at {where}: "
                               f"{first['msg']}") from None


def completion_text(completion: Any) -> str:
    """The text of one completion: a string as is; a chat completion (a list of messages)
    as its last assistant message's content (text parts joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, list | tuple):
        messages = [m for m in completion if isinstance(m, dict)]
        chosen = [m for m in messages if m.get("role", "assistant") == "assistant"] or messages
        if not chosen:
            return ""
        content = chosen[-1].get("content")
        if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
            return "".join(
                str(part.get("text", "")) for part in content
                if isinstance(part, dict) and part.get("type", "text") == "text"
            )
        return "" if content is None else str(content)
    return "" if completion is None else str(completion)


class RubricReward:
    """A TRL reward function scoring completions with a suite's rubrics.

    Build it with :func:`make_reward_fn`. Calling it returns one score in [0, 1] per
    completion; :meth:`score_all` returns the full :class:`ScenarioScore` of each.
    """

    __name__ = REWARD_NAME

    def __init__(
        self,
        specialist: Specialist,
        suite: LoadedSuite,
        *,
        threshold: float | None = None,
        count_tokens: Callable[[str], int] | None = None,
        judge: Judge | None = None,
    ) -> None:
        self.contract = specialist.spec.task.output
        self.labels = output_labels(self.contract)
        self.threshold = (
            threshold if threshold is not None else suite.suite.spec.pass_threshold
        )
        self.count_tokens = count_tokens
        self.judge = judge
        self.default_rubric: list[Criterion] = list(suite.suite.spec.rubric)
        # Rubrics are looked up once per scenario, not once per completion.
        self.rubrics: dict[str, list[Criterion]] = {
            sc.id: rubric_for(sc, suite) for sc in suite.scenarios
        }
        self.own: dict[str, list[Criterion]] = {}  # generator rows' rubrics, parsed once

    def rubric(self, scenario_id: str | None, key: str = "") -> list[Criterion]:
        """The rubric a row's :data:`RUBRIC_KEY` names: its own, the suite's default, or
        its scenario's (the default for rows from unknown scenarios)."""
        if key == "suite" or (scenario_id is None and not key):
            return self.default_rubric
        if key:
            if key not in self.own:
                self.own[key] = parse_rubric(key)
            return self.own[key]
        return self.rubrics.get(scenario_id, self.default_rubric)

    def score_all(
        self,
        completions: Sequence[Any],
        expected: Sequence[Any],
        scenario_ids: Sequence[str | None] | None = None,
        rubric_keys: Sequence[str] | None = None,
    ) -> list[ScenarioScore]:
        """Score each completion against its row's expected value and rubric."""
        if len(expected) != len(completions):
            raise RewardInputError(
                f"{len(completions)} completions but {len(expected)} expected values"
            )
        ids = scenario_ids if scenario_ids is not None else [None] * len(completions)
        if len(ids) != len(completions):
            raise RewardInputError(f"{len(completions)} completions but {len(ids)} scenario ids")
        keys = rubric_keys if rubric_keys is not None else [""] * len(completions)
        if len(keys) != len(completions):
            raise RewardInputError(f"{len(completions)} completions but {len(keys)} rubric keys")
        scores = []
        for completion, want, scenario_id, key in zip(completions, expected, ids, keys,
                                                      strict=True):
            ctx = ScoringContext(
                expected=want, labels=self.labels, count_tokens=self.count_tokens,
                judge=self.judge,
            )
            scores.append(score_output(
                self.rubric(scenario_id, key), completion_text(completion), ctx, self.threshold,
                self.contract,
            ))
        return scores

    def __call__(
        self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (),
        **kwargs: Any,
    ) -> list[float]:
        """TRL's interface: rows' columns arrive as keyword lists, one entry per completion."""
        if EXPECTED_JSON in kwargs:
            expected = [json.loads(text) for text in kwargs[EXPECTED_JSON]]
        elif EXPECTED in kwargs:
            expected = list(kwargs[EXPECTED])
        else:
            raise RewardInputError(
                f"the reward needs an '{EXPECTED}' or '{EXPECTED_JSON}' column in the dataset "
                f"(got columns: {', '.join(sorted(kwargs)) or 'none'})"
            )
        scored = self.score_all(completions, expected, kwargs.get(SCENARIO_ID),
                                kwargs.get(RUBRIC_KEY))
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and scored:
            log_metric("rubric/pass_rate", sum(s.passed for s in scored) / len(scored))
            log_metric("rubric/format_rate", sum(s.format_ok for s in scored) / len(scored))
        return [s.score for s in scored]


def make_reward_fn(
    specialist: Specialist,
    suite: LoadedSuite,
    *,
    threshold: float | None = None,
    count_tokens: Callable[[str], int] | None = None,
    judge: Judge | None = None,
) -> RubricReward:
    """A TRL reward function, ``(prompts, completions, **columns) -> list[float]``.

    Needs the dataset columns ``expected_json`` (or ``expected``) and ``scenario_id``.
    ``threshold`` defaults to the suite's ``pass_threshold`` (it decides ``passed``, logged as
    ``rubric/pass_rate``; the reward is the score). ``count_tokens`` and ``judge`` are passed
    to the criteria as the eval runner passes them.
    """
    return RubricReward(
        specialist, suite, threshold=threshold, count_tokens=count_tokens, judge=judge
    )


def rubric_scores(
    specialist: Specialist,
    suite: LoadedSuite,
    completions: Sequence[Any],
    scenario_ids: Sequence[str | None],
    expected: Sequence[Any],
    *,
    threshold: float | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> list[ScenarioScore]:
    """The full score (criteria, passed, format) of each completion, as the reward sees it."""
    reward = make_reward_fn(specialist, suite, threshold=threshold, count_tokens=count_tokens)
    return reward.score_all(completions, expected, scenario_ids)
