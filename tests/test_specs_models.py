"""Spec models, cross-references and JSON Schema, on copies of the demo repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from conftest import REPO_ROOT as REPO
from modelsmith.specs import (
    ClustersConfig,
    EvalSuite,
    LabelOutput,
    RegexCriterion,
    Release,
    Scenario,
    SpecError,
    SpecIssue,
    TaskSpec,
    json_schemas,
    load_clusters,
    load_policy_file,
    load_repository,
    load_specialist_file,
    load_suite,
    parse_json_path,
    validate_repository,
    write_schemas,
)

SPECIALIST = "specialists/rtb-quality.yaml"
SUITE = "evals/rtb-quality/suite.yaml"
SCENARIOS = "evals/rtb-quality/scenarios.jsonl"
PROMOTION = "policies/promotion.yaml"
ROUTING = "policies/routing.yaml"
CLUSTERS = "config/clusters.json"


@pytest.fixture
def repo(spec_files: Path) -> Path:
    return spec_files


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text().split("\n"), 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def only_issue(root: Path) -> SpecIssue:
    issues = validate_repository(root)
    assert len(issues) == 1, "\n".join(map(str, issues))
    return issues[0]


# --------------------------------------------------------------------------- the demo


def test_demo_repository_validates_clean() -> None:
    assert validate_repository(REPO) == []


def test_demo_repository_loads() -> None:
    repo = load_repository(REPO)
    rtb = repo.specialists["rtb-quality"]
    assert rtb.spec.base == "smollm2-135m"
    assert isinstance(rtb.spec.task.output, LabelOutput)
    assert rtb.spec.task.output.labels == ["ACCEPT", "REJECT"]
    assert rtb.spec.training.method == "sft+grpo"
    assert rtb.release.stages() == {"production": None, "canary": None, "shadow": None}

    suite = repo.suite_for(rtb)
    assert len(suite.scenarios) == len(suite.core) + len(suite.heldout) + len(suite.dev)
    assert len(suite.dev) == 100 and not suite.train
    assert len(suite.heldout) >= 100 and len(suite.core) >= 300
    assert {s.expected for s in suite.scenarios} == {"ACCEPT", "REJECT"}
    assert any(s.variants for s in suite.core)
    assert len(suite.suite_hash) == 64

    policy = repo.policy_for(rtb)
    assert [s.name for s in policy.spec.stages] == ["shadow", "canary", "production"]
    assert repo.routing is not None and repo.routing.spec.default == "rtb-quality"
    assert repo.clusters.profiles["cpu-lora"].lora is not None
    assert repo.sources[("Specialist", "rtb-quality")] == REPO / SPECIALIST


def test_suite_hash_is_stable_and_tracks_every_file(repo: Path) -> None:
    first = load_repository(repo).suites["rtb-quality"].suite_hash
    assert load_repository(repo).suites["rtb-quality"].suite_hash == first
    scenarios = repo / SCENARIOS
    scenarios.write_text(scenarios.read_text() + "\n")
    second = load_repository(repo).suites["rtb-quality"].suite_hash
    assert second != first
    edit(repo / SUITE, "description: Bid", "description: The bid")
    assert load_repository(repo).suites["rtb-quality"].suite_hash not in (first, second)


def test_issue_formatting() -> None:
    issue = SpecIssue("specialists/rtb.yaml", 12, 5, "spec.target.composite", "must be <= 1")
    assert str(issue) == "specialists/rtb.yaml:12:5: spec.target.composite: must be <= 1"
    assert str(SpecIssue("config/clusters.json", None, None, None, "file not found")) == (
        "config/clusters.json: file not found"
    )
    assert str(SpecIssue("a.jsonl", 3, None, "id", "bad")) == "a.jsonl:3: id: bad"
    assert issue.to_dict() == {
        "file": "specialists/rtb.yaml",
        "line": 12,
        "column": 5,
        "field": "spec.target.composite",
        "message": "must be <= 1",
    }
    error = SpecError([issue, SpecIssue("b.yaml", 1, 1, None, "x")])
    assert str(error) == f"{issue}\nb.yaml:1:1: x"
    assert len(error.issues) == 2


def test_load_repository_raises_with_every_issue(repo: Path) -> None:
    edit(repo / SPECIALIST, "composite: 0.9", "composite: 1.5")
    edit(repo / PROMOTION, "window: 200", "window: 0")
    with pytest.raises(SpecError) as caught:
        load_repository(repo)
    assert [i.field for i in caught.value.issues] == [
        "spec.rollback.window",
        "spec.target.composite",
    ]


# --------------------------------------------------------------------------- model checks


def test_error_names_file_line_column_and_field(repo: Path) -> None:
    edit(repo / SPECIALIST, "composite: 0.9", "composite: 1.5")
    issue = only_issue(repo)
    line = line_of(repo / SPECIALIST, "composite:")
    assert str(issue) == f"{SPECIALIST}:{line}:5: spec.target.composite: must be <= 1"


SPECIALIST_CASES = [
    ("  target:", "  trget:", "spec.trget", "unknown field 'trget' (did you mean 'target'?)"),
    ("    sustained: 3", "    sustained: 0", "spec.target.sustained", "must be >= 1"),
    ("composite: 0.9", "composite: 0", "spec.target.composite", "must be > 0"),
    ("[ACCEPT, REJECT]", "[ACCEPT, ACCEPT]", "spec.task.output.labels", "duplicate label"),
    ("[ACCEPT, REJECT]", "[ACCEPT]", "spec.task.output.labels", "at least 2 items"),
    ("      kind: label", "      kind: lbl", "spec.task.output.kind", "unknown kind 'lbl'"),
    ("Bid: {input}", "Bid: {text}", "spec.task.prompt_template", "'{input}'"),
    ("method: sft+grpo", "method: rlhf", "spec.training.method", "must be 'grpo', 'sft'"),
    ("  name: rtb-quality", "  name: rtb-other", "metadata.name", "must match the file name"),
    ("  name: rtb-quality", "  name: RTB", "metadata.name", "invalid name 'RTB'"),
    ("  production: null", "  production: 2.0", "release.production", "must be a string"),
    ("  production: null", "  production: version2", "release.production", "v1, v2"),
    ("  canary: null", "  canary: {version: v2, traffic: 1}", "release.canary.traffic", "< 1"),
    ("team: ads", "team: [ads]", "metadata.labels.team", "must be a string"),
]


@pytest.mark.parametrize(("old", "new", "field", "message"), SPECIALIST_CASES)
def test_specialist_checks(repo: Path, old: str, new: str, field: str, message: str) -> None:
    edit(repo / SPECIALIST, old, new)
    issue = only_issue(repo)
    assert issue.file == SPECIALIST
    assert issue.field == field
    assert message in issue.message
    assert issue.line == line_of(repo / SPECIALIST, new.strip())


def test_release_version_in_two_stages(repo: Path) -> None:
    edit(repo / SPECIALIST, "  production: null", "  production: v2")
    edit(repo / SPECIALIST, "  canary: null", "  canary:\n    version: v2\n    traffic: 0.1")
    issue = only_issue(repo)
    assert issue.field == "release.canary.version"
    assert issue.line == line_of(repo / SPECIALIST, "version: v2")
    assert "already in production" in issue.message


SUITE_CASES = [
    ("micro: 0.1", "micro: 0.2", "spec.weights", "must sum to 1"),
    ("pass_threshold: 1.0", "pass_threshold: 1.5", "spec.pass_threshold", "<= 1"),
    ("    - kind: label\n", "    - kind: labels\n", "spec.rubric[0].kind", "unknown kind"),
    ("    - kind: label\n", "    - kind: length\n", "spec.rubric[0]", "max_tokens or max_chars"),
    (
        "    - kind: label\n",
        "    - kind: regex\n      pattern: '(ab'\n",
        "spec.rubric[0].pattern",
        "invalid regular expression",
    ),
    (
        "    - kind: label\n",
        "    - kind: json_field\n      path: 'a..b'\n",
        "spec.rubric[0].path",
        "invalid JSON path",
    ),
    (
        "    - kind: label\n",
        "    - kind: json_field\n      path: '$$.a'\n",
        "spec.rubric[0].path",
        "'$' may only start the path",
    ),
    (
        "    - kind: label\n",
        "    - kind: json_field\n      path: 'a[x]'\n",
        "spec.rubric[0].path",
        "list index",
    ),
    (
        "    - kind: label\n",
        "    - kind: numeric\n      tolerance: -1\n",
        "spec.rubric[0].tolerance",
        ">= 0",
    ),
    (
        "    - kind: label\n",
        "    - kind: judge\n      model: m\n",
        "spec.rubric[0].rubric",
        "required",
    ),
    (
        "    - kind: label\n",
        "    - kind: contains\n      value: []\n",
        "spec.rubric[0].value",
        "at least",
    ),
    (
        "    - kind: label\n",
        "    - kind: json_schema\n      schema: [1]\n",
        "spec.rubric[0].schema",
        "mapping",
    ),
    (
        "      weight: 1.0\n      required",
        "      weight: 0\n      required",
        "spec.rubric[0].weight",
        "> 0",
    ),
    ("      min_rate: 0.95", "      min_rate: 2", "spec.micro[1].min_rate", "<= 1"),
    ("      percentile: 95", "      percentile: 0", "spec.micro[0].percentile", "> 0"),
    ("[scenarios.jsonl]", "[../x.jsonl]", "spec.scenarios[0]", "'..'"),
    ("[scenarios.jsonl]", "[/etc/passwd]", "spec.scenarios[0]", "absolute path"),
    ("[scenarios.jsonl]", "[missing.jsonl]", "spec.scenarios[0]", "file not found"),
    ("[scenarios.jsonl]", "[]", "spec.scenarios", "at least 1 item"),
    ("generator: null", "generator: gen.py:make", "spec.generator", "file not found: gen.py"),
    ("generator: null", "generator: gen.py", "spec.generator", "file.py:function"),
    ("generator: null", "generator: ../gen.py:make", "spec.generator", "file.py:function"),
    ("  name: rtb-quality", "  name: rtb-other", "metadata.name", "must match the folder name"),
]


@pytest.mark.parametrize(("old", "new", "field", "message"), SUITE_CASES)
def test_suite_checks(repo: Path, old: str, new: str, field: str, message: str) -> None:
    edit(repo / SUITE, old, new)
    issues = validate_repository(repo)
    assert [i.field for i in issues] == [field], "\n".join(map(str, issues))
    assert issues[0].file == SUITE
    assert message in issues[0].message
    assert issues[0].line is not None and issues[0].column is not None


def test_rubric_position_points_into_the_list_item(repo: Path) -> None:
    edit(repo / SUITE, "    - kind: label\n", "    - kind: regex\n      pattern: '(ab'\n")
    issue = only_issue(repo)
    assert (issue.line, issue.column) == (line_of(repo / SUITE, "pattern:"), 7)


def test_scenario_row_errors(repo: Path) -> None:
    path = repo / SCENARIOS
    rows = [
        '{"id": "bad id", "input": "x", "expected": "ACCEPT"}',
        '{"id": "r-1", "input": "", "expected": "ACCEPT", "split": "test"}',
        '{"id": "r-2", "input": "x"}',
        '{"id": "r-3", "input": "x", "expected": "ACCEPT", "extra": 1}',
        '{"id": "r-4", "input": "x", "expected": "ACCEPT", "rubric": [{"kind": "regex", '
        '"pattern": "("}]}',
        '{"id": "r-5", "input": "x", "expected": "ACCEPT", "variants": "not a list"}',
        '{"id": "r-6", "input": "x", "expected": {"a": 1}, "rubric": [{"kind": "json_field", '
        '"path": "$.a..b"}]}',
    ]
    start = len(path.read_text().splitlines()) + 1
    path.write_text(path.read_text() + "\n".join(rows) + "\n")
    found = {(i.line, i.field): i.message for i in validate_repository(repo)}
    assert all(i_line >= start for i_line, _ in found)
    assert "invalid id 'bad id'" in found[(start, "id")]
    assert found[(start + 1, "input")] == "must not be empty"
    assert found[(start + 1, "split")] == "must be 'core', 'dev', 'heldout' or 'train'"
    assert found[(start + 2, "expected")] == "field required"
    assert found[(start + 3, "extra")] == "unknown field 'extra'"
    assert "invalid regular expression" in found[(start + 4, "rubric[0].pattern")]
    assert found[(start + 5, "variants")] == "must be a list"
    assert "invalid JSON path '$.a..b': empty key at 5" in found[(start + 6, "rubric[0].path")]


def test_duplicate_scenario_ids_across_files_name_both_lines(repo: Path) -> None:
    edit(repo / SUITE, "[scenarios.jsonl]", "[scenarios.jsonl, more.jsonl]")
    first = line_of(repo / SCENARIOS, '"rtb-004"')
    (repo / "evals/rtb-quality/more.jsonl").write_text(
        '\n{"id": "rtb-004", "input": "domain=a.example ctr=2% floor=$1 format=banner", '
        '"expected": "ACCEPT"}\n'
    )
    issue = only_issue(repo)
    assert (issue.file, issue.line, issue.field) == ("evals/rtb-quality/more.jsonl", 2, "id")
    assert f"{SCENARIOS}:{first}" in issue.message and "duplicate scenario id" in issue.message


def test_heldout_id_reused_from_core(repo: Path) -> None:
    path = repo / SCENARIOS
    path.write_text(
        path.read_text()
        + '{"id": "rtb-001", "input": "domain=b.example ctr=3% floor=$1 format=video", '
        '"expected": "ACCEPT", "split": "heldout"}\n'
    )
    issue = only_issue(repo)
    assert issue.line == len(path.read_text().splitlines())
    assert "ids must be unique across splits" in issue.message
    assert f"{SCENARIOS}:1" in issue.message


def test_suite_needs_a_core_scenario(repo: Path) -> None:
    path = repo / SCENARIOS
    heldout = [line for line in path.read_text().splitlines() if '"heldout"' in line]
    path.write_text("\n".join(heldout) + "\n")
    issue = only_issue(repo)
    assert (issue.file, issue.field) == (SUITE, "spec.scenarios")
    assert "at least one core scenario" in issue.message


def test_heldout_leakage_is_reported(repo: Path) -> None:
    path = repo / SCENARIOS
    # rtb-001's second variant, with other case and spacing
    path.write_text(
        path.read_text()
        + '{"id": "rtb-h99", "input": "FORMAT=banner  floor=$0.80 ctr=1.2% domain=news.example",'
        ' "expected": "ACCEPT", "split": "heldout"}\n'
    )
    issue = only_issue(repo)
    assert issue.field == "input"
    assert "leaks" in issue.message and "rtb-001" in issue.message


def test_expected_must_be_a_label_of_the_specialist(repo: Path) -> None:
    edit(repo / SCENARIOS, '"expected": "REJECT", "tags": ["low-ctr"]', '"expected": "MAYBE"')
    issue = only_issue(repo)
    assert (issue.file, issue.line, issue.field) == (
        SCENARIOS,
        line_of(repo / SCENARIOS, "MAYBE"),
        "expected",
    )
    assert "'MAYBE' is not a label" in issue.message


POLICY_CASES = [
    (
        "    - name: shadow\n      min_requests: 50",
        "    - name: canary\n      min_requests: 50",
        "spec.stages[1].name",
        "appears twice",
    ),
    ("    - name: production\n", "    - name: live\n", "spec.stages[2].name", "must be 'shadow'"),
    (
        "      min_requests: 50",
        "      min_requests: 50\n      traffic: 0.5",
        "spec.stages[0].traffic",
        "only to the canary",
    ),
    (
        "        format_rate: 0.95",
        "        format_rat: 0.95",
        "spec.stages[0].floors.format_rat",
        "unknown metric",
    ),
    ("      min_approvals: 1", "      min_approvals: 0", "spec.stages[2].min_approvals", ">= 1"),
    ("    window: 200", "    window: 0", "spec.rollback.window", ">= 1"),
    ("    metric: score_mean", "    metric: vibes", "spec.rollback.metric", "unknown metric"),
    (
        "      max_regression: 0.02",
        "      max_regression: 2",
        "spec.gates.heldout.max_regression",
        "<= 1",
    ),
    (
        "    suite_unchanged: true",
        "    suite_unchanged: maybe",
        "spec.gates.suite_unchanged",
        "true or false",
    ),
]


@pytest.mark.parametrize(("old", "new", "field", "message"), POLICY_CASES)
def test_policy_checks(repo: Path, old: str, new: str, field: str, message: str) -> None:
    edit(repo / PROMOTION, old, new)
    issue = only_issue(repo)
    assert (issue.file, issue.field) == (PROMOTION, field)
    assert message in issue.message


def test_policy_bootstrap_defaults_to_replay_and_names_a_bad_mode(repo: Path) -> None:
    """``bootstrap`` (how a first version gets traffic) is replay unless the policy says
    otherwise; a mode it does not know is located at its line and lists the known ones."""
    assert load_repository(repo).policies["default"].spec.bootstrap == "replay"
    assert load_repository(REPO).policies["default"].spec.bootstrap == "replay"
    path = repo / PROMOTION
    path.write_text(path.read_text() + "  bootstrap: approval\n")
    assert load_repository(repo).policies["default"].spec.bootstrap == "approval"
    edit(path, "  bootstrap: approval", "  bootstrap: mirror")
    issue = only_issue(repo)
    assert (issue.file, issue.line, issue.field) == (
        PROMOTION, line_of(path, "bootstrap: mirror"), "spec.bootstrap")
    for mode in ("replay", "approval", "off"):
        assert mode in issue.message, issue.message
    assert str(issue).startswith(f"{PROMOTION}:{issue.line}:")


def test_stages_must_run_in_order_and_include_production(repo: Path) -> None:
    text = (repo / PROMOTION).read_text()
    shadow = text[text.index("    - name: shadow") : text.index("    - name: canary")]
    canary = text[text.index("    - name: canary") : text.index("    - name: production")]
    (repo / PROMOTION).write_text(text.replace(shadow + canary, canary + shadow))
    issue = only_issue(repo)
    assert issue.field == "spec.stages[1].name" and "order shadow, canary, production" in (
        issue.message
    )
    production = text[text.index("    - name: production") : text.index("  rollback:")]
    (repo / PROMOTION).write_text(text.replace(production, ""))
    issue = only_issue(repo)
    assert issue.field == "spec.stages" and "production stage is required" in issue.message


ROUTING_CASES = [
    ("        task: rtb-quality", "        {}", "spec.rules[0].when", "at least one condition"),
    (
        "        task: rtb-quality",
        "        regex: '(('",
        "spec.rules[0].when.regex",
        "invalid regular",
    ),
    (
        "          any: [bid, auction]",
        "          any: []",
        "spec.rules[2].when.keywords",
        "'any' or 'all'",
    ),
    (
        "          min: 1",
        "          min: 5000",
        "spec.rules[1].when.length.min",
        "greater than max",
    ),
    ("    - name: rtb-bids", "    - name: rtb-task", "spec.rules[1].name", "used twice"),
    (
        "        task: rtb-quality",
        "        meta: {channel: 1}",
        "spec.rules[0].when.meta.channel",
        "string",
    ),
]


@pytest.mark.parametrize(("old", "new", "field", "message"), ROUTING_CASES)
def test_routing_checks(repo: Path, old: str, new: str, field: str, message: str) -> None:
    edit(repo / ROUTING, old, new)
    issue = only_issue(repo)
    assert (issue.file, issue.field) == (ROUTING, field)
    assert message in issue.message


CLUSTER_CASES = [
    (
        '"kind": "local", "address": null',
        '"kind": "ssh", "address": null',
        "hosts.local.address",
        "needs an address",
    ),
    (
        '"training_hosts": ["local"]',
        '"training_hosts": ["gpu-box"]',
        "defaults.training_hosts[0]",
        "unknown host 'gpu-box'",
    ),
    (
        '"training_hosts": ["local"]',
        '"training_hosts": ["local", "local"]',
        "defaults.training_hosts[1]",
        "listed twice",
    ),
    ('"eval_host": "local"', '"eval_host": "nowhere"', "defaults.eval_host", "unknown host"),
    (
        '"training_hosts": ["local"]',
        '"training_hosts": []',
        "defaults.training_hosts",
        "at least 1 item",
    ),
    (
        '"device": "cpu", "threads": 1, "lora": {"r": 16',
        '"device": "cpu", "use_vllm": true, "threads": 1, "lora": {"r": 16',
        "profiles.cpu-lora.use_vllm",
        "needs device 'cuda'",
    ),
    (
        '"batch_size": 16',
        '"batch_size": 6',
        "profiles.cpu-lora.batch_size",
        "multiple of num_generations",
    ),
    ('"num_generations": 4', '"num_generations": 1', "profiles.cpu-lora.num_generations", ">= 2"),
    ('"learning_rate": 0.001', '"learning_rate": 0', "profiles.cpu-lora.learning_rate", "> 0"),
    ('"kind": "pypi-gguf"', '"kind": "s3"', "models.smollm2-135m.source.kind", "unknown kind 's3'"),
    ('"gpus": 0', '"gpus": -1', "hosts.local.gpus", ">= 0"),
    (
        '"probe_timeout_s": 5',
        '"probe_timeout_s": 5, "probe_timout_s": 5',
        "thresholds.probe_timout_s",
        "unknown field",
    ),
    ('"cpu-tiny": {', '"CPU Tiny": {', "profiles.CPU Tiny", "invalid name"),
    ('"max_completion_length": 4', '"max_completion_length": 0',
     "profiles.cpu-lora.max_completion_length", ">= 1"),
    ('"max_steps": 4,', '"max_steps": 4, "no_signal_steps": 0,',
     "profiles.cpu-tiny.no_signal_steps", ">= 1"),
]


def test_a_profile_may_leave_the_completion_length_to_the_task() -> None:
    from modelsmith.specs.clusters import HyperParams

    profile = HyperParams(learning_rate=1e-3, batch_size=8, max_steps=2, num_generations=4)
    assert profile.max_completion_length is None  # derived from the task when training
    assert profile.no_signal_steps == 20
    assert HyperParams.model_validate(
        {**profile.model_dump(), "no_signal_steps": None}).no_signal_steps is None
    repo = load_repository(REPO)
    assert repo.clusters.profiles["cpu-tiny-demo"].max_completion_length is None


@pytest.mark.parametrize(("old", "new", "field", "message"), CLUSTER_CASES)
def test_clusters_checks(repo: Path, old: str, new: str, field: str, message: str) -> None:
    edit(repo / CLUSTERS, old, new)
    issue = only_issue(repo)
    assert (issue.file, issue.field) == (CLUSTERS, field)
    assert message in issue.message
    assert issue.line is not None and issue.column is not None


def test_clusters_error_position(repo: Path) -> None:
    edit(repo / CLUSTERS, '"batch_size": 16', '"batch_size": 0')
    issue = only_issue(repo)
    line = line_of(repo / CLUSTERS, '"batch_size": 0')
    text = (repo / CLUSTERS).read_text().split("\n")[line - 1]
    assert (issue.line, issue.column) == (line, text.index('"batch_size"') + 1)


# --------------------------------------------------------------------------- references

REFERENCE_CASES = [
    (SPECIALIST, "base: smollm2-135m", "base: gpt-9", "spec.base", "unknown model profile 'gpt-9'"),
    (
        SPECIALIST,
        "profile: cpu-lora",
        "profile: tpu",
        "spec.training.profile",
        "hyper-parameter profile 'tpu'",
    ),
    (SPECIALIST, "evals: rtb-quality", "evals: other", "spec.evals", "unknown eval suite 'other'"),
    (
        SPECIALIST,
        "policy: default",
        "policy: strict",
        "spec.policy",
        "unknown promotion policy 'strict'",
    ),
    (
        ROUTING,
        "      route: rtb-quality",
        "      route: nobody",
        "spec.rules[0].route",
        "unknown specialist 'nobody'",
    ),
    (
        ROUTING,
        "default: rtb-quality",
        "default: ghost",
        "spec.default",
        "unknown specialist 'ghost'",
    ),
]


@pytest.mark.parametrize(("file", "old", "new", "field", "message"), REFERENCE_CASES)
def test_cross_references(
    repo: Path, file: str, old: str, new: str, field: str, message: str
) -> None:
    edit(repo / file, old, new)
    issue = only_issue(repo)
    assert (issue.file, issue.field) == (file, field)
    assert issue.line == line_of(repo / file, new.strip())
    assert message in issue.message and "known:" in issue.message


def test_default_route_may_be_null(repo: Path) -> None:
    edit(repo / ROUTING, "default: rtb-quality", "default: null")
    assert validate_repository(repo) == []
    assert load_repository(repo).routing.spec.default is None  # type: ignore[union-attr]


def test_duplicate_names_across_files(repo: Path) -> None:
    (repo / "policies/strict.yaml").write_text((repo / PROMOTION).read_text())
    (repo / "specialists/rtb-quality.yml").write_text((repo / SPECIALIST).read_text())
    issues = validate_repository(repo)
    assert [(i.file, i.field) for i in issues] == [
        ("policies/strict.yaml", "metadata.name"),
        ("specialists/rtb-quality.yml", "metadata.name"),
    ]
    assert "duplicate PromotionPolicy 'default'" in issues[0].message
    assert f"{PROMOTION}:4" in issues[0].message
    assert "duplicate Specialist 'rtb-quality'" in issues[1].message


def test_only_one_routing_table(repo: Path) -> None:
    text = (repo / ROUTING).read_text().replace("name: default", "name: second", 1)
    (repo / "policies/promotion.yaml").write_text((repo / PROMOTION).read_text() + "---\n" + text)
    issue = only_issue(repo)
    assert issue.file == ROUTING and "only one RoutingTable" in issue.message


def test_policies_file_may_hold_several_documents(repo: Path) -> None:
    strict = (repo / PROMOTION).read_text().replace("name: default", "name: strict", 1)
    (repo / PROMOTION).write_text((repo / PROMOTION).read_text() + "---\n" + strict)
    edit(repo / SPECIALIST, "policy: default", "policy: strict")
    repo_state = load_repository(repo)
    assert sorted(repo_state.policies) == ["default", "strict"]
    docs = load_policy_file(repo / PROMOTION)
    assert [d.name for d in docs] == ["default", "strict"]


def test_broken_referent_does_not_cascade(repo: Path) -> None:
    # The specialist file fails to parse; routes to it are not reported a second time.
    (repo / SPECIALIST).write_text("apiVersion: modelsmith/v1\nkind: [\n")
    issues = validate_repository(repo)
    assert [i.file for i in issues] == [SPECIALIST]


def test_all_issues_are_collected_across_files(repo: Path) -> None:
    edit(repo / SPECIALIST, "composite: 0.9", "composite: 2")
    edit(repo / SUITE, "micro: 0.1", "micro: 0.5")
    edit(repo / PROMOTION, "window: 200", "window: -1")
    edit(repo / ROUTING, "default: rtb-quality", "default: ghost")
    edit(repo / CLUSTERS, '"max_steps": 80', '"max_steps": 0')
    (repo / SCENARIOS).write_text((repo / SCENARIOS).read_text() + "{broken\n")
    files = {issue.file for issue in validate_repository(repo)}
    assert files == {SPECIALIST, SUITE, PROMOTION, ROUTING, CLUSTERS, SCENARIOS}


# --------------------------------------------------------------------------- single files


def test_single_file_loaders(repo: Path) -> None:
    assert load_specialist_file(repo / SPECIALIST).name == "rtb-quality"
    suite = load_suite(repo / "evals/rtb-quality", root=repo)
    assert isinstance(suite.suite, EvalSuite) and suite.scenario_sources["rtb-001"] == (
        SCENARIOS,
        1,
    )
    assert isinstance(load_clusters(repo / CLUSTERS), ClustersConfig)
    edit(repo / SPECIALIST, "composite: 0.9", "composite: 9")
    with pytest.raises(SpecError) as caught:
        load_specialist_file(repo / SPECIALIST, root=repo)
    assert caught.value.issues[0].file == SPECIALIST


# --------------------------------------------------------------------------- models directly


@pytest.mark.parametrize(
    ("path", "parts"),
    [("a.b[0].c", ["a", "b", 0, "c"]), ("[2]", [2]), ("$", []), ("$.vendor", ["vendor"]),
     ("$[0]", [0]), ("$[0][1].a", [0, 1, "a"]), ("a.b", ["a", "b"]), ("$.a.b", ["a", "b"]),
     ("_x-y.z9", ["_x-y", "z9"]), ("prix_é", ["prix_é"]), ("a[00]", ["a", 0])],
)  # fmt: skip
def test_json_paths(path: str, parts: list[str | int]) -> None:
    assert parse_json_path(path) == parts


@pytest.mark.parametrize(
    ("path", "why"),
    [("", "it is empty"), ("a..b", "empty key at 3"), (".a", "it starts with '.'"),
     ("a.", "it ends with '.'"), ("$.", "it ends with '.'"), ("a[x]", "'[' at 2"),
     ("a[-1]", "'[' at 2"), ("a[1", "'[' at 2"), ("a[1.5]", "'[' at 2"),
     ("$$.a", "'$' may only start"), ("a.$b", "'$' may only start"),
     ("$vendor", "'$' is followed by"), ("a[0]b", "unexpected 'b' at 5"),
     ("a.0", "starts with a digit"), ("0", "starts with a digit"), ("a b", "unexpected ' '"),
     ("a.b c", "unexpected ' '"), (" a", "unexpected ' '"), ("a/b", "unexpected '/'"),
     ("a" * 10_000 + "..", "empty key"), ("[" + "9" * 5000 + "]", "list index")],
)  # fmt: skip
def test_malformed_json_paths_say_why(path: str, why: str) -> None:
    with pytest.raises(ValueError, match="invalid JSON path") as caught:
        parse_json_path(path)
    assert why in str(caught.value)
    assert len(str(caught.value)) < 300  # a hostile path is not echoed in full


def test_models_used_directly() -> None:
    task = TaskSpec.model_validate(
        {"prompt_template": "Q: {input} {x}", "output": {"kind": "text"}}
    )
    assert task.render("hi") == "Q: hi {x}"
    with pytest.raises(ValidationError):
        Release.model_validate({"production": "v1", "shadow": "v1"})
    scenario = Scenario.model_validate(
        {
            "id": "a.b_c-1",
            "input": "x",
            "expected": None,
            "rubric": [{"kind": "regex", "pattern": "a+"}],
        }
    )
    assert scenario.split == "core" and scenario.tags == [] and scenario.meta == {}
    criterion = scenario.rubric[0]  # type: ignore[index]
    assert isinstance(criterion, RegexCriterion) and criterion.compiled.search("caat")
    with pytest.raises(ValidationError):
        Scenario.model_validate({"id": "x", "input": "y"})  # expected is required


# --------------------------------------------------------------------------- JSON Schema


def test_json_schemas() -> None:
    schemas = json_schemas()
    assert set(schemas) == {
        "Specialist",
        "EvalSuite",
        "Scenario",
        "PromotionPolicy",
        "RoutingTable",
        "Clusters",
    }
    for kind, schema in schemas.items():
        assert isinstance(schema, dict) and schema["type"] == "object", kind
        assert isinstance(schema["properties"], dict) and schema["properties"], kind
        assert schema["additionalProperties"] is False, kind
        json.dumps(schema)
    assert {"apiVersion", "kind", "metadata", "spec", "release"} <= set(
        schemas["Specialist"]["properties"]
    )
    assert "schema" in json.dumps(schemas["EvalSuite"])  # the alias, not "schema_"
    assert "schema_" not in json.dumps(schemas["EvalSuite"])
    bootstrap = schemas["PromotionPolicy"]["$defs"]["PolicySpec"]["properties"]["bootstrap"]
    assert bootstrap["enum"] == ["replay", "approval", "off"]
    assert bootstrap["default"] == "replay"


def test_write_schemas(tmp_path: Path) -> None:
    paths = write_schemas(tmp_path / "schema")
    assert sorted(p.name for p in paths) == sorted(f"{kind}.schema.json" for kind in json_schemas())
    for path in paths:
        assert json.loads(path.read_text())["properties"]


def test_import_is_light() -> None:
    code = (
        "import sys, modelsmith.specs; "
        "heavy = [m for m in ('torch', 'dvc', 'mcp', 'rich', 'click') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
