"""The judge criterion graded by a model behind a real OpenAI-compatible HTTP server."""

from __future__ import annotations

import pytest

from modelsmith.evaluation.judge import BackendJudge, parse_verdict
from modelsmith.evaluation.runner import EvalSettings
from modelsmith.evaluation.service import evaluate
from modelsmith.inference import make_backend
from modelsmith.specs import load_repository
from openai_fake import FakeOpenAI, completion
from test_eval_service import PolicyBackend


@pytest.mark.parametrize(("reply", "expected"), [
    ("8\nclear and correct", (0.8, "clear and correct")),
    ("Score: 7/10 - mostly right", (0.7, "Score: 7/10 - mostly right")),
    ("10", (1.0, "10")),
    ("0\nwrong label", (0.0, "wrong label")),
    ("12\ntoo generous", (1.0, "too generous")),
    ("6.5\nok", (0.65, "ok")),
])
def test_parse_verdict(reply, expected):
    score, reason = parse_verdict(reply)
    assert score == pytest.approx(expected[0]) and reason == expected[1]


@pytest.mark.parametrize("reply", ["", "   ", "no idea", "ACCEPT"])
def test_replies_without_a_score(reply):
    assert parse_verdict(reply) is None


@pytest.fixture
def fake(monkeypatch):
    server = FakeOpenAI()
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    yield server
    server.close()


def _judge() -> BackendJudge:
    return BackendJudge(lambda ref: make_backend(ref, None))


def test_the_judge_asks_with_the_rubric_and_parses_the_grade(fake):
    fake.responder = lambda body: (200, completion("9\nmatches the reference"), {})
    judge = _judge()
    score, reason = judge("Is it the right verdict?", "openai:grader", " ACCEPT", "ACCEPT")
    assert (score, reason) == (0.9, "matches the reference")
    _, body = fake.calls[0]
    assert body["model"] == "grader" and body["temperature"] == 0
    prompt = body["messages"][-1]["content"]
    assert "Is it the right verdict?" in prompt and "ACCEPT" in prompt
    judge("r", "openai:grader", "x", "y")
    assert len(fake.calls) == 2  # one backend, reused
    judge.close()


def test_a_judge_that_fails_scores_zero_with_the_reason(fake):
    fake.responder = lambda body: (200, completion("I cannot grade this"), {})
    score, reason = _judge()("r", "openai:grader", "x", "y")
    assert score == 0.0 and "gave no score" in reason
    fake.responder = lambda body: (400, {"error": {"message": "context too long"}}, {})
    score, reason = _judge()("r", "openai:grader", "x", "y")
    assert score == 0.0 and "failed" in reason


def test_a_suite_with_a_judge_criterion_is_graded_by_the_judge(demo_repo, fake):
    suite = demo_repo / "evals" / "rtb-quality" / "suite.yaml"
    suite.write_text(suite.read_text().replace(
        "      required: true\n",
        "      required: true\n    - kind: judge\n      model: openai:grader\n"
        "      rubric: The verdict must follow the bid policy.\n      weight: 1.0\n", 1))
    fake.responder = lambda body: (200, completion("5\nhalf marks"), {})
    repo = load_repository(demo_repo)
    judge = _judge()
    outcome = evaluate(repo, "rtb-quality", PolicyBackend(), model_ref="policy", store=None,
                       settings=EvalSettings(limit=3, include_heldout=False), judge=judge)
    judge.close()
    # label 1.0 (weight 1) and judge 0.5 (weight 1): every scenario scores 0.75
    assert {run.score for run in outcome.runs} == {0.75}
    kinds = {c.kind: c for c in outcome.runs[0].criteria}
    assert kinds["judge"].reason.endswith("half marks")
    assert len(fake.calls) == len(outcome.runs)
