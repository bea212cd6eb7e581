"""Declarative files that cannot stall the engine: linear-time regexes, parse limits enforced
while parsing, duplicate keys that never expand aliases, files that stay inside their suite,
and numbers that stay finite and bounded.

Every case is refused with exit 2 (or the loader's issue) naming file and line, with no
traceback. Elapsed-time bounds here are hang guards, far above the real cost (measured in
bench/); a regression they catch is seconds-to-hours, not a few percent.
"""

from __future__ import annotations

import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelsmith.cli import cli
from modelsmith.evaluation.criteria import score_regex
from modelsmith.serving.router import Request, Router
from modelsmith.specs import SpecIssue, validate_repository
from modelsmith.specs.models import RoutingSpec
from modelsmith.specs.regex import compile_regex
from modelsmith.specs.rubric import RegexCriterion
from modelsmith.specs.yamlio import (
    MAX_YAML_NODES,
    ParseFailure,
    parse_json_document,
    parse_yaml_documents,
)

ROUTING = "policies/routing.yaml"
SUITE = "evals/rtb-quality/suite.yaml"
ROUTING_REGEX = '        regex: "(?i)\\\\bdomain=\\\\S+.*\\\\bctr="\n'
#: A hang guard: RE2 takes microseconds to milliseconds for these; backtracking takes hours.
HANG_GUARD_S = 5.0


@pytest.fixture
def repo(spec_files: Path) -> Path:
    return spec_files


def validate(root: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["-C", str(root), "validate"])
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def only(root: Path, file: str) -> SpecIssue:
    issues = validate_repository(root)
    assert [i.file for i in issues] == [file], "\n".join(map(str, issues))
    return issues[0]


def set_routing_regex(root: Path, pattern: str) -> int:
    """Replace the fixture's routing regex; returns the 1-based line of ``regex:``."""
    path = root / ROUTING
    text = path.read_text()
    assert ROUTING_REGEX in text
    quoted = pattern.replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(text.replace(ROUTING_REGEX, f'        regex: "{quoted}"\n'))
    return text[: text.index(ROUTING_REGEX)].count("\n") + 1


# --------------------------------------------------------------------------- regexes (RE2)

NOT_RE2 = [
    (r"(?<=domain=)\S+", "lookbehind"),
    (r"(?<!x)ctr=", "lookbehind"),
    (r"ctr=(?=\d)", "lookahead"),
    (r"ctr=(?!0)", "lookahead"),
    (r"(\w)\1", "backreferences"),
    (r"(?P<x>a)(?P=x)", "backreferences"),
    (r"(?>a+)b", "atomic groups"),
    (r"a++b", "possessive"),
    (r"ctr=\d+\Z", "\\z"),
    (r"a{1001}", "limited to 1000"),
]


@pytest.mark.parametrize(("pattern", "why"), NOT_RE2)
def test_routing_regex_outside_re2_is_refused_at_its_line(
    repo: Path, pattern: str, why: str
) -> None:
    line = set_routing_regex(repo, pattern)
    code, output = validate(repo)
    assert code == 2, output
    assert f"{ROUTING}:{line}:" in output and "spec.rules[1].when.regex" in output
    assert "RE2 syntax is required" in output and why in output


@pytest.mark.parametrize(("pattern", "why"), NOT_RE2[:5])
def test_rubric_regex_outside_re2_is_refused_at_its_line(
    repo: Path, pattern: str, why: str
) -> None:
    path = repo / SUITE
    text = path.read_text()
    quoted = pattern.replace("'", "''")
    path.write_text(text.replace("    - kind: label\n",
                                 f"    - kind: regex\n      pattern: '{quoted}'\n", 1))
    issue = only(repo, SUITE)
    assert issue.field == "spec.rubric[0].pattern"
    assert issue.line == path.read_text().splitlines().index(f"      pattern: '{quoted}'") + 1
    assert "RE2 syntax is required" in issue.message and why in issue.message


