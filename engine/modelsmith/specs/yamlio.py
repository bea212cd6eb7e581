"""Bounded, hostile-input-safe reading of YAML, JSON and JSONL files.

Everything here turns a bad file into a :class:`ParseFailure` with a 1-based position instead
of a traceback: oversized files are refused before they are read, bytes are decoded strictly,
YAML is parsed with ruamel.yaml's round-trip loader (so positions and comments survive).

Limits hold while parsing, not after: the parser counts nodes as it emits them and stops at
:data:`MAX_YAML_NODES` (ruamel builds about 20k nodes a second, so a 4 MiB list is refused
after a fraction of its bytes), refuses deep nesting, keys that are collections and aliases
to an enclosing collection as it meets them, and a duplicate key is reported by its scalar
key alone (ruamel's own message renders the value, which for an alias bomb never ends). The
round-trip tree is then copied into plain Python under a budget of expanded values, which
defuses alias bombs.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import re
import stat
import sys
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, CommentedSet, TaggedScalar
from ruamel.yaml.constructor import DuplicateKeyError, RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    DocumentStartEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceStartEvent,
)
from ruamel.yaml.parser import RoundTripParser
from ruamel.yaml.reader import ReaderError

try:  # libyaml's C event parser, through PyYAML: counts a huge file's nodes in milliseconds
    import yaml as _pyyaml

    _FAST_LOADER: Any = _pyyaml.CSafeLoader
except (ImportError, AttributeError):  # no PyYAML, or one built without libyaml
    _pyyaml = None
    _FAST_LOADER = None

#: Size limits, checked with ``os.stat`` before a byte is read.
SPEC_MAX_BYTES = 4 * 1024 * 1024
JSONL_MAX_BYTES = 32 * 1024 * 1024
#: Values a document may expand to; a YAML alias bomb expands past this within milliseconds.
MAX_NODES = 200_000
#: Nodes (scalars, aliases, collections) a YAML or JSON spec file may spell out, counted while
#: parsing. A spec file holds hundreds; a 1,000-rule routing table about 13,000.
MAX_YAML_NODES = 20_000
#: Digits an integer may have (Python refuses to convert more than 4300 at all).
MAX_INT_DIGITS = 100
#: Nesting depth; deeper documents are refused before Python's recursion limit is near.
MAX_DEPTH = 64

# Explicit tags a collection may carry; anything else (!!python/..., !custom) is refused.
_COLLECTION_TAGS = frozenset(
    {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:omap"}
)


class ParseFailure(Exception):
    """A file that cannot be read or parsed. Positions are 1-based, ``None`` when unknown."""

    def __init__(
        self,
        message: str,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.field = field


# --------------------------------------------------------------------------- raw bytes


def read_bounded(path: Path, limit: int) -> bytes:
    """Read a regular file of at most ``limit`` bytes.

    The size is checked before reading so a huge file costs nothing, and a FIFO or device
    named like a spec file is refused rather than blocking the loader.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ParseFailure("file not found") from None
    except OSError as exc:
        raise ParseFailure(f"cannot read file: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ParseFailure("not a regular file")
    if info.st_size > limit:
        raise ParseFailure(
            f"file is too large: {info.st_size} bytes (limit {limit} bytes, "
            f"{limit // (1024 * 1024)} MiB)"
        )
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ParseFailure(f"cannot read file: {exc.strerror or exc}") from None
    # The file may have grown between stat and read.
    if len(data) > limit:
        raise ParseFailure(f"file is too large (limit {limit} bytes)")
    return data


def decode_utf8(data: bytes) -> str:
    """Decode strictly as UTF-8 (a leading BOM is dropped), naming the line of a bad byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = byte_position(data, exc.start)
        raise ParseFailure(
            f"file is not valid UTF-8: invalid byte 0x{data[exc.start]:02x}", line, column
        ) from None
    return text.removeprefix("\ufeff")


def byte_position(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in bytes) of ``offset``."""
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return line, column


def text_position(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters) of ``offset``."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


# --------------------------------------------------------------------------- YAML


_LONG_INT = re.compile(r"[-+]?(?:0x[0-9a-fA-F_]+|0o[0-7_]+|[0-9][0-9_]*)")
#: An integer json.loads refuses to convert (Python's limit on int digits).
_JSON_LONG_INT = re.compile(rf"(?<![0-9.eE])-?[0-9]{{{sys.get_int_max_str_digits() + 1},}}")


class _Collection:
    __slots__ = ("anchor", "expect_key", "mapping")

    def __init__(self, anchor: str | None, mapping: bool) -> None:
        self.anchor = anchor
        self.mapping = mapping
        self.expect_key = mapping


class _BoundedParser(RoundTripParser):
    """ruamel's round-trip parser, checking every event as the composer pulls it: a node
    budget, the nesting depth, keys that are collections, and aliases to a collection that
    encloses them (which ruamel would load as ``None``)."""

    def reset_parser(self) -> None:
        super().reset_parser()
        self._nodes = 0
        self._open: list[_Collection] = []
        self._collection_anchors: set[str] = set()

    def get_event(self) -> Any:
        event = super().get_event()
        if isinstance(event, ScalarEvent | AliasEvent | MappingStartEvent | SequenceStartEvent):
            self._check_node(event)
        elif isinstance(event, CollectionEndEvent):
            if self._open:
                self._open.pop()
        elif isinstance(event, DocumentStartEvent):
            self._open.clear()
            self._collection_anchors.clear()
        return event

    def _check_node(self, event: Any) -> None:
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise _at(event, f"file has more than {MAX_YAML_NODES} values (limit for a spec file)")
        collection = isinstance(event, MappingStartEvent | SequenceStartEvent)
        parent = self._open[-1] if self._open else None
        if parent is not None and parent.mapping:
            if parent.expect_key and (collection or (
                    isinstance(event, AliasEvent) and event.anchor in self._collection_anchors)):
                raise _at(event, "mapping keys must be plain scalars")
            parent.expect_key = not parent.expect_key
        if isinstance(event, ScalarEvent) and event.style is None and len(event.value) > \
                MAX_INT_DIGITS and _LONG_INT.fullmatch(event.value):
            raise _at(event, f"integer has more than {MAX_INT_DIGITS} digits")
        if isinstance(event, AliasEvent):
            if any(c.anchor == event.anchor for c in self._open):
                raise _at(event, f"recursive alias '*{event.anchor}': a collection contains itself")
            return
        if event.anchor is not None:
            if collection:
                self._collection_anchors.add(event.anchor)
            else:
                self._collection_anchors.discard(event.anchor)
        if collection:
            if len(self._open) >= MAX_DEPTH:
                raise _at(event, f"document is nested too deeply (limit {MAX_DEPTH} levels)")
            self._open.append(_Collection(event.anchor, isinstance(event, MappingStartEvent)))


def _at(event: Any, message: str) -> ParseFailure:
    mark = event.start_mark
    return ParseFailure(message, mark.line + 1, mark.column + 1)


class _Constructor(RoundTripConstructor):
    """Round-trip construction whose duplicate-key error names the key only: ruamel's own
    message renders both values, and rendering an alias bomb never finishes."""

    def check_mapping_key(self, node: Any, key_node: Any, mapping: Any, key: Any,
                          value: Any) -> bool:
        if key in mapping:
            raise DuplicateKeyError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key '{_short(key)}'", key_node.start_mark)
        return True


def _short(key: Any) -> str:
    text = str(key) if isinstance(key, str | int | float | bool) or key is None else "?"
    return text if len(text) <= 80 else text[:77] + "..."


def roundtrip_yaml() -> YAML:
    """A ruamel.yaml instance for round-trip use, with the bounded parser and constructor;
    YAML objects are not thread-safe, so one per call."""
    yaml = YAML(typ="rt")
    yaml.Parser = _BoundedParser
    yaml.Constructor = _Constructor
    yaml.preserve_quotes = True
    yaml.allow_duplicate_keys = False
    return yaml


_DUPLICATE_KEY = re.compile(r"found duplicate key '(.*)'$", re.DOTALL)


def parse_yaml_documents(text: str) -> list[Any]:
    """Parse every document of a YAML stream into round-trip nodes (not yet plain data)."""
    _check_flow_depth(text)
    _check_node_count(text)
    try:
        return list(roundtrip_yaml().load_all(text))
    except DuplicateKeyError as exc:
        match = _DUPLICATE_KEY.search(exc.problem or "")
        key = match.group(1) if match else "?"
        raise _marked_failure(exc, f"duplicate key '{key}'") from None
    except MarkedYAMLError as exc:
        raise _marked_failure(exc, _yaml_message(exc)) from None
    except ReaderError as exc:
        line, column = text_position(text, exc.position)
        char = exc.character
        code = ord(char) if isinstance(char, str) else char
        code = f"U+{code:04X}" if isinstance(code, int) else repr(char)
        raise ParseFailure(
            f"character {code} is not allowed in YAML (control character)", line, column
        ) from None
    except RecursionError:
        raise ParseFailure(f"document is nested too deeply (limit {MAX_DEPTH} levels)") from None
    except YAMLError as exc:
        raise ParseFailure(f"invalid YAML: {_first_line(str(exc))}") from None


def _check_node_count(text: str, limit: int = MAX_YAML_NODES) -> None:
    """Refuse a file of more than ``limit`` nodes before ruamel reads it.

    ruamel's pure-Python round-trip scanner takes about a second to reach the limit; libyaml's
    event parser (C) counts the same events in milliseconds and stops at the first node past
    it. It only counts: a file libyaml cannot parse is left to ruamel, whose own count still
    holds (so a missing libyaml only costs time). Shorter texts cannot hold that many nodes.
    """
    if _FAST_LOADER is None or len(text) <= limit:
        return
    nodes = (_pyyaml.ScalarEvent, _pyyaml.AliasEvent, _pyyaml.MappingStartEvent,
             _pyyaml.SequenceStartEvent)
    count = 0
    try:
        for event in _pyyaml.parse(text, Loader=_FAST_LOADER):
            if isinstance(event, nodes):
                count += 1
                if count > limit:
                    mark = event.start_mark
                    raise ParseFailure(f"file has more than {limit} values (limit for a spec "
                                       "file)", mark.line + 1, mark.column + 1)
    except _pyyaml.YAMLError:
        return


_FLOW_CHARS = re.compile(r"[\[\]{}'\"\n#]")


def _check_flow_depth(text: str, limit: int = MAX_DEPTH) -> None:
    """Refuse deeply nested flow collections (``[[[[...``) before ruamel sees them.

    ruamel's scanner is quadratic in flow depth, so a few thousand brackets cost seconds even
    though the parser gives up later. The scan is approximate (quotes and comments are
    skipped, block nesting is ignored) and only runs when there are enough brackets to
    matter. Missing a case only costs time; ruamel's own recursion limit still holds.
    """
    if text.count("[") + text.count("{") <= limit:
        return
    depth = 0
    quote = ""
    comment = False
    for match in _FLOW_CHARS.finditer(text):
        char = match.group()
        if char == "\n":
            # Reset per line: an apostrophe in a plain scalar must not hide the rest.
            comment = False
            quote = ""
        elif comment:
            continue
        elif quote:
            if char == quote:
                quote = ""
        elif char == "#":
            start = match.start()
            comment = start == 0 or text[start - 1] in " \t\n"
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
            if depth > limit:
                line, column = text_position(text, match.start())
                raise ParseFailure(
                    f"document is nested too deeply (limit {limit} levels)", line, column
                )
        elif depth:
            depth -= 1


def _marked_failure(exc: MarkedYAMLError, message: str) -> ParseFailure:
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        return ParseFailure(message)
    return ParseFailure(message, mark.line + 1, mark.column + 1)


def _yaml_message(exc: MarkedYAMLError) -> str:
    problem = exc.problem or ""
    if "'\\t'" in problem:
        return "tab character used for indentation; indent with spaces"
    parts = [p for p in (exc.context, problem) if p]
    return "invalid YAML: " + (", ".join(parts) if parts else _first_line(str(exc)))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"


def node_line_col(node: Any) -> tuple[int | None, int | None]:
    """1-based start of a round-trip mapping or sequence; ``(None, None)`` for plain data."""
    lc = getattr(node, "lc", None)
    if lc is None or lc.line is None:
        return None, None
    return lc.line + 1, lc.col + 1


def key_line_col(mapping: Any, key: Any) -> tuple[int | None, int | None]:
    """1-based position of ``key`` in a round-trip mapping, falling back to the mapping."""
    if isinstance(mapping, CommentedMap):
        try:
            line, col = mapping.lc.key(key)
            return line + 1, col + 1
        except (KeyError, TypeError, AttributeError):
            pass  # a key that came from a merge (<<) has no position of its own
    return node_line_col(mapping)


def item_line_col(seq: Any, index: int) -> tuple[int | None, int | None]:
    """1-based position of item ``index`` in a round-trip sequence, falling back to the list."""
    if isinstance(seq, CommentedSeq):
        try:
            line, col = seq.lc.item(index)
            return line + 1, col + 1
        except (KeyError, IndexError, TypeError, AttributeError):
            pass
    return node_line_col(seq)


def path_line_col(tree: Any, *path: str | int) -> tuple[int | None, int | None]:
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


# --------------------------------------------------------------------------- plain data


def to_plain(node: Any, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> Any:
    """Copy a round-trip tree (or JSON data) into plain dict/list/str/int/float/bool/None.

    Aliases are shared references in the round-trip tree; copying expands them, so the copy
    is bounded by ``max_nodes`` (an alias bomb fails fast) and a reference to an enclosing
    collection (``&a [*a]``) is reported instead of recursing forever.
    """
    _check_expansion(node, max_nodes, max_depth)
    budget = [max_nodes, max_nodes]  # [remaining, limit]
    return _plain(node, node, 0, set(), budget, max_depth)


def _check_expansion(root: Any, max_nodes: int, max_depth: int) -> None:
    """Refuse an alias bomb before copying a value of it: the expanded size of every
    collection, counted once per collection (aliases share them), so the cost is the written
    size of the tree, not the expanded one. The error points at the innermost collection
    that expands past the limit (the bomb's first level that does). Recursion and depth are
    left to the copy, which reports them."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any, depth: int) -> int:
        if not isinstance(node, dict | list) or depth > max_depth or id(node) in active:
            return 1
        known = sizes.get(id(node))
        if known is not None:
            return known
        active.add(id(node))
        children = node.values() if isinstance(node, dict) else node
        total = 1 + sum(size(child, depth + 1) for child in children)
        active.discard(id(node))
        if total > max_nodes:
            line, col = node_line_col(node)
            raise ParseFailure(
                f"document expands to more than {max_nodes} values (alias bomb?)", line, col
            )
        sizes[id(node)] = total
        return total

    size(root, 0)


def _plain(
    node: Any, parent: Any, depth: int, active: set[int], budget: list[int], max_depth: int
) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        line, col = node_line_col(parent)
        raise ParseFailure(
            f"document expands to more than {budget[1]} values (alias bomb?)", line, col
        )
    if isinstance(node, dict | list | set | tuple | CommentedSet):
        where = node if hasattr(node, "lc") else parent
        if depth >= max_depth:
            line, col = node_line_col(where)
            raise ParseFailure(
                f"document is nested too deeply (limit {max_depth} levels)", line, col
            )
        if id(node) in active:
            line, col = node_line_col(where)
            raise ParseFailure("recursive alias: a collection contains itself", line, col)
        tag = getattr(getattr(node, "tag", None), "value", None)
        if tag and tag not in _COLLECTION_TAGS:
            line, col = node_line_col(where)
            raise ParseFailure(f"unsupported YAML tag '{tag}'", line, col)
        if isinstance(node, CommentedSet | set):
            line, col = node_line_col(where)
            raise ParseFailure("YAML sets are not supported; use a list", line, col)
        active.add(id(node))
        try:
            if isinstance(node, dict):
                out: dict[Any, Any] = {}
                for key, value in node.items():
                    plain_key = _plain_key(key, node)
                    out[plain_key] = _plain(value, where, depth + 1, active, budget, max_depth)
                return out
            return [_plain(item, where, depth + 1, active, budget, max_depth) for item in node]
        finally:
            active.discard(id(node))
    return _plain_scalar(node, parent)


def _plain_key(key: Any, mapping: Any) -> Hashable:
    if isinstance(key, str | int | float | bool) or key is None:
        return _plain_scalar(key, mapping)
    line, col = node_line_col(mapping)
    raise ParseFailure("mapping keys must be plain scalars", line, col)


def _plain_scalar(value: Any, parent: Any) -> Any:
    # Order matters: bool is an int subclass, ruamel's scalar types subclass the builtins.
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        # ruamel's ScalarBoolean is an int subclass that keeps its spelling
        return bool(value) if type(value).__name__ == "ScalarBoolean" else int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, _dt.date):
        # YAML timestamps: keep the text form, the models hold no dates
        return value.isoformat()
    line, col = node_line_col(parent)
    if isinstance(value, TaggedScalar):
        raise ParseFailure(f"unsupported YAML tag '{value.tag.value}'", line, col)
    raise ParseFailure(f"unsupported value of type {type(value).__name__}", line, col)


# --------------------------------------------------------------------------- JSON


class _DuplicateJSONKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateJSONKey(key)
        out[key] = value
    return out


class _RejectedConstant(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _RejectedConstant(f"{name} is not valid JSON")


#: A JSON string, or a token outside strings that matters to the scans below.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]|-?Infinity|NaN')


def _json_tokens(text: str) -> Iterator[re.Match[str]]:
    """Brackets and NaN/Infinity outside strings (strings are matched and skipped)."""
    for match in _JSON_TOKEN.finditer(text):
        if match.group()[0] != '"':
            yield match


def _check_json_depth(text: str, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON nested deeper than ``limit`` at the first bracket past it (json.loads
    would hit Python's recursion limit, or build what :func:`to_plain` refuses unlocated)."""
    if text.count("[") + text.count("{") <= limit:
        return
    depth = 0
    for match in _json_tokens(text):
        char = match.group()
        if char in "[{":
            depth += 1
            if depth > limit:
                line, column = text_position(text, match.start())
                raise ParseFailure(
                    f"document is nested too deeply (limit {limit} levels)", line, column
                )
        elif char in "]}":
            depth = max(depth - 1, 0)


def _constant_position(text: str) -> tuple[int | None, int | None]:
    """Where the first NaN/Infinity outside a string is (json.loads does not say)."""
    for match in _json_tokens(text):
        if match.group()[-1] in "yN":
            return text_position(text, match.start())
    return None, None


def loads_json(text: str) -> Any:
    """Strict ``json.loads``: duplicate keys, NaN/Infinity and nesting deeper than
    :data:`MAX_DEPTH` are errors.

    Raises :class:`ParseFailure` with the line and column of the error; a duplicate key is
    reported without a position (the caller may locate it, see :func:`parse_json_document`).
    """
    _check_json_depth(text)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except _DuplicateJSONKey as exc:
        raise ParseFailure(f"duplicate key '{exc.key}'") from None
    except json.JSONDecodeError as exc:
        raise ParseFailure(f"invalid JSON: {exc.msg}", exc.lineno, exc.colno) from None
    except _RejectedConstant as exc:
        line, column = _constant_position(text)
        raise ParseFailure(f"invalid JSON: {exc}", line, column) from None
    except ValueError as exc:
        long = _JSON_LONG_INT.search(text)
        if long is not None:
            line, column = text_position(text, long.start())
            raise ParseFailure(
                f"integer has more than {sys.get_int_max_str_digits()} digits", line, column
            ) from None
        raise ParseFailure(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise ParseFailure("JSON is nested too deeply") from None


#: A JSON value's first token: a string, a number, a literal or a collection's opening bracket.
_JSON_NODE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{]|-?[0-9][0-9.eE+-]*|true|false|null')


def _check_json_nodes(
    text: str, limit: int = MAX_YAML_NODES, what: str = "file has", why: str = "a spec file"
) -> None:
    """Refuse valid JSON that spells out more than ``limit`` values (keys count, as they do
    for YAML), at the first value past the limit; stops scanning there."""
    for count, match in enumerate(_JSON_NODE.finditer(text), 1):
        if count > limit:
            line, column = text_position(text, match.start())
            raise ParseFailure(f"{what} more than {limit} values (limit for {why})", line, column)


def loads_json_row(text: str) -> Any:
    """One JSONL row as plain data: :func:`loads_json`, refusing a row of more than
    :data:`MAX_NODES` values by a scan before parsing (a huge row costs no parse)."""
    if len(text) > MAX_NODES:
        _check_json_nodes(text, MAX_NODES, "row has", "one row")
    return to_plain(loads_json(text))


_YAML_UNPRINTABLE = re.compile(
    "[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)


def parse_json_document(text: str) -> tuple[Any, Any]:
    """Parse a JSON file: returns ``(plain data, round-trip tree or None)``.

    ``json`` is the authority on syntax; ruamel.yaml re-parses the text (JSON is YAML 1.2)
    only to learn line and column of every key, and to place a duplicate key. The node limit
    is checked between the two, so the slow re-parse never sees a huge document.
    """
    try:
        data = loads_json(text)
    except ParseFailure as failure:
        if failure.line is None and failure.message.startswith("duplicate key"):
            _check_json_nodes(text)
            try:
                parse_yaml_documents(text)
            except ParseFailure as located:
                if located.message.startswith("duplicate key"):
                    raise located from None
        raise
    _check_json_nodes(text)
    tree: Any = None
    try:
        # Characters JSON allows in strings and YAML does not (DEL, C1 controls, U+FFFE)
        # become '?' for the positions pass, which keeps every line and column.
        docs = parse_yaml_documents(_YAML_UNPRINTABLE.sub("?", text))
        tree = docs[0] if len(docs) == 1 else None
    except ParseFailure:
        tree = None  # valid JSON that YAML cannot read (rare): positions are unavailable
    return to_plain(data), tree


def dump_yaml(data: Any) -> str:
    """Serialise a round-trip tree back to text, keeping comments and key order."""
    stream = io.StringIO()
    roundtrip_yaml().dump(data, stream)
    return stream.getvalue()
