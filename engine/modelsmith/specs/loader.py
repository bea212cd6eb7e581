"""Load and validate the desired state: every declarative file of a repository.

Loading never stops at the first problem: each file is parsed and validated on its own, then
references between files are checked, and every issue found is reported together.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import NAME_PATTERN, SUPPORTED_API_VERSIONS, Document
from .clusters import ClustersConfig
from .errors import SpecError, SpecIssue
from .models import (
    EvalSuite,
    LabelOutput,
    PromotionPolicy,
    RoutingTable,
    Scenario,
    Specialist,
    check_relative_path,
)
from .validation import format_field_path, short_value, validate_model
from .yamlio import (
    JSONL_MAX_BYTES,
    SPEC_MAX_BYTES,
    ParseFailure,
    decode_utf8,
    item_line_col,
    key_line_col,
    loads_json,
    node_line_col,
    parse_json_document,
    parse_yaml_documents,
    read_bounded,
    to_plain,
)

CLUSTERS_PATH = "config/clusters.json"
SUITE_FILE = "suite.yaml"
#: Issues reported per file before the rest are summarised (a broken 32 MiB JSONL file
#: would otherwise produce a million of them).
MAX_ISSUES_PER_FILE = 50

_KIND_MODELS: dict[str, type[Document]] = {
    "Specialist": Specialist,
    "EvalSuite": EvalSuite,
    "PromotionPolicy": PromotionPolicy,
    "RoutingTable": RoutingTable,
}


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


@dataclass
class Repository:
    """The desired state, fully validated."""

    root: Path
    specialists: dict[str, Specialist]
    suites: dict[str, LoadedSuite]
    policies: dict[str, PromotionPolicy]
    routing: RoutingTable | None
    clusters: ClustersConfig
    #: (kind, name) -> file the object was read from
    sources: dict[tuple[str, str], Path] = field(default_factory=dict)

    def suite_for(self, specialist: Specialist) -> LoadedSuite:
        return self.suites[specialist.spec.evals]

    def policy_for(self, specialist: Specialist) -> PromotionPolicy:
        return self.policies[specialist.spec.policy]


# --------------------------------------------------------------------------- internals


@dataclass
class _Doc:
    """One YAML document of a known kind and where it came from.

    ``model`` is ``None`` when the document failed validation; ``name`` is still set when
    metadata.name was readable, so that references to it do not cascade into more issues.
    """

    file: str
    path: Path
    tree: Any
    kind: str
    name: str | None
    model: Document | None


class _Context:
    """Collects issues while loading; knows the repository root for relative paths."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.issues: list[SpecIssue] = []
        self.total = 0  # issues found, shown or not
        self._per_file: dict[str, int] = {}
        #: kinds some of whose documents could not be read at all: an unknown reference to
        #: such a kind is probably one of them, so it is not reported a second time
        self.incomplete: set[str] = set()

    def rel(self, path: Path) -> str:
        if self.root is not None:
            try:
                return path.relative_to(self.root).as_posix()
            except ValueError:
                pass
        return path.as_posix()

    def add(
        self,
        file: str,
        line: int | None,
        column: int | None,
        field_path: str | None,
        message: str,
    ) -> None:
        self.extend([SpecIssue(file, line, column, field_path, message)])

    def extend(self, issues: Iterable[SpecIssue]) -> None:
        for issue in issues:
            self.total += 1
            count = self._per_file.get(issue.file, 0) + 1
            self._per_file[issue.file] = count
            if count <= MAX_ISSUES_PER_FILE:
                self.issues.append(issue)
            elif count == MAX_ISSUES_PER_FILE + 1:
                self.issues.append(
                    SpecIssue(
                        issue.file,
                        None,
                        None,
                        None,
                        f"more than {MAX_ISSUES_PER_FILE} issues; the rest are not shown",
                    )
                )

    @contextmanager
    def guard(self, file: str) -> Iterator[None]:
        """Last line of defence: a bug triggered by one file becomes an issue on that file
        instead of a traceback that hides the issues of every other file."""
        try:
            yield
        except Exception as exc:
            self.add(file, None, None, None, f"internal error: {type(exc).__name__}: {exc}")

    def issue_count(self, file: str) -> int:
        return self._per_file.get(file, 0)

    def read(self, path: Path, limit: int, inside: Path | None = None) -> bytes | None:
        """Read a file after checking it stays inside the repository (or ``inside``)."""
        display = self.rel(path)
        boundary = inside if inside is not None else self.root
        if boundary is not None:
            real_boundary = _real(boundary)
            real = _real(path)
            if real is None or real_boundary is None:
                self.add(display, None, None, None, "cannot resolve path (symlink loop?)")
                return None
            if not real.is_relative_to(real_boundary):
                where = "the suite folder" if inside is not None else "the repository"
                self.add(display, None, None, None, f"symlink points outside {where}: {real}")
                return None
        try:
            return read_bounded(path, limit)
        except ParseFailure as failure:
            self.add(display, failure.line, failure.column, failure.field, failure.message)
            return None


