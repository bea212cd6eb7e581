"""Rubric criteria and the scorer: every kind, weights, required, thresholds, output
contracts, and hostile outputs that must never raise."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from pydantic import TypeAdapter

from modelsmith.evaluation.criteria import (
    CRITERIA,
    ScoringContext,
    extract_label,
    parse_json_output,
    parse_number,
    run_criterion,
)
from modelsmith.evaluation.results import ScenarioScore
from modelsmith.evaluation.scoring import format_ok, rubric_for, score_output
from modelsmith.specs import EvalSuite, JsonOutput, LabelOutput, Scenario, TextOutput
from modelsmith.specs.rubric import CRITERION_KINDS, Criterion

_CRITERION = TypeAdapter(Criterion)


def crit(**fields: Any) -> Any:
    return _CRITERION.validate_python(fields)


def score(spec: Any, output: Any, **ctx: Any) -> tuple[float, str]:
    return run_criterion(spec, output, ScoringContext(**ctx))


def test_every_kind_is_registered() -> None:
    assert set(CRITERIA) == set(CRITERION_KINDS)


# --------------------------------------------------------------------------- label


@pytest.mark.parametrize(
    "output",
    ["ACCEPT", "accept", "  Accept.", "**ACCEPT**", "`accept`", '"ACCEPT"', "ACCEPT:", "- ACCEPT",
     "ACCEPT\n\nThe bid is fine.", "> **Accept**, because"],
)  # fmt: skip
def test_label_tolerates_decoration(output: str) -> None:
    assert score(crit(kind="label"), output, expected="ACCEPT")[0] == 1.0


def test_label_wrong_and_not_a_label() -> None:
    spec = crit(kind="label", labels=["ACCEPT", "REJECT"])
    value, reason = score(spec, "REJECT", expected="ACCEPT")
    assert value == 0.0 and "REJECT" in reason
    value, reason = score(spec, "MAYBE", expected="ACCEPT")
    assert value == 0.0 and "not a label" in reason
    # the specialist's labels apply when the criterion lists none
    value, reason = score(crit(kind="label"), "maybe", expected="ACCEPT", labels=["ACCEPT", "NO"])
    assert value == 0.0 and "not a label" in reason


def test_label_is_the_first_word_only() -> None:
    assert score(crit(kind="label"), "Verdict: ACCEPT", expected="ACCEPT")[0] == 0.0
    assert score(crit(kind="label"), "", expected="ACCEPT")[0] == 0.0
    assert score(crit(kind="label"), "ACCEPT", expected=None) == (0.0, "no expected label")


def test_extract_label_keeps_signs_and_inner_punctuation() -> None:
    assert extract_label("-1") == "-1"
    assert extract_label("NO_BID.") == "NO_BID"
    assert extract_label("not-spam!") == "not-spam"
    assert extract_label("   ") == ""


# --------------------------------------------------------------------------- exact


def test_exact() -> None:
    assert score(crit(kind="exact"), "  Paris \n\n", expected="paris")[0] == 1.0
    assert score(crit(kind="exact", value="Paris"), "Paris!", expected="x")[0] == 0.0
    assert score(crit(kind="exact", value="Paris", case_sensitive=True), "paris")[0] == 0.0
    assert score(crit(kind="exact", value="Paris", case_sensitive=True), "Paris\n")[0] == 1.0
    assert score(crit(kind="exact"), "42", expected=42)[0] == 1.0
    assert score(crit(kind="exact"), "x")[0] == 0.0


# --------------------------------------------------------------------------- substrings


def test_contains_partial_credit() -> None:
    spec = crit(kind="contains", value=["alpha", "beta", "gamma", "delta"])
    assert score(spec, "ALPHA beta gamma delta")[0] == 1.0
    value, reason = score(spec, "alpha and Beta")
    assert value == 0.5 and "gamma" in reason and "delta" in reason
    assert score(crit(kind="contains", value="x"), "abc")[0] == 0.0


def test_not_contains() -> None:
    spec = crit(kind="not_contains", value=["as an ai", "sorry"])
    assert score(spec, "Fine.")[0] == 1.0
    value, reason = score(spec, "Sorry, I cannot")
    assert value == 0.5 and "sorry" in reason
    assert score(spec, "SORRY, as an AI")[0] == 0.0


# --------------------------------------------------------------------------- regex


def test_regex() -> None:
    spec = crit(kind="regex", pattern=r"\bID-\d{4}\b")
    assert score(spec, "ticket ID-1234 done")[0] == 1.0
    assert score(spec, "ticket ID-12")[0] == 0.0
    # only the first 20k characters are searched
    assert score(spec, "x" * 20_000 + "ID-1234")[0] == 0.0


# --------------------------------------------------------------------------- JSON

SCHEMA = {
    "type": "object",
    "properties": {"price": {"type": "number"}, "tags": {"type": "array"}},
    "required": ["price"],
}


def test_json_schema() -> None:
    spec = crit(kind="json_schema", schema=SCHEMA)
    assert score(spec, '{"price": 1.5}')[0] == 1.0
    assert score(spec, '```json\n{"price": 1.5}\n```\n')[0] == 1.0
    value, reason = score(spec, '{"price": "cheap"}')
    assert value == 0.0 and "$.price" in reason
    assert score(spec, '{"tags": []}')[0] == 0.0
    assert score(spec, 'Here: {"price": 1}')[0] == 0.0


def test_json_schema_invalid_schema() -> None:
    spec = crit(kind="json_schema", schema={"type": "no-such-type"})
    assert score(spec, "{}") == (0.0, "invalid schema")


def test_json_schema_never_retrieves_remote_refs() -> None:
    spec = crit(kind="json_schema", schema={"$ref": "https://example.invalid/s.json"})
    value, reason = score(spec, "{}")
    assert value == 0.0 and reason.startswith("criterion error")


@pytest.mark.parametrize(
    ("output", "ok"),
    [('{"a": 1}', True), ('  ```\n[1, 2]\n```  ', True), ("```JSON\n1\n```", True),
     ("{'a': 1}", False), ('{"a": 1,}', False), ('{"a": ', False), ("NaN", False),
     ("Infinity", False), ("1e309", False), ("-0", True), ("```python\n{}\n```", False),
     ("```json\n{}", False), ('{"a": 1} trailing', False), ("", False), ("[" * 100_000, False)],
)  # fmt: skip
def test_parse_json_output(output: str, ok: bool) -> None:
    assert parse_json_output(output)[0] is ok


def test_json_field() -> None:
    doc = '{"bid": {"price": 1.0, "items": [{"sku": "A1"}], "ok": true}}'
    same = {"bid": {"price": 1, "items": [{"sku": "A1"}], "ok": True}}
    assert score(crit(kind="json_field", path="bid.price"), doc, expected=same)[0] == 1.0
    assert score(crit(kind="json_field", path="bid.price", value=1.0000000001), doc)[0] == 1.0
    assert score(crit(kind="json_field", path="bid.price", value=1.01), doc)[0] == 0.0
    assert score(crit(kind="json_field", path="bid.items[0].sku", value="A1"), doc)[0] == 1.0
    assert score(crit(kind="json_field", path="bid.items[0].sku", value="a1"), doc)[0] == 0.0
    assert score(crit(kind="json_field", path="bid.ok", value=1), doc)[0] == 0.0  # bool != 1
    assert score(crit(kind="json_field", path="bid.ok", value=True), doc)[0] == 1.0
    value, reason = score(crit(kind="json_field", path="bid.items[3]", value=1), doc)
    assert value == 0.0 and "missing" in reason
    assert score(crit(kind="json_field", path="bid.price.x", value=1), doc)[0] == 0.0


def test_json_field_without_value_compares_the_same_path_of_expected() -> None:
    expected = {"vendor": "Acme", "total": 12.5, "lines": [{"sku": "A1"}, {"sku": "B2"}]}
    answer = '{"vendor": "Acme", "total": 12.5, "lines": [{"sku": "A1"}, {"sku": "XX"}]}'
    assert score(crit(kind="json_field", path="vendor"), answer, expected=expected)[0] == 1.0
    assert score(crit(kind="json_field", path="lines[0].sku"), answer, expected=expected)[0] == 1.0
    value, reason = score(crit(kind="json_field", path="lines[1].sku"), answer, expected=expected)
    assert value == 0.0 and "'XX'" in reason and "'B2'" in reason
    # the old meaning (the field against the whole expected value) is gone
    assert score(crit(kind="json_field", path="vendor"), answer, expected="Acme")[0] == 0.0
    assert score(crit(kind="json_field", path="total"), answer, expected=12.5)[0] == 0.0


@pytest.mark.parametrize("expected", [{"vendor": "Acme"}, {"amount": 1}, [1], "{}", 3, None])
def test_json_field_expected_without_the_path_scores_zero_and_says_so(expected: Any) -> None:
    output = '{"total": 3, "vendor": "Acme"}'
    value, reason = score(crit(kind="json_field", path="total"), output, expected=expected)
    assert value == 0.0 and reason == "the expected value has no 'total'"
    # ... even when the output is no JSON at all: the suite is at fault, not the model
    value, reason = score(crit(kind="json_field", path="total"), "nope", expected=expected)
    assert reason == "the expected value has no 'total'"


@pytest.mark.parametrize(
    ("plain", "rooted"),
    [("vendor", "$.vendor"), ("lines[1].sku", "$.lines[1].sku"), ("[0]", "$[0]")],
)
def test_json_field_a_root_dollar_means_the_same_path(plain: str, rooted: str) -> None:
    expected: Any = {"vendor": "Acme", "lines": [{"sku": "A1"}, {"sku": "B2"}]}
    if plain == "[0]":
        expected = [expected]
    outputs = [json.dumps(expected), '{"vendor": "Bolt", "lines": []}', "[1]", "not json"]
    for output in outputs:
        for ctx in ({"expected": expected}, {}):
            got = score(crit(kind="json_field", path=rooted), output, **ctx)
            want = score(crit(kind="json_field", path=plain), output, **ctx)
            assert got == (want[0], want[1].replace(plain, rooted)), (output, ctx)
    assert score(crit(kind="json_field", path=rooted), json.dumps(expected),
                 expected=expected)[0] == 1.0


def test_json_field_dollar_alone_is_the_whole_document() -> None:
    expected = {"vendor": "Acme", "total": 3}
    spec = crit(kind="json_field", path="$")
    assert score(spec, '{"total": 3, "vendor": "Acme"}', expected=expected)[0] == 1.0
    assert score(spec, '{"total": 3}', expected=expected)[0] == 0.0
    assert score(spec, "7", expected=7)[0] == 1.0
    assert score(crit(kind="json_field", path="$", value=[1, 2]), "[1, 2]")[0] == 1.0


def test_json_field_explicit_null_versus_expected() -> None:
    doc = '{"a": null}'
    assert score(crit(kind="json_field", path="a", value=None), doc, expected=5)[0] == 1.0
    assert score(crit(kind="json_field", path="a", value=None), doc)[0] == 1.0
    assert score(crit(kind="json_field", path="a"), doc, expected={"a": 5})[0] == 0.0
    assert score(crit(kind="json_field", path="a"), doc, expected={"a": None})[0] == 1.0
    assert score(crit(kind="json_field", path="a"), doc, expected=None)[0] == 0.0  # no 'a'


# --------------------------------------------------------------------------- numeric


@pytest.mark.parametrize(
    ("text", "number"),
    [("42", 42.0), ("about -3.5 units", -3.5), ("1,234.5", 1234.5), ("45%", 45.0),
     ("+2e3", 2000.0), ("1.5E-2", 0.015), (".5", 0.5), ("-0", 0.0), ("none", None),
     ("NaN", None)],
)  # fmt: skip
def test_parse_number(text: str, number: float | None) -> None:
    assert parse_number(text) == number


def test_numeric() -> None:
    assert score(crit(kind="numeric"), "The answer is 1,234.5.", expected=1234.5)[0] == 1.0
    assert score(crit(kind="numeric"), "1234", expected="1234")[0] == 1.0
    assert score(crit(kind="numeric", value=10, tolerance=0.5), "10.4")[0] == 1.0
    assert score(crit(kind="numeric", value=10, tolerance=0.5), "10.6")[0] == 0.0
    assert score(crit(kind="numeric"), "0.3", expected=0.1 + 0.2)[0] == 1.0
    assert score(crit(kind="numeric"), "no number", expected=1)[0] == 0.0
    value, reason = score(crit(kind="numeric"), "5", expected="five")
    assert value == 0.0 and "no numeric target" in reason


# --------------------------------------------------------------------------- length


def test_length() -> None:
    spec = crit(kind="length", max_tokens=3, max_chars=20)
    assert score(spec, "one two three")[0] == 1.0
    value, reason = score(spec, "one two three four")
    assert value == 0.0 and "4 tokens > 3" in reason
    assert score(spec, "a" * 21)[0] == 0.0
    assert score(spec, "one two", count_tokens=lambda s: len(s))[0] == 0.0
    assert score(crit(kind="length", max_chars=5), "12345")[0] == 1.0


# --------------------------------------------------------------------------- judge


def test_judge() -> None:
    spec = crit(kind="judge", model="gpt-x", rubric="Is it polite?")
    assert score(spec, "hi") == (0.0, "no judge configured")
    seen: list[tuple[str, str, str, Any]] = []

    def judge(rubric: str, model: str, output: str, expected: Any) -> tuple[float, str]:
        seen.append((rubric, model, output, expected))
        return 0.75, "mostly"

    value, reason = score(spec, "hi", judge=judge, expected="e")
    assert value == 0.75 and "mostly" in reason
    assert seen == [("Is it polite?", "gpt-x", "hi", "e")]
    assert score(spec, "hi", judge=lambda *a: (7.0, "?"))[0] == 1.0
    assert score(spec, "hi", judge=lambda *a: (-1.0, "?"))[0] == 0.0
    assert score(spec, "hi", judge=lambda *a: (float("nan"), "?"))[0] == 0.0


def test_a_failing_judge_scores_zero() -> None:
    def judge(*args: Any) -> tuple[float, str]:
        raise TimeoutError("judge timed out")

    spec = crit(kind="judge", model="m", rubric="r")
    value, reason = score(spec, "hi", judge=judge)
    assert value == 0.0 and reason.startswith("criterion error") and "timed out" in reason


# --------------------------------------------------------------------------- score_output

LABELS = LabelOutput(kind="label", labels=["ACCEPT", "REJECT"])


def test_weighted_mean() -> None:
    rubric = [
        crit(kind="label", weight=3),
        crit(kind="length", max_chars=3, weight=1),
    ]
    result = score_output(rubric, "ACCEPT", ScoringContext(expected="ACCEPT"), 0.5, LABELS)
    assert isinstance(result, ScenarioScore)
    assert result.score == pytest.approx(0.75)
    assert result.passed and result.format_ok
    assert [c.kind for c in result.criteria] == ["label", "length"]
    assert [c.weight for c in result.criteria] == [3, 1]
    assert not score_output(rubric, "ACCEPT", ScoringContext(expected="ACCEPT"), 0.8).passed


def test_required_criterion_is_a_hard_fail() -> None:
    rubric = [
        crit(kind="contains", value=["a", "b"], required=True),
        crit(kind="length", max_chars=100, weight=10),
    ]
    result = score_output(rubric, "a only", ScoringContext(), 0.5)
    assert result.score == pytest.approx((0.5 + 10) / 11)
    assert not result.passed  # partial credit on a required criterion fails
    assert result.criteria[0].required and not result.criteria[1].required
    assert score_output(rubric, "a and b", ScoringContext(), 0.5).passed


def test_pass_threshold() -> None:
    rubric = [crit(kind="contains", value=["a", "b", "c"])]
    ctx = ScoringContext()
    assert score_output(rubric, "a b", ctx, 2 / 3).passed
    assert not score_output(rubric, "a b", ctx, 0.7).passed
    assert not score_output(rubric, "a b", ctx, 1.0).passed
    assert score_output(rubric, "a b c", ctx, 1.0).passed
    empty = score_output([], "x", ctx, 0.0)
    assert empty.score == 0.0 and not empty.passed


@pytest.mark.parametrize(
    ("contract", "output", "ok"),
    [(LABELS, "reject.", True), (LABELS, "**ACCEPT**", True), (LABELS, "MAYBE", False),
     (LABELS, "Verdict: ACCEPT", False), (LABELS, "", False),
     (JsonOutput(kind="json"), '{"a": 1}', True),
     (JsonOutput(kind="json"), "```json\n[]\n```", True),
     (JsonOutput(kind="json"), "{'a': 1}", False),
     (JsonOutput(kind="json", schema=SCHEMA), '{"price": 2}', True),
     (JsonOutput(kind="json", schema=SCHEMA), '{"price": "x"}', False),
     (JsonOutput(kind="json", schema={"type": "bogus"}), "{}", False),
     (TextOutput(kind="text"), "hello", True), (TextOutput(kind="text"), " \n ", False),
     (None, "hello", True), (None, "", False), (None, None, False)],
)  # fmt: skip
def test_format_ok(contract: Any, output: Any, ok: bool) -> None:
    assert format_ok(output, contract) is ok
    result = score_output([crit(kind="length", max_chars=10**6)], output, ScoringContext(), 0.0,
                          contract)  # fmt: skip
    assert result.format_ok is ok


def test_rubric_for() -> None:
    suite = EvalSuite.model_validate(
        {
            "apiVersion": "modelsmith/v1",
            "kind": "EvalSuite",
            "metadata": {"name": "s"},
            "spec": {"scenarios": ["scenarios.jsonl"], "rubric": [{"kind": "label"}]},
        }
    )
    plain = Scenario.model_validate({"id": "a", "input": "x", "expected": "ACCEPT"})
    own = Scenario.model_validate(
        {"id": "b", "input": "x", "expected": 1, "rubric": [{"kind": "numeric"}]}
    )
    assert [c.kind for c in rubric_for(plain, suite)] == ["label"]
    assert [c.kind for c in rubric_for(own, suite)] == ["numeric"]

    class Loaded:  # a loaded suite wraps the document
        def __init__(self, document: EvalSuite) -> None:
            self.suite = document

    assert [c.kind for c in rubric_for(plain, Loaded(suite))] == ["label"]


# --------------------------------------------------------------------------- hostile outputs

ONE_OF_EACH = [
    crit(kind="label", labels=["ACCEPT", "REJECT"]),
    crit(kind="exact"),
    crit(kind="exact", value="ACCEPT", case_sensitive=True),
    crit(kind="contains", value=["accept", "a"]),
    crit(kind="not_contains", value=["accept", "x"]),
    crit(kind="regex", pattern=r"(a+)+b"),
    crit(kind="json_schema", schema=SCHEMA),
    crit(kind="json_field", path="a"),
    crit(kind="json_field", path="$.a[0].b"),
    crit(kind="json_field", path="$"),
    crit(kind="json_field", path="a[0].b", value=1),
    crit(kind="numeric", tolerance=0.5),
    crit(kind="numeric", value=1),
    crit(kind="length", max_tokens=5, max_chars=100),
    crit(kind="judge", model="m", rubric="r"),
]
assert {c.kind for c in ONE_OF_EACH} == set(CRITERION_KINDS)

HOSTILE = [
    "", " ", "x" * 1_000_000, "\udcff\udcfe", "\ufffd\ufffd", "{'a': 1}", '{"a": 1,}', '{"a": ',
    '```json\n{"a": 1}\n```', "NaN", "Infinity", "-0", "1e309", "ACCEPT" * 10000,
    b"\xff\xfe".decode("utf-8", errors="surrogateescape"), None, "\x00", "9" * 5000,
]  # fmt: skip


def _judge(rubric: str, model: str, output: str, expected: Any) -> tuple[float, str]:
    return float(len(output) % 3) / 2, output[:50]


@pytest.mark.parametrize("output", HOSTILE, ids=lambda o: repr(o)[:24])
@pytest.mark.parametrize("expected", ["ACCEPT", 1, None, {"a": 1}])
@pytest.mark.parametrize("judge", [None, _judge], ids=["nojudge", "judge"])
def test_hostile_outputs_never_raise(output: Any, expected: Any, judge: Any) -> None:
    ctx = ScoringContext(expected=expected, judge=judge)
    for spec in ONE_OF_EACH:
        start = time.perf_counter()
        value, reason = run_criterion(spec, output, ctx)
        elapsed = time.perf_counter() - start
        assert isinstance(value, float) and 0.0 <= value <= 1.0, spec.kind
        assert isinstance(reason, str)
        reason.encode("utf-8")  # reasons go into JSON reports: no lone surrogates
        assert elapsed < 10, (spec.kind, elapsed)  # a hang guard, not a speed check
    result = score_output(ONE_OF_EACH, output, ctx, 0.5, LABELS)
    assert 0.0 <= result.score <= 1.0 and len(result.criteria) == len(ONE_OF_EACH)


def test_throughput_sanity() -> None:
    """Reward-sized batches run without trouble (reported, not asserted on speed)."""
    rubric = [
        crit(kind="label"),
        crit(kind="length", max_tokens=8),
        crit(kind="regex", pattern="T"),
    ]
    ctx = ScoringContext(expected="ACCEPT", labels=["ACCEPT", "REJECT"])
    outputs = ["ACCEPT", "reject.", "**Accept** it", "maybe"] * 500
    start = time.perf_counter()
    scores = [score_output(rubric, o, ctx, 1.0, LABELS).score for o in outputs]
    print(f"{len(outputs) / (time.perf_counter() - start):,.0f} outputs/s")
    assert len(scores) == 2000 and max(scores) == 1.0 and min(scores) < 1.0
