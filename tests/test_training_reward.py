"""The GRPO reward is the eval scorer: identical scores for identical outputs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from modelsmith.evaluation.runner import EvalSettings, run_suite
from modelsmith.inference.base import Generation
from modelsmith.specs import load_repository, load_specialist_file, load_suite
from modelsmith.training.reward import (
    EXPECTED_JSON,
    RewardInputError,
    completion_text,
    encode_expected,
    make_reward_fn,
    rubric_scores,
)

# Well-formed, decorated, wrong, malformed and hostile outputs.
LABEL_OUTPUTS = [
    " ACCEPT", " REJECT", "ACCEPT", "reject", "**ACCEPT**", "- REJECT.", "`ACCEPT`",
    "Verdict: ACCEPT", "ACCEPTED", "MAYBE", "", "   ", "\n\nREJECT\n", "REJECT because",
    "ACCEPT REJECT", "{\"label\": \"ACCEPT\"}", "\x00\x01", "\udcff ACCEPT", "ÄCCEPT",
    "accept" * 500, "'REJECT'", "(ACCEPT)", "a1\ufffdpor",
]
JSON_OUTPUTS = [
    '{"amount": 12.5, "currency": "EUR"}', '{"amount": 12.5, "currency": "USD"}',
    '```json\n{"amount": 12.5, "currency": "EUR"}\n```', '{"amount": "12.5"}', "12.5 EUR",
    '{"amount": 12.5, "currency": "EUR",}', "{'amount': 12.5}", "[1, 2]", "null", "",
    '{"amount": NaN, "currency": "EUR"}', '{"amount": 1e999}', "{" * 300, "total 13 EUR",
    '{"amount": 12.50000000001, "currency": "EUR", "note": "refund please"}', "```json\n{",
]


class ScriptedBackend:
    """Returns outputs from a fixed pool, cycling in a seeded order."""

    name = "scripted"
    model_ref = "scripted"

    def __init__(self, outputs: list[str], seed: int = 0) -> None:
        self.outputs = outputs
        self.rng = random.Random(seed)

    def generate(self, requests, progress=None):
        return [Generation(self.rng.choice(self.outputs), 1, 1.0) for _ in requests]

    def count_tokens(self, text: str) -> int:
        return len(text) // 4 + 1

    def close(self) -> None:
        pass


def _extract_fixture(root: Path) -> tuple[Path, Path]:
    """A JSON specialist whose suite mixes every deterministic criterion kind, with
    per-scenario rubric overrides."""
    (root / "specialists").mkdir(parents=True)
    suite_dir = root / "evals" / "extract"
    suite_dir.mkdir(parents=True)
    specialist = root / "specialists" / "extract.yaml"
    specialist.write_text(
        "apiVersion: modelsmith/v1\nkind: Specialist\nmetadata: {name: extract}\n"
        "spec:\n  base: tiny-test\n  evals: extract\n"
        "  task:\n    prompt_template: 'Extract the refund: {input}'\n"
        "    output: {kind: json, schema: {type: object, required: [amount]}}\n"
        "  training: {method: grpo, profile: cpu-tiny}\n  target: {composite: 0.9}\n",
        encoding="utf-8",
    )
    (suite_dir / "suite.yaml").write_text(
        "apiVersion: modelsmith/v1\nkind: EvalSuite\nmetadata: {name: extract}\n"
        "spec:\n  scenarios: [scenarios.jsonl]\n  pass_threshold: 0.8\n  rubric:\n"
        "    - {kind: json_schema, schema: {type: object, required: [amount, currency]},"
        " required: true}\n"
        "    - {kind: json_field, path: amount, weight: 2}\n"
        "    - {kind: length, max_tokens: 12, max_chars: 80}\n",
        encoding="utf-8",
    )
    scenarios = [
        {"id": "x-1", "input": "refund 12.5 EUR", "expected": {"amount": 12.5, "currency": "EUR"},
         "variants": ["12.5 euros back", "give back EUR 12.5"]},
        {"id": "x-2", "input": "refund 12.5 dollars", "expected": {"amount": 12.5,
         "currency": "USD"}, "split": "heldout"},
        {"id": "x-3", "input": "thirteen", "expected": 13,
         "rubric": [{"kind": "numeric", "tolerance": 0.5},
                    {"kind": "contains", "value": ["EUR", "amount"]},
                    {"kind": "not_contains", "value": ["refund", "sorry"], "weight": 0.5}]},
        {"id": "x-4", "input": "currency", "expected": {"amount": 12.5, "currency": "EUR"},
         "rubric": [{"kind": "json_field", "path": "currency", "value": "EUR"},
                    {"kind": "regex", "pattern": "\"amount\"\\s*:\\s*12"},
                    {"kind": "exact", "value": "{\"amount\": 12.5, \"currency\": \"EUR\"}"}]},
    ]
    (suite_dir / "scenarios.jsonl").write_text(
        "".join(json.dumps(s) + "\n" for s in scenarios), encoding="utf-8"
    )
    return specialist, suite_dir


@pytest.fixture(scope="module")
def demo():
    repo = load_repository(REPO_ROOT)
    specialist = repo.specialists["rtb-quality"]
    return specialist, repo.suite_for(specialist)


@pytest.fixture
def extract(tmp_path):
    specialist_file, suite_dir = _extract_fixture(tmp_path)
    return (load_specialist_file(specialist_file, tmp_path), load_suite(suite_dir, tmp_path))


def _assert_reward_matches_eval(specialist, suite, outputs, seed):
    backend = ScriptedBackend(outputs, seed)
    runs = run_suite(specialist, suite, backend, EvalSettings())
    assert len(runs) > 3
    reward = make_reward_fn(specialist, suite, count_tokens=backend.count_tokens)
    task = specialist.spec.task
    by_id = {sc.id: sc for sc in suite.scenarios}
    completions = [run.outputs[0] for run in runs]
    prompts = [task.render(run.input) for run in runs]
    got = reward(
        prompts, completions,
        expected=[by_id[run.id].expected for run in runs],
        scenario_id=[run.id for run in runs],
    )
    assert got == [run.score for run in runs]  # identical, not approximately equal
    full = rubric_scores(
        specialist, suite, completions, [run.id for run in runs],
        [by_id[run.id].expected for run in runs], count_tokens=backend.count_tokens,
    )
    assert [s.passed for s in full] == [run.passed for run in runs]
    assert [list(s.criteria) for s in full] == [run.criteria for run in runs]
    return got


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reward_equals_the_eval_score_on_the_demo_suite(demo, seed):
    specialist, suite = demo
    scores = _assert_reward_matches_eval(specialist, suite, LABEL_OUTPUTS, seed)
    assert 0.0 in scores and 1.0 in scores  # both right and wrong outputs were scored


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_reward_equals_the_eval_score_on_every_criterion_kind(extract, seed):
    specialist, suite = extract
    scores = _assert_reward_matches_eval(specialist, suite, JSON_OUTPUTS, seed)
    assert len(set(scores)) > 2  # partial credit shows up


def test_every_output_on_every_demo_scenario(demo):
    specialist, suite = demo
    reward = make_reward_fn(specialist, suite)
    from modelsmith.evaluation.criteria import ScoringContext
    from modelsmith.evaluation.scoring import rubric_for, score_output

    contract = specialist.spec.task.output
    threshold = suite.suite.spec.pass_threshold
    for sc in suite.scenarios[::7]:
        ctx = ScoringContext(expected=sc.expected, labels=list(contract.labels))
        want = [score_output(rubric_for(sc, suite), out, ctx, threshold, contract).score
                for out in LABEL_OUTPUTS]
        n = len(LABEL_OUTPUTS)
        got = reward(None, LABEL_OUTPUTS, expected=[sc.expected] * n, scenario_id=[sc.id] * n)
        assert got == want, sc.id


def test_expected_as_json_column_and_trl_extras(extract):
    specialist, suite = extract
    reward = make_reward_fn(specialist, suite)
    logged = {}
    expected = [{"amount": 12.5, "currency": "EUR"}, {"amount": 12.5}]
    got = reward(
        prompts=["p", "p"],
        completions=['{"amount": 12.5, "currency": "EUR"}', '{"amount": 12.5}'],
        completion_ids=[[1], [2]],
        trainer_state=object(),
        log_extra=lambda column, values: None,
        log_metric=lambda name, value: logged.__setitem__(name, value),
        scenario_id=["x-4", "x-1"],
        **{EXPECTED_JSON: [encode_expected(e) for e in expected]},
        unrelated_column=[1, 2],
    )
    plain = reward(None, ['{"amount": 12.5, "currency": "EUR"}', '{"amount": 12.5}'],
                   expected=expected, scenario_id=["x-4", "x-1"])
    assert got == plain
    assert got[0] == 1.0 and 0.0 < got[1] < 1.0  # x-1 fails only the schema criterion
    assert logged == {"rubric/pass_rate": 0.5, "rubric/format_rate": 1.0}


def test_unknown_scenarios_use_the_suite_default_rubric(extract):
    specialist, suite = extract
    reward = make_reward_fn(specialist, suite)
    out = "amount: 13 EUR"
    # x-3 has its own (numeric) rubric; an augmented row from an unknown id does not.
    assert reward(None, [out], expected=[13], scenario_id=["x-3"]) != reward(
        None, [out], expected=[13], scenario_id=["x-3-near0"])
    assert reward(None, [out], expected=[13], scenario_id=["x-3-near0"]) == reward(
        None, [out], expected=[13])


def test_chat_completions_score_like_plain_text(demo):
    specialist, suite = demo
    reward = make_reward_fn(specialist, suite)
    sc = suite.core[0]
    texts = [" ACCEPT", " REJECT", "maybe", ""]
    chats = [[{"role": "assistant", "content": t}] for t in texts]
    with_history = [[{"role": "user", "content": "x"}, {"role": "assistant", "content": t}]
                    for t in texts]
    parts = [[{"role": "assistant", "content": [{"type": "text", "text": t}]}] for t in texts]
    rows = {"expected": [sc.expected] * 4, "scenario_id": [sc.id] * 4}
    plain = reward(None, texts, **rows)
    assert plain == reward(None, chats, **rows) == reward(None, with_history, **rows)
    assert plain == reward(None, parts, **rows)
    assert sorted(plain) == [0.0, 0.0, 0.0, 1.0]


def test_completion_text_handles_odd_shapes():
    assert completion_text(None) == ""
    assert completion_text([]) == ""
    assert completion_text({"role": "assistant", "content": "A"}) == "A"
    assert completion_text([{"role": "assistant", "content": None}]) == ""
    assert completion_text([{"role": "user", "content": "only user"}]) == "only user"


def test_the_reward_needs_expected_values(demo):
    specialist, suite = demo
    reward = make_reward_fn(specialist, suite)
    with pytest.raises(RewardInputError, match="expected"):
        reward(None, [" ACCEPT"], scenario_id=["rtb-0001"])
    with pytest.raises(RewardInputError, match="1 completions but 2"):
        reward(None, [" ACCEPT"], expected=["ACCEPT", "REJECT"])


def test_the_reward_is_fast(demo):
    import time

    specialist, suite = demo
    reward = make_reward_fn(specialist, suite)
    ids = [sc.id for sc in suite.core][:64] * 16
    expected = [sc.expected for sc in suite.core][:64] * 16
    outputs = [LABEL_OUTPUTS[i % len(LABEL_OUTPUTS)] for i in range(len(ids))]
    started = time.perf_counter()
    reward(None, outputs, expected=expected, scenario_id=ids)
    assert time.perf_counter() - started < 0.5  # 1,024 completions: a GRPO step's worth