def _real(path: Path) -> Path | None:
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError):
        return None


def _position(tree: Any, *path: str | int) -> tuple[int | None, int | None]:
    """1-based position of the value at ``path`` in a round-trip tree (deepest that exists)."""
    line, col = node_line_col(tree)
    node = tree
    for part in path:
        try:
            if isinstance(part, int):
                line, col = item_line_col(node, part)
            else:
                line, col = key_line_col(node, part)
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
    return line, col


def _document_lines(text: str) -> list[int]:
    """Best-effort start line of each document (for scalars, which carry no position)."""
    starts: list[int] = []
    pending = True
    for number, raw in enumerate(text.split("\n"), 1):
        stripped = raw.strip()
        separator = re.match(r"^---(\s|$)", raw) is not None
        content = pending and stripped and not stripped.startswith(("#", "%"))
        if separator or content:
            starts.append(number)
            pending = False
    return starts


def _list_files(directory: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """Candidate files of a folder, sorted, hidden ones skipped. Symlinks and special files
    are included so that the reader can refuse them with a clear message."""
    if not directory.is_dir():
        return
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.suffix not in suffixes:
            continue
        if path.is_dir():
            continue
        yield path


def _yaml_documents(
    ctx: _Context, path: Path, kinds: tuple[str, ...], *, single: bool, folder: str
) -> tuple[list[_Doc], bytes | None]:
    """Parse and validate the documents of one YAML file; issues go to ``ctx``."""
    display = ctx.rel(path)
    raw = ctx.read(path, SPEC_MAX_BYTES)
    if raw is None:
        return [], None
    expected = " or ".join(kinds)
    try:
        text = decode_utf8(raw)
        nodes = parse_yaml_documents(text)
    except ParseFailure as failure:
        ctx.add(display, failure.line, failure.column, failure.field, failure.message)
        return [], raw
    present = [(index, node) for index, node in enumerate(nodes) if node is not None]
    if not present:
        ctx.add(display, None, None, None, f"file is empty; expected a {expected} document")
        return [], raw
    starts = _document_lines(text)
    if single and len(present) > 1:
        second = present[1][0]
        line = starts[second] if second < len(starts) else None
        ctx.add(
            display, line, None, None, f"expected one {expected} document, found {len(present)}"
        )
        return [], raw
    docs = [
        _validate_document(ctx, display, path, node, kinds, folder, starts, index)
        for index, node in present
    ]
    return docs, raw


def _validate_document(
    ctx: _Context,
    display: str,
    path: Path,
    node: Any,
    kinds: tuple[str, ...],
    folder: str,
    starts: list[int],
    index: int,
) -> _Doc:
    """Check the envelope (apiVersion, kind) and validate against the kind's model."""
    expected = " or ".join(kinds)
    unknown = _Doc(display, path, node, "", None, None)
    if not isinstance(node, dict):
        line, col = node_line_col(node)
        if line is None and index < len(starts):
            line = starts[index]
        what = "a list" if isinstance(node, list) else f"a {type(node).__name__} value"
        ctx.add(
            display,
            line,
            col,
            None,
            f"document must be a mapping with apiVersion, kind, metadata and spec; got {what}",
        )
        return unknown
    try:
        data = to_plain(node)
    except ParseFailure as failure:
        ctx.add(display, failure.line, failure.column, failure.field, failure.message)
        return unknown

    # Name and kind are read before validation so that a broken document still answers
    # references to it, instead of every reference becoming one more issue.
    kind = data.get("kind")
    metadata = data.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not (isinstance(name, str) and re.fullmatch(NAME_PATTERN, name)):
        name = None
    doc = _Doc(display, path, node, kind if kind in kinds else "", name, None)

    supported = ", ".join(SUPPORTED_API_VERSIONS)
    if "apiVersion" not in data:
        line, col = node_line_col(node)
        ctx.add(display, line, col, "apiVersion", f"field required (supported: {supported})")
        return doc
    if data["apiVersion"] not in SUPPORTED_API_VERSIONS:
        line, col = key_line_col(node, "apiVersion")
        ctx.add(
            display,
            line,
            col,
            "apiVersion",
            f"unsupported apiVersion '{short_value(data['apiVersion'])}' (supported: {supported})",
        )
        return doc
    if "kind" not in data:
        line, col = node_line_col(node)
        ctx.add(display, line, col, "kind", f"field required; {folder}/ holds {expected}")
        return doc
    if kind not in kinds:
        line, col = key_line_col(node, "kind")
        ctx.add(
            display,
            line,
            col,
            "kind",
            f"kind '{short_value(kind)}' does not belong in {folder}/; expected {expected}",
        )
        return doc
    doc.model, issues = validate_model(_KIND_MODELS[kind], data, file=display, tree=node)
    ctx.extend(issues)
    return doc


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split())


