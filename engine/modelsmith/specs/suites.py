"""Load one eval suite folder: ``suite.yaml``, its scenarios.jsonl files and a content hash.

Scenario lines are parsed and validated one by one, so every bad line is reported; then the
suite's scenarios are checked as a set (unique ids, at least one core, no held-out leakage).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .context import MAX_ISSUES_PER_FILE, LoadContext
from .documents import ParsedDocument, check_file_name, yaml_documents
from .models import EvalSuite, Scenario, check_relative_path
from .validation import format_field_path, validate_model
from .yamlio import (
    JSONL_MAX_BYTES,
    ParseFailure,
    decode_utf8,
    loads_json_row,
    path_line_col,
)

SUITE_FILE = "suite.yaml"


@dataclass
class LoadedSuite:
    """An eval suite with its scenarios and a hash that changes when any of its files do."""

    suite: EvalSuite
    scenarios: list[Scenario]
    suite_hash: str
    directory: Path
    #: scenario id -> (file relative to the repository root, 1-based line)
    scenario_sources: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.suite.name

    @property
    def core(self) -> list[Scenario]:
        return [s for s in self.scenarios if s.split == "core"]

    @property
    def heldout(self) -> list[Scenario]:
        return [s for s in self.scenarios if s.split == "heldout"]

    @property
    def dev(self) -> list[Scenario]:
        """Scenarios the loop decides on: evaluated like core, never training data."""
        return [s for s in self.scenarios if s.split == "dev"]

    @property
    def train(self) -> list[Scenario]:
        """The labelled training pool: never evaluated."""
        return [s for s in self.scenarios if s.split == "train"]

    @property
    def evaluated(self) -> list[Scenario]:
        """Every scenario an evaluation runs (all but the training pool)."""
        return [s for s in self.scenarios if s.split != "train"]


@dataclass
class _Scenarios:
    """A suite's scenarios in file order, each id once, with the line that defined it."""

    scenarios: list[Scenario] = field(default_factory=list)
    sources: dict[str, tuple[str, int]] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)

    def add(self, ctx: LoadContext, file: str, line: int, scenario: Scenario) -> None:
        """Keep ``scenario`` unless its id is taken; a taken id is an issue."""
        if scenario.id in self.sources:
            first_file, first_line = self.sources[scenario.id]
            if self.splits[scenario.id] != scenario.split:
                message = (
                    f"scenario id '{scenario.id}' is used by both a "
                    f"{self.splits[scenario.id]} and a {scenario.split} scenario (also at "
                    f"{first_file}:{first_line}); ids must be unique across splits"
                )
            else:
                message = (
                    f"duplicate scenario id '{scenario.id}' "
                    f"(first defined at {first_file}:{first_line})"
                )
            ctx.add(file, line, None, "id", message)
            return
        self.sources[scenario.id] = (file, line)
        self.splits[scenario.id] = scenario.split
        self.scenarios.append(scenario)


def load_suite_dir(
    ctx: LoadContext, directory: Path
) -> tuple[ParsedDocument | None, LoadedSuite | None]:
    """Load one suite folder; returns the document (for references) and, when every part is
    valid, the loaded suite."""
    suite_path = directory / SUITE_FILE
    if not suite_path.exists() and not suite_path.is_symlink():
        ctx.add(ctx.rel(directory), None, None, None, f"suite folder has no {SUITE_FILE}")
        return None, None
    before = ctx.total
    found, suite_bytes = yaml_documents(
        ctx, suite_path, ("EvalSuite",), single=True, folder="evals/<suite>"
    )
    if not found or suite_bytes is None or found[0].kind != "EvalSuite":
        # The folder is named after its suite: let references to it resolve.
        named = ParsedDocument(
            ctx.rel(suite_path), suite_path, None, "EvalSuite", directory.name, None
        )
        return named, None
    doc = found[0]
    check_file_name(ctx, doc, "EvalSuite", directory.name, "folder")
    suite = doc.model if isinstance(doc.model, EvalSuite) else None
    # Scenario files are checked even when suite.yaml has errors, as long as their paths
    # are readable: every issue is reported in one pass.
    paths = suite.spec.scenarios if suite is not None else _raw_scenario_paths(doc.tree)

    digest = hashlib.sha256()
    _hash_part(digest, SUITE_FILE, suite_bytes)
    collected = _Scenarios()
    complete = True
    for index, rel in enumerate(paths):
        if not _read_scenario_file(ctx, doc, directory, index, rel, digest, collected):
            complete = False

    if suite is not None:
        _check_generator(ctx, doc, suite, directory)
    if complete and suite is not None:
        _check_scenario_sets(ctx, doc, collected.scenarios, collected.sources)
    if ctx.total != before or suite is None:
        return doc, None
    return doc, LoadedSuite(
        suite, collected.scenarios, digest.hexdigest(), directory, collected.sources
    )


def _raw_scenario_paths(tree: Any) -> list[str]:
    """spec.scenarios of a suite that failed validation, if every entry is a safe path."""
    try:
        paths = tree["spec"]["scenarios"]
        if not isinstance(paths, list):
            return []
        return [check_relative_path(path) for path in paths if isinstance(path, str)]
    except (KeyError, TypeError, ValueError):
        return []


def _hash_part(digest: Any, name: str, data: bytes) -> None:
    # Length-prefixed so that moving bytes between files changes the hash.
    encoded = name.encode("utf-8")
    digest.update(len(encoded).to_bytes(8, "big") + encoded)
    digest.update(len(data).to_bytes(8, "big") + data)


