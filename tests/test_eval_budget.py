"""Token budgets that fit the task: eval's ``max_new_tokens`` follows the output contract and
the suite's reference answers when the settings name none, never shorter than a reference
needs."""

from __future__ import annotations

import json

from modelsmith.evaluation.budget import (
    answer_budget,
    label_forms,
    longest,
    reference_text,
)
from modelsmith.evaluation.runner import (
    DEFAULT_MAX_NEW_TOKENS,
    EvalSettings,
    default_max_new_tokens,
    run_suite,
)
from modelsmith.inference.base import Generation
from modelsmith.specs import load_repository
from modelsmith.specs.models import JsonOutput, LabelOutput, TextOutput


def chars(text: str) -> int:
    """One token per character: easy to count by eye."""
    return len(text)


def test_reference_texts_and_budgets():
    assert reference_text("ACCEPT") == "ACCEPT"
    assert reference_text({"name": "Åsa"}) == '{"name": "Åsa"}'
    assert reference_text(3) == "3" and reference_text(None) is None
    assert label_forms(["A", "BB"]) == [" A", "A", " BB", "BB"]
    assert longest(["ab", "abcd", "wxyz"], chars) == (4, 1)
    assert longest([], chars) == (0, None)
    assert answer_budget("label", 3) == 4  # + EOS
    assert answer_budget("json", 20) == 29 and answer_budget("text", 1) == 6  # x1.25 + 4


def test_label_tasks_keep_their_floor_and_grow_with_a_long_label():
    short = LabelOutput(kind="label", labels=["Y", "N"])  # " Y" + EOS: 3, below the floor
    assert default_max_new_tokens(short, ["Y", "N"], chars) == DEFAULT_MAX_NEW_TOKENS["label"]
    long = LabelOutput(kind="label", labels=["ACCEPT", "NEEDS_REVIEW"])
    # " NEEDS_REVIEW" is 13 characters, + 1 for EOS.
    assert default_max_new_tokens(long, ["ACCEPT"], chars) == 14


def test_json_and_text_follow_the_longest_reference():
    contract = JsonOutput(kind="json")
    expected = [{"a": 1}, {"name": "a longer value", "n": 12}, {"name": "a longer value", "n": 12}]
    longest_json = len(json.dumps(expected[1]))
    assert default_max_new_tokens(contract, expected, chars) == answer_budget(
        "json", longest_json)
    # Far more than the old fixed budget when the references need it, far less when not.
    big = [{"items": list(range(200))}]
    assert default_max_new_tokens(contract, big, chars) > DEFAULT_MAX_NEW_TOKENS["json"]
    assert default_max_new_tokens(contract, [{"a": 1}], chars) < DEFAULT_MAX_NEW_TOKENS["json"]
    text = TextOutput(kind="text")
    assert default_max_new_tokens(text, ["x" * 200, None], chars) == 254
    # No reference at all: the contract's default.
    assert default_max_new_tokens(text, [None, None], chars) == DEFAULT_MAX_NEW_TOKENS["text"]


class Recording:
    """A backend that answers every request with the first label and keeps the requests."""

    name, model_ref = "recording", "recording"

    def __init__(self) -> None:
        self.requests: list = []

    def generate(self, requests, progress=None):
        self.requests.extend(requests)
        return [Generation(" ACCEPT", 1, 1.0) for _ in requests]

    def count_tokens(self, text):
        return len(text)

    def close(self):
        pass


def test_run_suite_sizes_the_budget_from_the_suite_unless_told(demo_repo):
    repo = load_repository(demo_repo)
    specialist = repo.specialists["rtb-quality"]
    suite = repo.suite_for(specialist)
    backend = Recording()
    run_suite(specialist, suite, backend, EvalSettings(limit=2, latency_probes=0))
    # " ACCEPT"/" REJECT" are 7 characters here, + EOS.
    assert {r.max_new_tokens for r in backend.requests} == {8}
    told = Recording()
    run_suite(specialist, suite, told, EvalSettings(limit=2, max_new_tokens=3,
                                                    latency_probes=0))
    assert {r.max_new_tokens for r in told.requests} == {3}
