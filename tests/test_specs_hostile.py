"""Hostile and malformed input: every case is an issue with a position, never a traceback."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from modelsmith.specs import SpecIssue, load_repository, validate_repository
from modelsmith.specs.yamlio import MAX_NODES, ParseFailure, parse_yaml_documents, to_plain

SPECIALIST = "specialists/rtb-quality.yaml"
SUITE = "evals/rtb-quality/suite.yaml"
SCENARIOS = "evals/rtb-quality/scenarios.jsonl"
PROMOTION = "policies/promotion.yaml"
CLUSTERS = "config/clusters.json"

HEADER = "apiVersion: modelsmith/v1\nkind: Specialist\nmetadata:\n  name: rtb-quality\n"


@pytest.fixture
def repo(spec_files: Path) -> Path:
    return spec_files


def issues_in(root: Path, file: str) -> list[SpecIssue]:
    """Issues of one file, checking that no other file got any and nothing crashed."""
    issues = validate_repository(root)
    assert all("internal error" not in i.message for i in issues), issues
    assert {i.file for i in issues} == {file}, "\n".join(map(str, issues))
    return issues


def only(root: Path, file: str) -> SpecIssue:
    issues = issues_in(root, file)
    assert len(issues) == 1, "\n".join(map(str, issues))
    return issues[0]


def sparse_file(path: Path, size: int) -> None:
    """A file of ``size`` bytes without writing them (sparse); stat reports the full size."""
    with open(path, "wb") as handle:
        handle.truncate(size)


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    lines = ["lol0: &lol0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        refs = ", ".join([f"*lol{level - 1}"] * width)
        lines.append(f"lol{level}: &lol{level} [{refs}]")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- alias abuse


def test_alias_bomb_is_refused_fast(repo: Path) -> None:
    bomb = billion_laughs()
    (repo / SPECIALIST).write_text(
        HEADER + "spec:\n" + "".join(f"  {ln}\n" for ln in bomb.splitlines())
    )
    started = time.perf_counter()
    issue = only(repo, SPECIALIST)
    assert time.perf_counter() - started < 10  # a hang guard, not a speed check
    assert "alias bomb" in issue.message and str(MAX_NODES) in issue.message
    assert issue.line is not None


def test_alias_bomb_in_policies_does_not_stop_other_files(repo: Path) -> None:
    (repo / PROMOTION).write_text(billion_laughs())
    (repo / SPECIALIST).write_text((repo / SPECIALIST).read_text().replace("0.9", "7"))
    started = time.perf_counter()
    issues = validate_repository(repo)
    assert time.perf_counter() - started < 10  # a hang guard, not a speed check
    assert {i.file for i in issues} == {PROMOTION, SPECIALIST}
    assert any("alias bomb" in i.message for i in issues)


def test_to_plain_node_budget_is_bounded_in_memory() -> None:
    (doc,) = parse_yaml_documents(billion_laughs(levels=12))
    with pytest.raises(ParseFailure, match="alias bomb"):
        to_plain(doc)


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        (HEADER + "spec: &a\n  base: x\n  loop: *a\n", 7, 9),
        (HEADER + "spec:\n  items: &b [1, *b]\n", 6, 17),
    ],
)
def test_recursive_alias(repo: Path, text: str, line: int, column: int) -> None:
    (repo / SPECIALIST).write_text(text)
    issue = only(repo, SPECIALIST)
    assert "recursive alias" in issue.message
    assert (issue.line, issue.column) == (line, column)


def test_shared_aliases_are_fine(repo: Path) -> None:
    text = (repo / SPECIALIST).read_text()
    text = text.replace(
        "  labels:\n    team: ads", "  labels: &labels\n    team: ads\n  annotations: *labels"
    )
    (repo / SPECIALIST).write_text(text)
    assert validate_repository(repo) == []


# --------------------------------------------------------------------------- syntax


def test_duplicate_key(repo: Path) -> None:
    path = repo / SPECIALIST
    path.write_text(
        path.read_text().replace("  policy: default", "  policy: default\n  base: other")
    )
    issue = only(repo, SPECIALIST)
    assert issue.message == "duplicate key 'base'"
    assert issue.line == path.read_text().split("\n").index("  base: other") + 1


def test_tab_indentation(repo: Path) -> None:
    path = repo / SPECIALIST
    path.write_text(path.read_text().replace("    composite: 0.9", "\tcomposite: 0.9"))
    issue = only(repo, SPECIALIST)
    assert "tab" in issue.message
    assert issue.line == path.read_text().split("\n").index("\tcomposite: 0.9") + 1
    assert issue.column == 1


def test_yaml_syntax_error(repo: Path) -> None:
    (repo / SPECIALIST).write_text(HEADER + "spec: [1, 2\n")
    issue = only(repo, SPECIALIST)
    assert issue.message.startswith("invalid YAML") and issue.line is not None


def test_non_utf8_bytes(repo: Path) -> None:
    path = repo / SPECIALIST
    path.write_bytes(path.read_bytes().replace(b"Accept or reject", b"Accept \xff reject"))
    issue = only(repo, SPECIALIST)
    assert "not valid UTF-8" in issue.message and "0xff" in issue.message
    assert (issue.line, issue.column) == (10, 12)


def test_non_utf8_in_jsonl(repo: Path) -> None:
    path = repo / SCENARIOS
    path.write_bytes(path.read_bytes().replace(b"domain=sports", b"domain=\xc3\x28sports"))
    issue = only(repo, SCENARIOS)
    assert "not valid UTF-8" in issue.message and issue.line == 3


def test_control_character(repo: Path) -> None:
    path = repo / SPECIALIST
    path.write_text(path.read_text().replace("Accept or", "Accept\x07or"))
    issue = only(repo, SPECIALIST)
    assert "U+0007" in issue.message and (issue.line, issue.column) == (10, 11)


@pytest.mark.parametrize(
    ("file", "limit"),
    [(SPECIALIST, "4 MiB"), (SCENARIOS, "32 MiB"), (CLUSTERS, "4 MiB"), (PROMOTION, "4 MiB")],
)
def test_oversized_file_is_refused_before_reading(repo: Path, file: str, limit: str) -> None:
    sparse_file(repo / file, 50 * 1024 * 1024)
    started = time.perf_counter()
    issue = only(repo, file)
    assert time.perf_counter() - started < 10  # a hang guard, not a speed check
    assert "too large" in issue.message and limit in issue.message
    assert issue.line is None


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        (SPECIALIST, "", "file is empty"),
        (SPECIALIST, "# only a comment\n", "file is empty"),
        (PROMOTION, "---\n", "file is empty"),
        (CLUSTERS, "", "file is empty"),
        (CLUSTERS, "  \n", "file is empty"),
    ],
)
def test_empty_files(repo: Path, file: str, content: str, message: str) -> None:
    (repo / file).write_text(content)
    assert message in only(repo, file).message


def test_empty_scenarios_file(repo: Path) -> None:
    (repo / SCENARIOS).write_text("\n\n")
    issue = only(repo, SUITE)
    assert "at least one core scenario" in issue.message


@pytest.mark.parametrize(
    ("content", "line", "what"),
    [
        ("# comment\n- a\n- b\n", 2, "got a list"),
        ("# comment\n\njust a string\n", 3, "got a str value"),
        ("42\n", 1, "got a int value"),
    ],
)
def test_document_that_is_not_a_mapping(repo: Path, content: str, line: int, what: str) -> None:
    (repo / SPECIALIST).write_text(content)
    issue = only(repo, SPECIALIST)
    assert "document must be a mapping" in issue.message and what in issue.message
    assert issue.line == line


def test_second_document_in_a_single_document_file(repo: Path) -> None:
    path = repo / SPECIALIST
    text = path.read_text()
    path.write_text(text + "---\n" + text)
    issue = only(repo, SPECIALIST)
    assert "expected one Specialist document, found 2" in issue.message
    assert issue.line == len(text.split("\n"))


def test_wrong_api_version(repo: Path) -> None:
    path = repo / SPECIALIST
    path.write_text(path.read_text().replace("modelsmith/v1", "modelsmith/v9"))
    issue = only(repo, SPECIALIST)
    assert (issue.line, issue.column, issue.field) == (2, 1, "apiVersion")
    assert "unsupported apiVersion 'modelsmith/v9'" in issue.message
    assert "supported: modelsmith/v1" in issue.message


def test_missing_api_version(repo: Path) -> None:
    path = repo / SPECIALIST
    path.write_text(path.read_text().replace("apiVersion: modelsmith/v1\n", ""))
    issue = only(repo, SPECIALIST)
    assert issue.field == "apiVersion" and "required" in issue.message


@pytest.mark.parametrize(
    ("file", "old", "expected"),
    [
        (SPECIALIST, "kind: Specialist", "expected Specialist"),
        (SUITE, "kind: EvalSuite", "expected EvalSuite"),
        (PROMOTION, "kind: PromotionPolicy", "expected PromotionPolicy or RoutingTable"),
    ],
)
def test_wrong_kind_names_the_expected_one(repo: Path, file: str, old: str, expected: str) -> None:
    path = repo / file
    path.write_text(path.read_text().replace(old, "kind: Gadget"))
    issue = only(repo, file)
    assert issue.field == "kind"
    assert (issue.line, issue.column) == (path.read_text().split("\n").index("kind: Gadget") + 1, 1)
    assert "kind 'Gadget' does not belong" in issue.message and expected in issue.message


@pytest.mark.parametrize("name", ["../etc", "a/b", "has space", "UPPER", "-lead", "x" * 64, ""])
def test_hostile_metadata_names(repo: Path, name: str) -> None:
    path = repo / SPECIALIST
    path.write_text(path.read_text().replace("  name: rtb-quality", f"  name: '{name}'"))
    issue = only(repo, SPECIALIST)
    assert (issue.line, issue.field) == (5, "metadata.name")
    assert "invalid name" in issue.message and "lowercase" in issue.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("base: !!python/object/apply:os.system ['true']", "unsupported YAML tag"),
        ("base: !custom smollm2-135m", "unsupported YAML tag '!custom'"),
        ("base: !!set {a, b}", "sets are not supported"),
        ("base: !!binary aGVsbG8=", "unsupported value of type bytes"),
        ("base: {[1, 2]: x}", "mapping keys must be plain scalars"),
    ],
)
def test_unsafe_or_exotic_yaml(repo: Path, text: str, message: str) -> None:
    path = repo / SPECIALIST
    path.write_text(path.read_text().replace("base: smollm2-135m", text))
    issues = issues_in(repo, SPECIALIST)
    assert any(message in i.message for i in issues), issues
    assert all(i.line is not None for i in issues)


def test_deeply_nested_flow_collections_are_refused_fast(repo: Path) -> None:
    (repo / SPECIALIST).write_text(HEADER + "spec: " + "[" * 100_000 + "]" * 100_000 + "\n")
    started = time.perf_counter()
    issue = only(repo, SPECIALIST)
    assert time.perf_counter() - started < 10  # a hang guard, not a speed check
    assert "nested too deeply" in issue.message and issue.line == 5


def test_deeply_nested_block_collections(repo: Path) -> None:
    text = HEADER + "spec:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(1000))
    (repo / SPECIALIST).write_text(text)
    assert "nested too deeply" in only(repo, SPECIALIST).message


# --------------------------------------------------------------------------- JSON


def test_clusters_json_syntax_error(repo: Path) -> None:
    path = repo / CLUSTERS
    path.write_text(path.read_text().replace('"eval_host": "local"}', '"eval_host": "local",}'))
    issue = only(repo, CLUSTERS)
    assert issue.message.startswith("invalid JSON") and (issue.line, issue.column) == (2, 66)


def test_clusters_json_duplicate_key(repo: Path) -> None:
    path = repo / CLUSTERS
    path.write_text(path.read_text().replace('"max_steps": 80', '"max_steps": 80, "max_steps": 9'))
    issue = only(repo, CLUSTERS)
    assert issue.message == "duplicate key 'max_steps'"
    assert (
        issue.line
        == path.read_text()
        .split("\n")
        .index(next(ln for ln in path.read_text().split("\n") if '"max_steps": 9' in ln))
        + 1
    )


@pytest.mark.parametrize(
    ("content", "message"), [("[1, 2]", "must be a JSON object"), ('{"a": NaN}', "NaN")]
)
def test_clusters_json_not_an_object(repo: Path, content: str, message: str) -> None:
    (repo / CLUSTERS).write_text(content)
    assert message in only(repo, CLUSTERS).message


def test_missing_clusters_json(repo: Path) -> None:
    (repo / CLUSTERS).unlink()
    issue = only(repo, CLUSTERS)
    assert "file not found" in issue.message and issue.line is None


# --------------------------------------------------------------------------- JSONL


def test_every_bad_jsonl_line_is_reported(repo: Path) -> None:
    path = repo / SCENARIOS
    lines = path.read_text().split("\n")
    lines[2] = '{"id": "rtb-003", "input": '
    lines[4] = "[1, 2]"
    lines[6] = '"just a string"'
    lines[7] = '{"id": "x", "id": "y", "input": "z", "expected": "ACCEPT"}'
    path.write_text("\n".join(lines))
    issues = issues_in(repo, SCENARIOS)
    by_line = {i.line: i for i in issues}
    assert sorted(by_line) == [3, 5, 7, 8]
    assert by_line[3].message.startswith("invalid JSON") and by_line[3].column == 28
    assert by_line[5].message == "each line must be a JSON object; got a list"
    assert "got str" in by_line[7].message
    assert by_line[8].message == "duplicate key 'id'"


def test_jsonl_issue_flood_is_capped(repo: Path) -> None:
    path = repo / SCENARIOS
    path.write_text(path.read_text() + "{oops\n" * 5000)
    started = time.perf_counter()
    issues = issues_in(repo, SCENARIOS)
    assert time.perf_counter() - started < 10  # a hang guard, not a speed check
    assert len(issues) == 51 and any("not shown" in i.message for i in issues)


def test_jsonl_deep_nesting(repo: Path) -> None:
    path = repo / SCENARIOS
    path.write_text(path.read_text() + "[" * 200_000 + "\n")
    issue = only(repo, SCENARIOS)
    assert "nested too deeply" in issue.message and issue.line == 14


def test_jsonl_blank_lines_and_crlf_are_fine(repo: Path) -> None:
    path = repo / SCENARIOS
    path.write_text("\n\n" + path.read_text().replace("\n", "\r\n\r\n"))
    repository = load_repository(repo)
    sources = repository.suites["rtb-quality"].scenario_sources
    assert sources["rtb-001"] == (SCENARIOS, 3)
    assert sources["rtb-002"] == (SCENARIOS, 5)


# --------------------------------------------------------------------------- paths


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_symlink_pointing_outside_the_repository(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text((repo / SPECIALIST).read_text())
    (repo / SPECIALIST).unlink()
    os.symlink(outside, repo / SPECIALIST)
    issue = only(repo, SPECIALIST)
    assert "symlink points outside the repository" in issue.message


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_scenarios_symlink_pointing_outside_the_suite(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.jsonl"
    outside.write_text((repo / SCENARIOS).read_text())
    (repo / SCENARIOS).unlink()
    os.symlink(outside, repo / SCENARIOS)
    issue = only(repo, SUITE)  # at the field that names the file
    assert issue.field == "spec.scenarios[0]" and issue.line is not None
    assert "resolves outside the suite folder" in issue.message


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_symlink_loop(repo: Path) -> None:
    loop = repo / "specialists/loop.yaml"
    os.symlink(loop, loop)
    issues = issues_in(repo, "specialists/loop.yaml")
    assert issues and issues[0].line is None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_fifo_is_not_read(repo: Path) -> None:
    os.mkfifo(repo / "specialists/pipe.yaml")
    assert only(repo, "specialists/pipe.yaml").message == "not a regular file"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("../../specialists/rtb-quality.yaml", "contains '..'"),
        ("/etc/passwd", "absolute path"),
        ("C:/data.jsonl", "absolute path"),
        ("sub\\\\x.jsonl", "'/' as the path separator"),
    ],
)
def test_hostile_scenario_paths(repo: Path, entry: str, message: str) -> None:
    path = repo / SUITE
    path.write_text(path.read_text().replace("[scenarios.jsonl]", f'[scenarios.jsonl, "{entry}"]'))
    issue = only(repo, SUITE)
    assert issue.field == "spec.scenarios[1]" and message in issue.message
    assert issue.line == 9


def test_hidden_files_are_ignored(repo: Path) -> None:
    (repo / "specialists/.draft.yaml").write_text("garbage: [\n")
    (repo / "policies/.swp.yaml").write_text("\x00\x01")
    (repo / "evals/.cache").mkdir()
    assert validate_repository(repo) == []


def test_suite_folder_without_suite_yaml(repo: Path) -> None:
    (repo / "evals/empty").mkdir()
    issue = only(repo, "evals/empty")
    assert "no suite.yaml" in issue.message


def test_not_a_directory(tmp_path: Path) -> None:
    issues = validate_repository(tmp_path / "missing")
    assert len(issues) == 1 and issues[0].message == "not a directory"
