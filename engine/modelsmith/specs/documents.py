"""Parse one declarative file and validate it against its model.

A YAML file holds documents of known kinds: each one's envelope (apiVersion, kind) is checked
before its spec is validated. ``config/clusters.json`` is one JSON object. Issues go to the
:class:`~modelsmith.specs.context.LoadContext`; nothing here raises for bad content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import NAME_PATTERN, SUPPORTED_API_VERSIONS, Document
from .clusters import ClustersConfig
from .context import LoadContext
from .models import EvalSuite, PromotionPolicy, RoutingTable, Specialist
from .validation import short_value, validate_model
from .yamlio import (
    SPEC_MAX_BYTES,
    ParseFailure,
    decode_utf8,
    key_line_col,
    node_line_col,
    parse_json_document,
    parse_yaml_documents,
    path_line_col,
    to_plain,
)

_KIND_MODELS: dict[str, type[Document]] = {
    "Specialist": Specialist,
    "EvalSuite": EvalSuite,
    "PromotionPolicy": PromotionPolicy,
    "RoutingTable": RoutingTable,
}


@dataclass
class ParsedDocument:
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


def yaml_documents(
    ctx: LoadContext, path: Path, kinds: tuple[str, ...], *, single: bool, folder: str
) -> tuple[list[ParsedDocument], bytes | None]:
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
        ctx.add_failure(display, failure)
        return [], raw
    present = [(index, node) for index, node in enumerate(nodes) if node is not None]
    if not present:
        # line 1: where the document should start (an editor opens the file there)
        ctx.add(display, 1, None, None, f"file is empty; expected a {expected} document")
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


def _validate_document(
    ctx: LoadContext,
    display: str,
    path: Path,
    node: Any,
    kinds: tuple[str, ...],
    folder: str,
    starts: list[int],
    index: int,
) -> ParsedDocument:
    """Check the envelope (apiVersion, kind) and validate against the kind's model."""
    unknown = ParsedDocument(display, path, node, "", None, None)
    if not isinstance(node, dict):
        _report_not_a_mapping(ctx, display, node, starts, index)
        return unknown
    try:
        data = to_plain(node)
    except ParseFailure as failure:
        ctx.add_failure(display, failure)
        return unknown
    doc = _identify(display, path, node, data, kinds)
    if _check_envelope(ctx, display, node, data, kinds, folder):
        doc.model, issues = validate_model(_KIND_MODELS[doc.kind], data, file=display, tree=node)
        ctx.extend(issues)
    return doc


def _report_not_a_mapping(
    ctx: LoadContext, display: str, node: Any, starts: list[int], index: int
) -> None:
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


def _identify(
    display: str, path: Path, node: Any, data: dict[str, Any], kinds: tuple[str, ...]
) -> ParsedDocument:
    """The document's kind and name, read before validation so that a broken document still
    answers references to it, instead of every reference becoming one more issue."""
    kind = data.get("kind")
    metadata = data.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not (isinstance(name, str) and re.fullmatch(NAME_PATTERN, name)):
        name = None
    return ParsedDocument(display, path, node, kind if kind in kinds else "", name, None)


def _check_envelope(
    ctx: LoadContext,
    display: str,
    node: Any,
    data: dict[str, Any],
    kinds: tuple[str, ...],
    folder: str,
) -> bool:
    """Whether apiVersion is supported and kind belongs in ``folder``; reports the first
    that is not."""
    expected = " or ".join(kinds)
    supported = ", ".join(SUPPORTED_API_VERSIONS)
    if "apiVersion" not in data:
        line, col = node_line_col(node)
        ctx.add(display, line, col, "apiVersion", f"field required (supported: {supported})")
        return False
    if data["apiVersion"] not in SUPPORTED_API_VERSIONS:
        line, col = key_line_col(node, "apiVersion")
        ctx.add(
            display,
            line,
            col,
            "apiVersion",
            f"unsupported apiVersion '{short_value(data['apiVersion'])}' (supported: {supported})",
        )
        return False
    kind = data.get("kind")
    if "kind" not in data:
        line, col = node_line_col(node)
        ctx.add(display, line, col, "kind", f"field required; {folder}/ holds {expected}")
        return False
    if kind not in kinds:
        line, col = key_line_col(node, "kind")
        ctx.add(
            display,
            line,
            col,
            "kind",
            f"kind '{short_value(kind)}' does not belong in {folder}/; expected {expected}",
        )
        return False
    return True


def check_file_name(
    ctx: LoadContext, doc: ParsedDocument, kind: str, expected: str, what: str
) -> None:
    """metadata.name must equal the file (or folder) name. Either way the document is then
    known by that name, which is the one references most likely use."""
    if doc.kind != kind:
        return
    if doc.name is not None and doc.name != expected:
        line, col = path_line_col(doc.tree, "metadata", "name")
        ctx.add(
            doc.file,
            line,
            col,
            "metadata.name",
            f"name '{doc.name}' must match the {what} name '{expected}'",
        )
    doc.name = expected


def read_clusters(ctx: LoadContext, path: Path) -> ClustersConfig | None:
    """Parse and validate ``config/clusters.json``; ``None`` when it has issues."""
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
            raise ParseFailure("file is empty; expected a JSON object", 1)
        data, tree = parse_json_document(text)
    except ParseFailure as failure:
        ctx.add_failure(display, failure)
        return None
    if not isinstance(data, dict):
        ctx.add(display, 1, 1, None, "must be a JSON object")
        return None
    model, issues = validate_model(ClustersConfig, data, file=display, tree=tree)
    ctx.extend(issues)
    return model