def _read_scenario_file(
    ctx: LoadContext,
    doc: ParsedDocument,
    directory: Path,
    index: int,
    rel: str,
    digest: Any,
    collected: _Scenarios,
) -> bool:
    """Hash and collect the scenarios of ``spec.scenarios[index]``; whether it could be read."""
    path = directory / rel
    if not path.exists() and not path.is_symlink():
        line, col = path_line_col(doc.tree, "spec", "scenarios", index)
        ctx.add(doc.file, line, col, f"spec.scenarios[{index}]", f"file not found: {rel}")
        return False
    if (why := leaves_folder(directory, path)) is not None:
        line, col = path_line_col(doc.tree, "spec", "scenarios", index)
        ctx.add(doc.file, line, col, f"spec.scenarios[{index}]", f"{rel}: {why}")
        return False
    if not path.is_file():
        # a directory or a FIFO: what is wrong is the suite's entry, so point at it
        line, col = path_line_col(doc.tree, "spec", "scenarios", index)
        why = "is a directory, not a scenarios file" if path.is_dir() else "not a regular file"
        ctx.add(doc.file, line, col, f"spec.scenarios[{index}]", f"{rel}: {why}")
        return False
    raw = ctx.read(path, JSONL_MAX_BYTES, inside=directory)
    if raw is None:
        return False
    _hash_part(digest, rel, raw)
    file = ctx.rel(path)
    rows = _parse_scenarios(ctx, file, raw)
    if rows is None:
        return False
    for row_line, scenario in rows:
        collected.add(ctx, file, row_line, scenario)
    return True


def _parse_scenarios(
    ctx: LoadContext, file: str, raw: bytes
) -> list[tuple[int, Scenario]] | None:
    """Parse a JSONL file; bad lines are reported and skipped so every one is found."""
    try:
        text = decode_utf8(raw)
    except ParseFailure as failure:
        ctx.add(file, failure.line, failure.column, None, failure.message)
        return None
    rows: list[tuple[int, Scenario]] = []
    # split("\n") rather than splitlines(): the latter also splits on \x0c, \u2028, ...
    # which would make line numbers disagree with editors.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if ctx.issue_count(file) > MAX_ISSUES_PER_FILE:
            break
        try:
            row = loads_json_row(line)
        except ParseFailure as failure:
            ctx.add(file, number, failure.column, None, failure.message)
            continue
        if not isinstance(row, dict):
            got = "a list" if isinstance(row, list) else f"{type(row).__name__} {row!r}"[:40]
            ctx.add(file, number, None, None, f"each line must be a JSON object; got {got}")
            continue
        if (where := _non_finite(row)) is not None:
            ctx.add(file, number, None, format_field_path(where),
                    "number out of range: every number must be finite")
            continue
        scenario, issues = validate_model(Scenario, row, file=file, line=number)
        ctx.extend(issues)
        if scenario is not None:
            rows.append((number, scenario))
    return rows


def _non_finite(value: Any, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Path of the first infinite number in a row (JSON's 1e999 parses as infinity; NaN and
    Infinity themselves are refused by the parser); None when every number is finite."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    for key, item in items:
        if (found := _non_finite(item, (*path, key))) is not None:
            return found
    return None


def _check_generator(
    ctx: LoadContext, doc: ParsedDocument, suite: EvalSuite, directory: Path
) -> None:
    """spec.generator names a module of the suite folder, which must exist and stay inside
    the folder once symlinks are resolved."""
    if suite.spec.generator is None:
        return
    module = suite.spec.generator.rpartition(":")[0]
    path = directory / module
    line, col = path_line_col(doc.tree, "spec", "generator")
    if (path.exists() or path.is_symlink()) and (why := leaves_folder(directory, path)):
        ctx.add(doc.file, line, col, "spec.generator", f"{module}: {why}")
    elif path.is_dir():
        ctx.add(doc.file, line, col, "spec.generator", f"{module}: is a directory, not a module")
    elif not path.is_file():
        ctx.add(doc.file, line, col, "spec.generator", f"file not found: {module}")


def leaves_folder(directory: Path, path: Path) -> str | None:
    """Why ``path`` is not a file inside ``directory`` once every symlink (of the path and of
    the folder) is resolved; None when it is inside."""
    try:
        real_folder = directory.resolve(strict=True)
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return "cannot resolve the path (a broken symlink or a symlink loop)"
    if real == real_folder or not real.is_relative_to(real_folder):
        return f"resolves outside the suite folder (symlink?): {real}"
    return None


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def _check_scenario_sets(
    ctx: LoadContext,
    doc: ParsedDocument,
    scenarios: list[Scenario],
    sources: dict[str, tuple[str, int]],
) -> None:
    core = [s for s in scenarios if s.split == "core"]
    if not core:
        line, col = path_line_col(doc.tree, "spec", "scenarios")
        ctx.add(doc.file, line, col, "spec.scenarios", "the suite needs at least one core scenario")
    # Leakage: a held-out or dev text the model may have seen (as a core input, a variant
    # or a training-pool row) would make the score that gates or steers meaningless.
    seen: dict[str, Scenario] = {}
    for scenario in scenarios:
        if scenario.split in ("core", "train"):
            for text in (scenario.input, *scenario.variants):
                seen.setdefault(_normalise(text), scenario)
    for scenario in scenarios:
        if scenario.split not in ("heldout", "dev"):
            continue
        file, line = sources[scenario.id]
        for index, text in enumerate((scenario.input, *scenario.variants)):
            other = seen.get(_normalise(text))
            if other is not None:
                where = "input" if index == 0 else f"variants[{index - 1}]"
                ctx.add(
                    file,
                    line,
                    None,
                    where,
                    f"{scenario.split} scenario '{scenario.id}' leaks: its {where} matches "
                    f"{other.split} scenario '{other.id}' (ignoring case and whitespace)",
                )