#: Patterns that backtrack catastrophically on Python's ``re``, a text that makes them, and
#: whether they match it.
CATASTROPHIC = [
    (r"(a+)+$", "a" * 10_000 + "!", False),
    (r"(a|a)*$", "a" * 10_000 + "!", True),  # the empty match at the end
    (r"(a|aa)+$", "a" * 10_000 + "!", False),
    (r"(a*)*b", "a" * 10_000, False),
    (r"(.*a){20}$", "a" * 10_000 + "!", False),
    (r"(\w+\s?)+$", "word " * 2_000 + "!", False),
    (r"^(([a-z])+.)+[A-Z]([a-z])+$", "a" * 10_000 + "!", False),
]


@pytest.mark.parametrize(("pattern", "text", "matches"), CATASTROPHIC)
def test_catastrophic_routing_regex_routes_a_10k_request_in_linear_time(
    repo: Path, pattern: str, text: str, matches: bool
) -> None:
    set_routing_regex(repo, pattern)
    assert validate(repo)[0] == 0
    rules = RoutingSpec.model_validate({"rules": [
        {"name": "r", "when": {"regex": pattern}, "route": "x"}], "default": "d"}).rules
    router = Router(rules, "d")
    started = time.perf_counter()
    decision = router.route(Request(text))
    why = router.explain(Request(text))
    assert time.perf_counter() - started < HANG_GUARD_S
    assert decision.specialist == ("x" if matches else "d")
    assert (why[0][2] is None) is matches


@pytest.mark.parametrize(("pattern", "text", "matches"), CATASTROPHIC)
def test_catastrophic_rubric_regex_scores_a_long_output_in_linear_time(
    pattern: str, text: str, matches: bool
) -> None:
    criterion = RegexCriterion(kind="regex", pattern=pattern)
    started = time.perf_counter()
    score, _ = score_regex(criterion, text, None)  # type: ignore[arg-type]
    assert time.perf_counter() - started < HANG_GUARD_S
    assert score == (1.0 if matches else 0.0)


def test_re2_keeps_the_python_syntax_teams_use() -> None:
    cases = [
        (r"(?i)\bdomain=\S+.*\bctr=", "x DOMAIN=a.com CTR=1", True),
        (r"^INV-[0-9]{4}$", "INV-0042", True),
        (r"(?P<id>ID-\d+)", "see ID-7", True),
        (r"(?s)a.b", "a\nb", True),
        (r"(?m)^b$", "a\nb\nc", True),
        (r"café|naïve", "un café", True),
        (r"\p{Greek}+", "αβγ", True),
        (r"\bfoo\b", "foobar", False),
    ]
    for pattern, text, expected in cases:
        assert compile_regex(pattern).search(text) is expected, pattern


def test_request_text_with_a_lone_surrogate_is_routed() -> None:
    rules = RoutingSpec.model_validate({"rules": [
        {"name": "r", "when": {"regex": "ctr=."}, "route": "x"}], "default": "d"}).rules
    assert Router(rules, "d").route(Request("ctr=\ud800")).specialist == "x"
    assert Router(rules, "d").route(Request("\udfff")).specialist == "d"


# --------------------------------------------------------------------------- duplicate keys

SPECIALIST = "specialists/rtb-quality.yaml"
CLUSTERS = "config/clusters.json"