# --------------------------------------------------------------------------- per kind


def _load_specialists(ctx: _Context, root: Path) -> list[_Doc]:
    docs: list[_Doc] = []
    for path in _list_files(root / "specialists", (".yaml", ".yml")):
        found: list[_Doc] = []
        with ctx.guard(ctx.rel(path)):
            found, _ = _yaml_documents(
                ctx, path, ("Specialist",), single=True, folder="specialists"
            )
            for doc in found:
                _check_file_name(ctx, doc, "Specialist", path.stem, "file")
        docs.extend(found)
        if not any(doc.kind == "Specialist" for doc in found):
            # The file is named after its specialist: let references to it resolve.
            docs.append(_Doc(ctx.rel(path), path, None, "Specialist", path.stem, None))
    return docs


def _check_file_name(ctx: _Context, doc: _Doc, kind: str, expected: str, what: str) -> None:
    """metadata.name must equal the file (or folder) name. Either way the document is then
    known by that name, which is the one references most likely use."""
    if doc.kind != kind:
        return
    if doc.name is not None and doc.name != expected:
        line, col = _position(doc.tree, "metadata", "name")
        ctx.add(
            doc.file,
            line,
            col,
            "metadata.name",
            f"name '{doc.name}' must match the {what} name '{expected}'",
        )
    doc.name = expected


def _suite_dirs(root: Path) -> Iterator[Path]:
    evals = root / "evals"
    if not evals.is_dir():
        return
    for entry in sorted(evals.iterdir()):
        if not entry.name.startswith(".") and entry.is_dir():
            yield entry


def _load_suite_dir(ctx: _Context, directory: Path) -> tuple[_Doc | None, LoadedSuite | None]:
    """Load one suite folder; returns the document (for references) and, when every part is
    valid, the loaded suite."""
    suite_path = directory / SUITE_FILE
    if not suite_path.exists() and not suite_path.is_symlink():
        ctx.add(ctx.rel(directory), None, None, None, f"suite folder has no {SUITE_FILE}")
        return None, None
    before = ctx.total
    found, suite_bytes = _yaml_documents(
        ctx, suite_path, ("EvalSuite",), single=True, folder="evals/<suite>"
    )
    if not found or suite_bytes is None or found[0].kind != "EvalSuite":
        # The folder is named after its suite: let references to it resolve.
        return _Doc(ctx.rel(suite_path), suite_path, None, "EvalSuite", directory.name, None), None
    doc = found[0]
    _check_file_name(ctx, doc, "EvalSuite", directory.name, "folder")
    suite = doc.model if isinstance(doc.model, EvalSuite) else None
    # Scenario files are checked even when suite.yaml has errors, as long as their paths
    # are readable: every issue is reported in one pass.
    paths = suite.spec.scenarios if suite is not None else _raw_scenario_paths(doc.tree)

    digest = hashlib.sha256()
    _hash_part(digest, SUITE_FILE, suite_bytes)
    scenarios: list[Scenario] = []
    sources: dict[str, tuple[str, int]] = {}
    splits: dict[str, str] = {}
    complete = True
    for index, rel in enumerate(paths):
        line, col = _position(doc.tree, "spec", "scenarios", index)
        path = directory / rel
        if not path.exists() and not path.is_symlink():
            ctx.add(doc.file, line, col, f"spec.scenarios[{index}]", f"file not found: {rel}")
            complete = False
            continue
        raw = ctx.read(path, JSONL_MAX_BYTES, inside=directory)
        if raw is None:
            complete = False
            continue
        _hash_part(digest, rel, raw)
        rows = _parse_scenarios(ctx, ctx.rel(path), raw)
        if rows is None:
            complete = False
            continue
        for row_line, scenario in rows:
            file = ctx.rel(path)
            if scenario.id in sources:
                first_file, first_line = sources[scenario.id]
                if splits[scenario.id] != scenario.split:
                    message = (
                        f"scenario id '{scenario.id}' is used by both a core and a held-out "
                        f"scenario (also at {first_file}:{first_line}); held-out ids must be "
                        "disjoint from core ids"
                    )
                else:
                    message = (
                        f"duplicate scenario id '{scenario.id}' "
                        f"(first defined at {first_file}:{first_line})"
                    )
                ctx.add(file, row_line, None, "id", message)
                continue
            sources[scenario.id] = (file, row_line)
            splits[scenario.id] = scenario.split
            scenarios.append(scenario)

    if suite is not None and suite.spec.generator is not None:
        module = suite.spec.generator.rpartition(":")[0]
        if not (directory / module).is_file():
            line, col = _position(doc.tree, "spec", "generator")
            ctx.add(doc.file, line, col, "spec.generator", f"file not found: {module}")

    if complete and suite is not None:
        _check_scenario_sets(ctx, doc, scenarios, sources)
    if ctx.total != before or suite is None:
        return doc, None
    return doc, LoadedSuite(suite, scenarios, digest.hexdigest(), directory, sources)


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


