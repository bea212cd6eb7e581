"""Evaluation end to end on the demo suite with a rule-following backend, recorded in a
real git event log; paired comparison on a synthetic known difference."""

from __future__ import annotations

import json
import random
import re

import pytest

from modelsmith.evaluation.composite import compute_report
from modelsmith.evaluation.results import EvalError
from modelsmith.evaluation.runner import EvalSettings, plan_items, runs_from_jsonl
from modelsmith.evaluation.service import compare, evaluate, find_evaluation
from modelsmith.evaluation.stats import percentile
from modelsmith.events.gitstore import GitEventStore
from modelsmith.inference.base import Backend, Generation
from modelsmith.specs import load_repository

BLOCKED = ("casino-ads.example", "clickfarm.example", "malware-cdn.example", "fake-news.example")


class PolicyBackend:
    """Answers by the written policy, wrong on a chosen share of inputs (seeded)."""

    name = "policy"

    def __init__(self, error_rate: float = 0.0, seed: int = 0, prefix: str = " ") -> None:
        self.model_ref = f"policy-{error_rate}"
        self.error_rate, self.seed, self.prefix = error_rate, seed, prefix
        self.calls: list[int] = []

    def generate(self, requests, progress=None):
        self.calls.append(len(requests))
        out = []
        for i, req in enumerate(requests):
            bid = req.prompt.rsplit("Bid: ", 1)[1]
            domain = re.search(r"([a-z-]+\.example)", bid).group(1)
            ctr = float(re.search(r"(\d+(?:\.\d+)?)%", bid).group(1))
            label = "REJECT" if domain in BLOCKED or ctr < 0.5 else "ACCEPT"
            if random.Random(f"{self.seed}:{bid}").random() < self.error_rate:
                label = "ACCEPT" if label == "REJECT" else "REJECT"
            out.append(Generation(self.prefix + label, 2, 1.0))
            if progress:
                progress(i + 1, len(requests))
        return out

    def count_tokens(self, text):
        return len(text.split())

    def close(self):
        pass


@pytest.fixture
def repo(demo_repo):
    return load_repository(demo_repo)


@pytest.fixture
def store(demo_repo):
    return GitEventStore(demo_repo)


def test_the_policy_backend_implements_the_protocol():
    assert isinstance(PolicyBackend(), Backend)


def test_a_perfect_model_scores_one_and_the_evaluation_is_recorded(repo, store):
    backend = PolicyBackend()
    seen = []
    outcome = evaluate(repo, "rtb-quality", backend, model_ref="policy", store=store,
                       settings=EvalSettings(limit=40), progress=lambda d, t: seen.append(d))
    r = outcome.report
    assert r.core == 1.0 and r.robustness == 1.0 and r.heldout == 1.0
    assert r.composite == pytest.approx(1.0) and r.failed_ids == []
    # One batched call for every input; then the latency probe: a warm-up and 16 core
    # inputs, one request per call.
    assert seen and seen[-1] == backend.calls[0] and backend.calls[1:] == [1] * 17
    events = list(store.read("rtb-quality"))
    assert [e.type for e in events] == ["EvalStarted", "EvalCompleted"]
    done = events[1]
    assert done.data["composite"] == pytest.approx(1.0) and done.data["limit"] == 40
    assert done.data["suite_hash"] == repo.suites["rtb-quality"].suite_hash
    assert done.data["run_id"] == events[0].data["run_id"]
    blobs = store.evidence(done.id)
    runs = runs_from_jsonl(blobs["results.jsonl"])
    items = plan_items(repo.suites["rtb-quality"], EvalSettings(limit=40))
    assert len(runs) == len(items) == len(outcome.runs)
    assert all(r.outputs and r.criteria and r.criteria[0].reason for r in runs)
    assert json.loads(blobs["report.json"])["n_heldout"] == 40
    probed = [r for r in runs if r.alone_ms is not None]
    assert len(probed) == 16 and all(r.split == "core" and r.variant is None for r in probed)
    latency = json.loads(blobs["report.json"])["micro_parts"]["latency_p95"]
    # The latency benchmark reads the probe, not the batched call's wall time.
    assert latency["value"] == pytest.approx(percentile([r.alone_ms for r in probed], 95),
                                             abs=1e-6)  # the report keeps 6 decimals


def test_mistakes_lower_the_score_and_name_the_failures(repo):
    outcome = evaluate(repo, "rtb-quality", PolicyBackend(error_rate=0.3), model_ref="noisy",
                       store=None, settings=EvalSettings(limit=60))
    r = outcome.report
    assert 0.5 < r.core < 0.9 and r.failed_ids
    assert r.composite == compute_report(outcome.runs, repo.suites["rtb-quality"].suite).composite
    wrong = {run.id for run in outcome.runs if run.split == "core" and run.variant is None
             and not run.passed}
    assert set(r.failed_ids) == wrong


def test_output_that_is_not_a_label_fails_the_format_rate(repo):
    outcome = evaluate(repo, "rtb-quality", PolicyBackend(prefix="Verdict: "),
                       model_ref="chatty", store=None, settings=EvalSettings(limit=10))
    assert outcome.report.core == 0.0
    assert outcome.report.micro_parts["format_rate"]["score"] == 0.0


def test_compare_finds_a_known_difference(repo, store):
    settings = EvalSettings()
    evaluate(repo, "rtb-quality", PolicyBackend(error_rate=0.25), model_ref="base",
             store=store, settings=settings)
    evaluate(repo, "rtb-quality", PolicyBackend(error_rate=0.02), model_ref="tuned",
             store=store, settings=settings)
    better = compare(store, "rtb-quality", "base", "tuned")
    assert better.result.verdict == "better" and better.same_suite
    assert better.result.ci[0] > 0.1 and better.result.n == 320
    worse = compare(store, "rtb-quality", "tuned", "base")
    assert worse.result.verdict == "worse"
    same = compare(store, "rtb-quality", "base", "base")
    assert same.result.verdict == "inconclusive" and same.result.diff == 0
    changed = {d["id"] for d in better.deltas}
    assert len(changed) == better.result.wins + better.result.losses
    assert all(d["delta"] == d["candidate"] - d["baseline"] for d in better.deltas)
    assert same.deltas == []
    held = compare(store, "rtb-quality", "base", "tuned", split="heldout")
    assert held.result.n == 100
    by_id = compare(store, "rtb-quality", better.baseline.id[:10], better.candidate.id)
    assert by_id.result.diff == better.result.diff


def test_find_evaluation_explains_what_is_missing(repo, store):
    with pytest.raises(EvalError, match="no full evaluation"):
        find_evaluation(store, "rtb-quality", "nothing")
    evaluate(repo, "rtb-quality", PolicyBackend(), model_ref="quick", store=store,
             settings=EvalSettings(limit=5))
    with pytest.raises(EvalError, match="no full evaluation"):
        find_evaluation(store, "rtb-quality", "quick")  # a partial run is not a reference
    with pytest.raises(EvalError, match="no specialist"):
        evaluate(repo, "nope", PolicyBackend(), model_ref="x", store=None)

