"""Reference answers against their rubric: every scenario's expected value, answered as the
model would, must score 1.0 (what `modelsmith validate` checks after loading the specs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO_ROOT, SPEC_FIXTURE
from modelsmith.app import Modelsmith
from modelsmith.evaluation.references import reference_answer, reference_problems
from modelsmith.specs import SpecError, load_repository

SUITE = "evals/invoice/suite.yaml"
SCENARIOS = "evals/invoice/scenarios.jsonl"


def _invoice(root: Path, rubric: list[dict[str, Any]], rows: list[dict[str, Any] | None],
             output: dict[str, Any] | None = None) -> Path:
    """Add the suite ``invoice`` (``rows``: scenarios, ``None`` a blank line) and, given an
    output contract, a specialist measured by it."""
    folder = root / "evals" / "invoice"
    folder.mkdir(parents=True)
    (root / SUITE).write_text(
        "apiVersion: modelsmith/v1\nkind: EvalSuite\nmetadata: {name: invoice}\n"
        f"spec:\n  scenarios: [scenarios.jsonl]\n  rubric: {json.dumps(rubric)}\n"
    )
    lines = [json.dumps({"input": f"invoice {i}", **row}) if row else ""
             for i, row in enumerate(rows)]
    (root / SCENARIOS).write_text("\n".join(lines) + "\n")
    if output is not None:
        text = (root / "specialists" / "rtb-quality.yaml").read_text()
        text = text.replace("name: rtb-quality", "name: invoice")
        text = text.replace("evals: rtb-quality", "evals: invoice")
        text = text.replace("    output:\n      kind: label\n      labels: [ACCEPT, REJECT]\n",
                            f"    output: {json.dumps(output)}\n")
        (root / "specialists" / "invoice.yaml").write_text(text)
    return root


def problems(root: Path) -> list[str]:
    return [str(issue) for issue in reference_problems(load_repository(root))]


@pytest.mark.parametrize("root", [REPO_ROOT, SPEC_FIXTURE], ids=["demo", "fixture"])
def test_the_demo_and_the_fixtures_references_pass(root: Path) -> None:
    assert reference_problems(load_repository(root)) == []


def test_reference_answer_is_the_training_answer() -> None:
    from modelsmith.training.dataset import TrainingRow

    for expected in ["ACCEPT", {"vendor": "Açme", "total": 12.5}, [1, None], 3, True, None]:
        row = TrainingRow("r", "p", "i", expected, "variant", "s")
        assert reference_answer(expected) == row.answer


def test_a_json_field_path_the_expected_value_lacks_names_file_line_and_criterion(
    spec_files: Path,
) -> None:
    rubric = [{"kind": "json_field", "path": "$.vendor"}, {"kind": "json_field", "path": "total"}]
    rows = [{"id": "i-1", "expected": {"vendor": "Acme", "total": 3}}, None,
            {"id": "i-2", "expected": {"vendor": "Bolt", "amount": 3}, "split": "heldout"}]
    _invoice(spec_files, rubric, rows)
    assert problems(spec_files) == [
        f"{SCENARIOS}:3: expected: the reference answer scores 0 on {SUITE} spec.rubric[1] "
        "(json_field 'total'): the expected value has no 'total'"
    ]


@pytest.mark.parametrize(
    ("criterion", "expected", "why"),
    [({"kind": "label", "labels": ["A", "B"]}, "C", "rubric[0] (label): 'C' is not a label"),
     ({"kind": "regex", "pattern": "^INV-[0-9]+$"}, "inv-12", "rubric[0] (regex /^INV-[0-9]+$/)"),
     ({"kind": "json_field", "path": "lines[2].sku"}, {"lines": [{"sku": "A"}]},
      "(json_field 'lines[2].sku'): the expected value has no 'lines[2].sku'"),
     ({"kind": "json_field", "path": "a", "value": None}, {"a": 1}, "a is 1, expected None"),
     ({"kind": "json_field", "path": "a"}, "{\"a\": 1}", "the expected value has no 'a'"),
     ({"kind": "json_schema", "schema": {"type": "object", "required": ["total"]}},
      {"vendor": "Acme"}, "(json_schema): $: 'total' is a required property"),
     ({"kind": "contains", "value": ["Acme", "EUR"]}, "Acme 12", "scores 0.5 on rubric[0]"),
     ({"kind": "not_contains", "value": ["sorry"]}, "Sorry, no", "(not_contains)"),
     ({"kind": "exact", "value": "ACCEPT"}, "REJECT", "(exact): 'REJECT' != 'ACCEPT'"),
     ({"kind": "numeric"}, {"total": 3}, "(numeric): no numeric target"),
     ({"kind": "length", "max_chars": 3}, "four", "(length): 4 chars > 3"),
     ({"kind": "length", "max_tokens": 50, "max_chars": 3}, "four", "(length): 4 chars > 3"),
     ({"kind": "exact"}, None, "(exact): no expected value")],
)  # fmt: skip
def test_a_reference_failing_its_own_rubric(spec_files: Path, criterion: dict[str, Any],
                                            expected: Any, why: str) -> None:
    _invoice(spec_files, [{"kind": "length", "max_chars": 1000}],
             [{"id": "ok", "expected": "fine"},
              {"id": "bad", "expected": expected, "rubric": [criterion]}])
    (found,) = problems(spec_files)
    assert found.startswith(f"{SCENARIOS}:2: expected: the reference answer scores "), found
    assert why in found


@pytest.mark.parametrize(
    ("criterion", "expected"),
    [({"kind": "json_field", "path": "vendor"}, {"vendor": "Acme"}),
     ({"kind": "json_field", "path": "$.vendor"}, {"vendor": "Acme"}),
     ({"kind": "json_field", "path": "$"}, {"vendor": "Acme", "lines": [1.5, None]}),
     ({"kind": "json_field", "path": "$[1].b"}, [{}, {"b": [True]}]),
     ({"kind": "json_field", "path": "a", "value": None}, {"a": None}),
     ({"kind": "json_field", "path": "a", "value": "x"}, {"a": "x", "b": 2}),
     ({"kind": "exact"}, {"vendor": "Açme"}),
     ({"kind": "exact", "case_sensitive": True}, "Mixed Case"),
     ({"kind": "numeric"}, 12.5), ({"kind": "numeric"}, "12.5"),
     ({"kind": "label", "labels": ["A", "B"]}, "B"),
     ({"kind": "regex", "pattern": "^\\{\"a\": 1\\}$"}, {"a": 1}),
     ({"kind": "json_schema", "schema": {"type": "array"}}, [1]),
     ({"kind": "judge", "model": "m", "rubric": "r"}, "judged online only"),
     ({"kind": "length", "max_tokens": 1}, "many words: no tokenizer offline"),
     ({"kind": "length", "max_tokens": 1, "max_chars": 100}, "words, but few characters")],
)  # fmt: skip
def test_references_that_pass_or_cannot_be_checked_offline(
    spec_files: Path, criterion: dict[str, Any], expected: Any
) -> None:
    _invoice(spec_files, [criterion], [{"id": "i-1", "expected": expected}])
    assert problems(spec_files) == []


def test_every_failing_criterion_is_named(spec_files: Path) -> None:
    rubric = [{"kind": "json_field", "path": "total"}, {"kind": "judge", "model": "m",
              "rubric": "r"}, {"kind": "regex", "pattern": "EUR"}]
    _invoice(spec_files, rubric, [{"id": "i-1", "expected": {"vendor": "Acme"}}])
    found = problems(spec_files)
    assert [f.split(" (")[1].split(")")[0] for f in found] == ["json_field 'total'", "regex /EUR/"]


def test_the_output_contract_of_each_specialist_is_checked(spec_files: Path) -> None:
    contract = {"kind": "json", "schema": {"type": "object", "required": ["total"]}}
    rows = [{"id": "i-1", "expected": {"total": 3}}, {"id": "i-2", "expected": {"vendor": "x"}},
            {"id": "i-3", "expected": "not json"}]
    _invoice(spec_files, [{"kind": "length", "max_chars": 100}], rows, output=contract)
    found = problems(spec_files)
    assert found == [
        f"{SCENARIOS}:2: expected: the reference answer '{{\"vendor\": \"x\"}}' breaks the json "
        "output contract of specialist 'invoice'",
        f"{SCENARIOS}:3: expected: the reference answer 'not json' breaks the json output "
        "contract of specialist 'invoice'",
    ]


def test_a_specialists_labels_reach_the_label_criterion(spec_files: Path) -> None:
    contract = {"kind": "label", "labels": ["PAID", "OPEN"]}
    _invoice(spec_files, [{"kind": "label"}], [{"id": "i-1", "expected": "PAID"}], contract)
    assert problems(spec_files) == []
    rubric = [{"kind": "label", "labels": ["PAID", "LATE"]}]  # the rubric's own labels win
    (spec_files / SCENARIOS).write_text(json.dumps(
        {"id": "i-1", "input": "x", "expected": "OPEN", "rubric": rubric}) + "\n")
    assert problems(spec_files) == [
        f"{SCENARIOS}:1: expected: the reference answer scores 0 on rubric[0] (label): "
        "'OPEN' is not a label (expected 'OPEN')"
    ]


def test_many_failures_are_capped_per_file(spec_files: Path) -> None:
    rows = [{"id": f"i-{i}", "expected": {"vendor": "Acme"}} for i in range(80)]
    _invoice(spec_files, [{"kind": "json_field", "path": "total"}], rows)
    found = problems(spec_files)
    assert len(found) == 51  # the summary has no line, so it sorts first
    assert found[0] == f"{SCENARIOS}: more than 50 issues; the rest are not shown"
    assert found[-1].startswith(f"{SCENARIOS}:50: expected: ")


def test_validate_raises_the_reference_problems(spec_files: Path) -> None:
    _invoice(spec_files, [{"kind": "json_field", "path": "total"}],
             [{"id": "i-1", "expected": {"vendor": "Acme"}}])
    with pytest.raises(SpecError) as caught:
        Modelsmith.validate(spec_files)
    (issue,) = caught.value.issues
    assert (issue.file, issue.line, issue.field) == (SCENARIOS, 1, "expected")
    assert "json_field 'total'" in issue.message