def _parse_scenarios(ctx: _Context, file: str, raw: bytes) -> list[tuple[int, Scenario]] | None:
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
            row = to_plain(loads_json(line))
        except ParseFailure as failure:
            ctx.add(file, number, failure.column, None, failure.message)
            continue
        if not isinstance(row, dict):
            got = "a list" if isinstance(row, list) else f"{type(row).__name__} {row!r}"[:40]
            ctx.add(file, number, None, None, f"each line must be a JSON object; got {got}")
            continue
        scenario, issues = validate_model(Scenario, row, file=file, line=number)
        ctx.extend(issues)
        if scenario is not None:
            rows.append((number, scenario))
    return rows


def _check_scenario_sets(
    ctx: _Context, doc: _Doc, scenarios: list[Scenario], sources: dict[str, tuple[str, int]]
) -> None:
    core = [s for s in scenarios if s.split == "core"]
    if not core:
        line, col = _position(doc.tree, "spec", "scenarios")
        ctx.add(doc.file, line, col, "spec.scenarios", "the suite needs at least one core scenario")
    # Leakage: a held-out text the model may have seen (as a core input or variant) would
    # make the held-out score meaningless.
    seen: dict[str, str] = {}
    for scenario in core:
        for text in (scenario.input, *scenario.variants):
            seen.setdefault(_normalise(text), scenario.id)
    for scenario in scenarios:
        if scenario.split != "heldout":
            continue
        file, line = sources[scenario.id]
        for index, text in enumerate((scenario.input, *scenario.variants)):
            core_id = seen.get(_normalise(text))
            if core_id is not None:
                where = "input" if index == 0 else f"variants[{index - 1}]"
                ctx.add(
                    file,
                    line,
                    None,
                    where,
                    f"held-out scenario '{scenario.id}' leaks: its {where} matches core "
                    f"scenario '{core_id}' (ignoring case and whitespace)",
                )


def _load_policies(ctx: _Context, root: Path) -> list[_Doc]:
    docs: list[_Doc] = []
    for path in _list_files(root / "policies", (".yaml", ".yml")):
        found: list[_Doc] = []
        with ctx.guard(ctx.rel(path)):
            found, _ = _yaml_documents(
                ctx, path, ("PromotionPolicy", "RoutingTable"), single=False, folder="policies"
            )
        docs.extend(found)
        if not found or any(not doc.kind or doc.name is None for doc in found):
            ctx.incomplete.update(("PromotionPolicy", "RoutingTable"))
    return docs


def _load_clusters(ctx: _Context, path: Path) -> ClustersConfig | None:
    display = ctx.rel(path)
    if not path.exists() and not path.is_symlink():
        ctx.add(display, None, None, None, "file not found; every repository needs one")
        return None
    raw = ctx.read(path, SPEC_MAX_BYTES)
    if raw is None:
        return None
    try:
        text = decode_utf8(raw)
        if not text.strip():
            raise ParseFailure("file is empty; expected a JSON object")
        data, tree = parse_json_document(text)
    except ParseFailure as failure:
        ctx.add(display, failure.line, failure.column, failure.field, failure.message)
        return None
    if not isinstance(data, dict):
        ctx.add(display, 1, 1, None, "must be a JSON object")
        return None
    model, issues = validate_model(ClustersConfig, data, file=display, tree=tree)
    ctx.extend(issues)
    return model