def laughs(levels: int = 9, width: int = 9) -> list[str]:
    """A billion-laughs anchor chain: ``a8`` expands to ``width ** levels`` values."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return lines


def test_duplicate_key_whose_value_is_an_alias_bomb_is_refused_at_its_line(repo: Path) -> None:
    lines = [*laughs(), "x: 1", "x: *a8"]
    (repo / SPECIALIST).write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    code, output = validate(repo)
    assert time.perf_counter() - started < HANG_GUARD_S
    assert code == 2, output
    assert f"{SPECIALIST}:{len(lines)}:1: duplicate key 'x'" in output
    assert "lol" not in output and len(output) < 2000


@pytest.mark.parametrize(("text", "line", "message"), [
    ("a: &a [1, 2]\nb: {c: *a, c: *a}\n", 2, "duplicate key 'c'"),
    ("a: &k [1]\n*k : 2\n", 2, "mapping keys must be plain scalars"),
    ("? [a, b]\n: 1\n", 1, "mapping keys must be plain scalars"),
    ("a: 1\n'a': 2\n", 2, "duplicate key 'a'"),
    (f"{'k' * 500}: 1\n{'k' * 500}: 2\n", 2, "duplicate key '" + "k" * 77 + "...'"),
])
def test_duplicate_and_collection_keys_never_render_values(
    repo: Path, text: str, line: int, message: str
) -> None:
    (repo / SPECIALIST).write_text(text)
    code, output = validate(repo)
    assert code == 2 and f"{SPECIALIST}:{line}:" in output and message in output, output


def test_json_duplicate_key_is_located(repo: Path) -> None:
    path = repo / CLUSTERS
    text = path.read_text()
    path.write_text(text.replace('{\n', '{\n  "defaults": {},\n', 1))
    code, output = validate(repo)
    assert code == 2 and f"{CLUSTERS}:" in output and "duplicate key 'defaults'" in output


# --------------------------------------------------------------------------- limits while parsing

#: Generous bounds: the refusals below take about a second and 16 MB here.
MEMORY_GUARD = 200 * 1024 * 1024

HUGE_YAML_LIST = "items:\n" + "- 1\n" * 1_000_000  # 4 MB, a million values
HUGE_JSON_ARRAY = json.dumps({"hosts": [1] * 1_200_000})  # 3.6 MB


def peak_memory(parse, text: str) -> tuple[ParseFailure, int]:
    tracemalloc.start()
    try:
        with pytest.raises(ParseFailure) as refused:
            parse(text)
        return refused.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(("parse", "text", "line"), [
    (parse_yaml_documents, HUGE_YAML_LIST, MAX_YAML_NODES - 1),
    (parse_json_document, HUGE_JSON_ARRAY, 1),
])
def test_huge_documents_are_refused_while_parsing(parse, text: str, line: int) -> None:
    started = time.perf_counter()
    with pytest.raises(ParseFailure) as refused:
        parse(text)
    assert time.perf_counter() - started < HANG_GUARD_S
    failure, peak = peak_memory(parse, text)
    assert peak < MEMORY_GUARD
    for found in (refused.value, failure):
        assert f"more than {MAX_YAML_NODES} values" in found.message
        assert found.line == line and found.column is not None


def test_huge_spec_files_are_refused_with_their_line(repo: Path) -> None:
    (repo / SPECIALIST).write_text(HUGE_YAML_LIST)
    (repo / CLUSTERS).write_text(HUGE_JSON_ARRAY)
    started = time.perf_counter()
    code, output = validate(repo)
    assert time.perf_counter() - started < 2 * HANG_GUARD_S
    assert code == 2
    assert f"{SPECIALIST}:{MAX_YAML_NODES - 1}:3: file has more than" in output
    assert f"{CLUSTERS}:1:" in output and "values (limit for a spec file)" in output


def test_a_spec_file_just_under_the_limit_loads() -> None:
    text = "items:\n" + "- 1\n" * (MAX_YAML_NODES - 3)  # with the mapping, key and list
    assert len(parse_yaml_documents(text)[0]["items"]) == MAX_YAML_NODES - 3
    data, tree = parse_json_document(json.dumps({"a": [1] * (MAX_YAML_NODES - 3)}))
    assert len(data["a"]) == MAX_YAML_NODES - 3 and tree is not None


@pytest.mark.parametrize(("text", "line", "message"), [
    ("a: &a [1, *a]\n", 1, "recursive alias '*a'"),
    ("a: &a {b: [*a]}\n", 1, "recursive alias '*a'"),
    ("a:\n" + "".join("  " * i + "- \n" for i in range(1, 80)), None, "nested too deeply"),
])
def test_structure_limits_are_located(text: str, line: int | None, message: str) -> None:
    with pytest.raises(ParseFailure) as refused:
        parse_yaml_documents(text)
    assert message in refused.value.message
    assert line is None or refused.value.line == line


# --------------------------------------------------------------------------- files stay inside

SUITE_DIR = "evals/rtb-quality"


def name_generator(root: Path, module: str) -> int:
    """Point the fixture suite's generator at ``module``; returns the line of the field."""
    path = root / SUITE
    text = path.read_text()
    assert "generator: null" in text
    path.write_text(text.replace("generator: null", f"generator: {module}:make"))
    return text[: text.index("generator: null")].count("\n") + 1


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
@pytest.mark.parametrize("how", ["file", "folder", "chain"])
def test_generator_symlinked_out_of_the_suite_is_refused_at_validate(
    repo: Path, tmp_path: Path, how: str
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "gen.py").write_text("def make(n):\n    return []\n")
    suite = repo / SUITE_DIR
    if how == "file":
        os.symlink(outside / "gen.py", suite / "gen.py")
        module = "gen.py"
    elif how == "folder":
        os.symlink(outside, suite / "lib")
        module = "lib/gen.py"
    else:  # a link inside the suite to a link that leaves it
        os.symlink(outside / "gen.py", suite / "hop.py")
        os.symlink(suite / "hop.py", suite / "gen.py")
        module = "gen.py"
    line = name_generator(repo, module)
    code, output = validate(repo)
    assert code == 2, output
    assert f"{SUITE}:{line}:" in output and "spec.generator" in output
    assert f"{module}: resolves outside the suite folder" in output


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_generator_symlink_loop_and_inside_link(repo: Path) -> None:
    suite = repo / SUITE_DIR
    (suite / "real.py").write_text("def make(n):\n    return []\n")
    os.symlink(suite / "real.py", suite / "gen.py")  # stays inside: fine
    line = name_generator(repo, "gen.py")
    assert validate(repo)[0] == 0
    (suite / "gen.py").unlink()
    os.symlink(suite / "gen.py", suite / "gen.py")
    issue = only(repo, SUITE)
    assert (issue.field, issue.line) == ("spec.generator", line)
    assert "symlink loop" in issue.message


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_scenario_file_in_a_folder_linked_out_of_the_suite(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "data"
    outside.mkdir()
    (outside / "more.jsonl").write_text((repo / SUITE_DIR / "scenarios.jsonl").read_text())
    os.symlink(outside, repo / SUITE_DIR / "data")
    path = repo / SUITE
    listed = "[scenarios.jsonl, data/more.jsonl]"
    path.write_text(path.read_text().replace("[scenarios.jsonl]", listed))
    issue = only(repo, SUITE)
    assert issue.field == "spec.scenarios[1]" and issue.line is not None
    assert "data/more.jsonl: resolves outside the suite folder" in issue.message


# --------------------------------------------------------------------------- numbers

@pytest.mark.parametrize(("file", "old", "new", "field", "message"), [
    (SUITE, "      weight: 1.0", "      weight: .inf", "spec.rubric[0].weight", "finite"),
    (SUITE, "      weight: 1.0", "      weight: .nan", "spec.rubric[0].weight", "finite"),
    (SUITE, "      weight: 1.0", "      weight: 1e999", "spec.rubric[0].weight", "finite"),
    (SUITE, "      budget_ms: 2000", "      budget_ms: .inf", "budget_ms", "finite"),
    (CLUSTERS, '"learning_rate": 0.001', '"learning_rate": 1e999', "learning_rate", "finite"),
    (CLUSTERS, '"beta": 0.0, "seed": 0', '"beta": 1e999, "seed": 0', "beta", "finite"),
    (CLUSTERS, '"beta": 0.0, "seed": 0', '"beta": 0.0, "seed": 1e29', "seed", "integer"),
    (CLUSTERS, '"beta": 0.0, "seed": 0', '"beta": 0.0, "seed": 4294967296', "seed", "4294967295"),
    (CLUSTERS, '"beta": 0.0, "seed": 0', '"beta": 0.0, "seed": -1', "seed", ">= 0"),
    (CLUSTERS, '"probe_timeout_s": 5', '"probe_timeout_s": 1e999', "probe_timeout_s", "finite"),
    (CLUSTERS, '"seed": 0, "hidden_size"', '"seed": 10000000000, "hidden_size"', "seed",
     "4294967295"),
    (CLUSTERS, '"max_steps": 80', '"max_steps": ' + "9" * 5000, None, "more than 4300 digits"),
    (SUITE, "      budget_ms: 2000", "      budget_ms: " + "9" * 5000, None,
     "more than 100 digits"),
])
def test_numbers_are_finite_and_bounded(
    repo: Path, file: str, old: str, new: str, field: str | None, message: str
) -> None:
    path = repo / file
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    line = text[: text.index(old)].count("\n") + 1
    issue = only(repo, file)
    assert issue.line == line and message in issue.message, issue
    assert field is None or (issue.field or "").endswith(field), issue
    code, output = validate(repo)
    assert code == 2 and f"{file}:{line}:" in output