# --------------------------------------------------------------------------- references


def _unique_names(ctx: _Context, docs: list[_Doc], kind: str) -> dict[str, _Doc]:
    """Declared name -> first document of ``kind`` with it; later ones are issues."""
    by_name: dict[str, _Doc] = {}
    for doc in docs:
        if doc.kind != kind or doc.name is None:
            continue
        first = by_name.get(doc.name)
        if first is not None:
            line, col = _position(doc.tree, "metadata", "name")
            first_line, _ = _position(first.tree, "metadata", "name")
            ctx.add(
                doc.file,
                line,
                col,
                "metadata.name",
                f"duplicate {kind} '{doc.name}' (also defined at {first.file}:{first_line})",
            )
            continue
        by_name[doc.name] = doc
    return by_name


def _ref(
    ctx: _Context,
    doc: _Doc,
    path: tuple[str | int, ...],
    value: str,
    known: Iterable[str],
    what: str,
    kind: str,
) -> None:
    names = sorted(known)
    if value in names or kind in ctx.incomplete:
        return
    line, col = _position(doc.tree, *path)
    listing = ", ".join(names) if names else "none defined"
    ctx.add(
        doc.file, line, col, format_field_path(path), f"unknown {what} '{value}' (known: {listing})"
    )


def _check_references(
    ctx: _Context,
    specialists: dict[str, _Doc],
    suite_docs: dict[str, _Doc],
    suites: dict[str, LoadedSuite],
    policies: dict[str, _Doc],
    routing: _Doc | None,
    clusters: ClustersConfig | None,
) -> None:
    for doc in specialists.values():
        if not isinstance(doc.model, Specialist):
            continue
        spec = doc.model.spec
        if clusters is not None:
            _ref(ctx, doc, ("spec", "base"), spec.base, clusters.models, "model profile", "")
            _ref(
                ctx,
                doc,
                ("spec", "training", "profile"),
                spec.training.profile,
                clusters.profiles,
                "hyper-parameter profile",
                "",
            )
        _ref(ctx, doc, ("spec", "evals"), spec.evals, suite_docs, "eval suite", "EvalSuite")
        _ref(
            ctx,
            doc,
            ("spec", "policy"),
            spec.policy,
            policies,
            "promotion policy",
            "PromotionPolicy",
        )
        loaded = suites.get(spec.evals)
        if loaded is not None and isinstance(spec.task.output, LabelOutput):
            labels = spec.task.output.labels
            for scenario in loaded.scenarios:
                if not isinstance(scenario.expected, str) or scenario.expected not in labels:
                    file, line = loaded.scenario_sources[scenario.id]
                    ctx.add(
                        file,
                        line,
                        None,
                        "expected",
                        f"expected {scenario.expected!r} is not a label of specialist "
                        f"'{doc.name}' ({', '.join(labels)})",
                    )
    if routing is not None and isinstance(routing.model, RoutingTable):
        table = routing.model
        for index, rule in enumerate(table.spec.rules):
            _ref(
                ctx,
                routing,
                ("spec", "rules", index, "route"),
                rule.route,
                specialists,
                "specialist",
                "Specialist",
            )
        from .routing import shadowed

        for later, earlier in shadowed(table.spec.rules):
            line, col = _position(routing.tree, "spec", "rules", later)
            ctx.add(routing.file, line, col, f"spec.rules[{later}]",
                    f"rule '{table.spec.rules[later].name}' can never match: rule "
                    f"'{table.spec.rules[earlier].name}' before it matches every request "
                    "it would")
        if table.spec.default is not None:
            _ref(
                ctx,
                routing,
                ("spec", "default"),
                table.spec.default,
                specialists,
                "specialist",
                "Specialist",
            )


# --------------------------------------------------------------------------- public API


def _load(root: Path) -> tuple[Repository | None, list[SpecIssue]]:
    root = Path(root)
    ctx = _Context(root)
    if not root.is_dir():
        return None, [SpecIssue(str(root), None, None, None, "not a directory")]

    clusters: ClustersConfig | None = None
    with ctx.guard(CLUSTERS_PATH):
        clusters = _load_clusters(ctx, root / CLUSTERS_PATH)
    specialist_docs = _load_specialists(ctx, root)

    suite_docs_list: list[_Doc] = []
    loaded_suites: dict[str, LoadedSuite] = {}
    for directory in _suite_dirs(root):
        doc, loaded = None, None
        with ctx.guard(ctx.rel(directory / SUITE_FILE)):
            doc, loaded = _load_suite_dir(ctx, directory)
        if doc is not None:
            suite_docs_list.append(doc)
        if loaded is not None and loaded.name not in loaded_suites:
            loaded_suites[loaded.name] = loaded

    policy_docs = _load_policies(ctx, root)
    specialists = _unique_names(ctx, specialist_docs, "Specialist")
    suite_docs = _unique_names(ctx, suite_docs_list, "EvalSuite")
    policies = _unique_names(ctx, policy_docs, "PromotionPolicy")
    routing_docs = [d for d in policy_docs if d.kind == "RoutingTable"]
    for extra in routing_docs[1:]:
        line, col = node_line_col(extra.tree)
        first = routing_docs[0]
        ctx.add(
            extra.file,
            line,
            col,
            None,
            f"only one RoutingTable is allowed (another is '{first.name}' in {first.file})",
        )
    routing = routing_docs[0] if routing_docs else None

    with ctx.guard("."):
        _check_references(ctx, specialists, suite_docs, loaded_suites, policies, routing, clusters)

    issues = sorted(ctx.issues, key=SpecIssue.sort_key)
    if issues or clusters is None:
        return None, issues
    sources: dict[tuple[str, str], Path] = {}
    for doc in [*specialists.values(), *suite_docs.values(), *policies.values()]:
        sources[(doc.kind, doc.name or "")] = doc.path
    if routing is not None:
        sources[("RoutingTable", routing.name or "")] = routing.path
    repo = Repository(
        root=root,
        specialists={n: d.model for n, d in specialists.items() if isinstance(d.model, Specialist)},
        suites=loaded_suites,
        policies={n: d.model for n, d in policies.items() if isinstance(d.model, PromotionPolicy)},
        routing=routing.model if routing and isinstance(routing.model, RoutingTable) else None,
        clusters=clusters,
        sources=sources,
    )
    return repo, []


def load_repository(root: Path) -> Repository:
    """Load every declarative file under ``root``; raises :class:`SpecError` listing every
    issue found."""
    repo, issues = _load(Path(root))
    if repo is None:
        raise SpecError(issues)
    return repo


def validate_repository(root: Path) -> list[SpecIssue]:
    """Every issue in the repository at ``root``, sorted by file and line; ``[]`` when clean.

    Never raises for bad content.
    """
    return _load(Path(root))[1]


def _single(ctx: _Context) -> None:
    if ctx.issues:
        raise SpecError(sorted(ctx.issues, key=SpecIssue.sort_key))


def load_specialist_file(path: Path, root: Path | None = None) -> Specialist:
    """Load one ``specialists/<name>.yaml`` (no cross-file checks)."""
    path = Path(path)
    ctx = _Context(root)
    docs, _ = _yaml_documents(ctx, path, ("Specialist",), single=True, folder="specialists")
    for doc in docs:
        _check_file_name(ctx, doc, "Specialist", path.stem, "file")
    _single(ctx)
    if not docs or not isinstance(docs[0].model, Specialist):
        raise SpecError([SpecIssue(ctx.rel(path), None, None, None, "no Specialist loaded")])
    return docs[0].model


def load_suite(directory: Path, root: Path | None = None) -> LoadedSuite:
    """Load one ``evals/<name>/`` folder with its scenarios (no cross-file checks)."""
    directory = Path(directory)
    ctx = _Context(root)
    _, loaded = _load_suite_dir(ctx, directory)
    _single(ctx)
    if loaded is None:
        raise SpecError([SpecIssue(ctx.rel(directory), None, None, None, "no suite loaded")])
    return loaded


def load_policy_file(path: Path, root: Path | None = None) -> list[PromotionPolicy | RoutingTable]:
    """Load every document of one ``policies/*.yaml`` file."""
    ctx = _Context(root)
    docs, _ = _yaml_documents(
        ctx, Path(path), ("PromotionPolicy", "RoutingTable"), single=False, folder="policies"
    )
    _single(ctx)
    return [doc.model for doc in docs if isinstance(doc.model, PromotionPolicy | RoutingTable)]


def load_clusters(path: Path, root: Path | None = None) -> ClustersConfig:
    """Load ``config/clusters.json``."""
    ctx = _Context(root)
    clusters = _load_clusters(ctx, Path(path))
    _single(ctx)
    assert clusters is not None
    return clusters
