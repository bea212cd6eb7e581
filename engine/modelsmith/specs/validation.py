"""Turn pydantic validation errors into :class:`SpecIssue` s with positions and short messages.

Pydantic reports an error at a ``loc`` (a tuple of keys and indexes, with union member tags
mixed in). We walk the plain data along that loc to find which elements are real keys, and
the ruamel round-trip tree in parallel to find their line and column.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .base import PATTERN_HINTS
from .errors import SpecIssue
from .yamlio import item_line_col, key_line_col, node_line_col

M = TypeVar("M", bound=BaseModel)

# Error types that only say "not this type"; in a union they are noise next to a real reason.
_TYPE_ONLY = {
    "string_type",
    "list_type",
    "dict_type",
    "model_type",
    "model_attributes_type",
    "int_type",
    "float_type",
    "bool_type",
    "none_required",
}


def validate_model(
    model: type[M],
    data: Any,
    *,
    file: str,
    tree: Any = None,
    line: int | None = None,
) -> tuple[M | None, list[SpecIssue]]:
    """Validate ``data``; on failure return positioned issues instead of raising.

    ``tree`` is the round-trip node ``data`` was copied from (positions come from it); without
    one every issue gets ``line`` (a JSONL row's line) and no column.
    """
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, issues_from_error(exc, data, file=file, tree=tree, line=line)
    except RecursionError:
        return None, [SpecIssue(file, line, None, None, "document is nested too deeply")]


def issues_from_error(
    exc: ValidationError,
    data: Any,
    *,
    file: str,
    tree: Any = None,
    line: int | None = None,
) -> list[SpecIssue]:
    located = [
        (error, *_locate(error, data, tree, line)) for error in exc.errors(include_url=False)
    ]
    located = _pair_typos(located)
    grouped: dict[tuple[str | None, int | None, int | None], list[tuple[str, str]]] = {}
    for error, field, pos_line, pos_col, message in located:
        grouped.setdefault((field, pos_line, pos_col), []).append((error["type"], message))
    issues = []
    for (field, pos_line, pos_col), found in grouped.items():
        issues.append(SpecIssue(file, pos_line, pos_col, field, _merge_messages(found)))
    return issues


def _pair_typos(located: list[Any]) -> list[Any]:
    """A misspelt field is both unknown and missing; say it once, with a suggestion."""
    missing: dict[str, list[str]] = {}
    for error, field, *_ in located:
        if error["type"] == "missing" and field:
            parent, _, name = field.rpartition(".")
            missing.setdefault(parent, []).append(name)
    used: set[str] = set()
    out = []
    for error, field, pos_line, pos_col, message in located:
        if error["type"] == "extra_forbidden" and field:
            parent, _, name = field.rpartition(".")
            close = difflib.get_close_matches(name, missing.get(parent, []), n=1, cutoff=0.6)
            if close:
                message = f"{message} (did you mean '{close[0]}'?)"
                used.add(f"{parent}.{close[0]}" if parent else close[0])
        out.append((error, field, pos_line, pos_col, message))
    return [item for item in out if not (item[0]["type"] == "missing" and item[1] in used)]


def _merge_messages(found: list[tuple[str, str]]) -> str:
    # A value failing "str | list[str]" yields one error per union member.
    if len(found) > 1:
        specific = [item for item in found if item[0] not in _TYPE_ONLY]
        if specific:
            found = specific
    messages: list[str] = []
    for _, message in found:
        if message not in messages:
            messages.append(message)
    if len(messages) > 1 and all(m.startswith("must be ") for m in messages):
        return "must be " + " or ".join(m.removeprefix("must be ") for m in messages)
    return "; ".join(messages)


def _locate(
    error: Any, data: Any, tree: Any, fallback_line: int | None
) -> tuple[str | None, int | None, int | None, str]:
    loc: Sequence[Any] = error["loc"]
    extra: Sequence[Any] = ()
    if error["type"] == "spec":
        extra = tuple(error.get("ctx", {}).get("at", ()))
    steps = [(part, False) for part in loc] + [(part, True) for part in extra]

    parts: list[str | int] = []
    cur, node = data, tree
    if tree is not None:
        pos_line, pos_col = node_line_col(tree)
    else:
        pos_line, pos_col = fallback_line, None
    for index, (part, explicit) in enumerate(steps):
        last = index == len(steps) - 1
        if part == "[key]":
            continue  # the error is about the key itself, whose position we already hold
        if isinstance(cur, dict) and _has_key(cur, part):
            parts.append(part)
            if node is not None:
                pos_line, pos_col = key_line_col(node, part)
                node = _child(node, part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            parts.append(part)
            if node is not None:
                pos_line, pos_col = item_line_col(node, part)
                node = _child(node, part)
            cur = cur[part]
        elif isinstance(cur, dict) and last and (explicit or error["type"] != "spec"):
            # a missing (or misspelt) field: name it, positioned at its parent
            parts.append(part)
            cur = None
        else:
            continue  # a union member tag such as 'regex' or 'list[str]'

    message = _message(error, parts)
    if error["type"] == "union_tag_invalid" and isinstance(cur, dict):
        key = str(error.get("ctx", {}).get("discriminator", "kind")).strip("'")
        if key in cur:
            parts.append(key)
            if node is not None:
                pos_line, pos_col = key_line_col(node, key)
    return format_field_path(parts), pos_line, pos_col, message


def _has_key(mapping: dict[Any, Any], key: Any) -> bool:
    try:
        return key in mapping
    except TypeError:
        return False


def _child(node: Any, part: Any) -> Any:
    try:
        return node[part]
    except (KeyError, IndexError, TypeError):
        return None


def format_field_path(parts: Sequence[str | int]) -> str | None:
    """``("spec", "rules", 0, "route")`` -> ``"spec.rules[0].route"``."""
    text = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or None


def short_value(value: Any, limit: int = 60) -> str:
    """A value for a message, cut short: hostile input can be megabytes long."""
    text = value if isinstance(value, str) else repr(value)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    if not text.isprintable():  # control characters would reach the terminal raw
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text


# Comparison errors -> the operator a message shows ("must be <= 1").
_BOUNDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}

# Errors whose message needs nothing from the error itself.
_FIXED = {
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
}


def _message(error: Any, parts: list[str | int]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "spec":
        return str(ctx.get("message", error["msg"]))
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        return f"unknown field '{parts[-1]}'" if parts else "unknown field"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern"))
        noun, hint = PATTERN_HINTS.get(pattern, ("value", f"must match {pattern}"))
        return f"invalid {noun} '{short_value(error.get('input'))}': {hint}"
    if kind == "union_tag_invalid":
        tags = str(ctx.get("expected_tags", "")).replace("'", "")
        return f"unknown kind '{short_value(ctx.get('tag'))}' (expected one of: {tags})"
    if kind == "union_tag_not_found":
        key = str(ctx.get("discriminator", "kind")).strip("'")
        return f"field '{key}' required"
    if kind in _BOUNDS:
        return _bound_message(kind, ctx)
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind == "too_short":
        count = ctx.get("min_length", 1)
        return f"must have at least {count} item{'s' if count != 1 else ''}"
    if kind in _FIXED:
        return _FIXED[kind]
    return _reworded(str(error["msg"]))


def _bound_message(kind: str, ctx: dict[str, Any]) -> str:
    limit = next(iter(ctx.values()), "?")
    if isinstance(limit, float) and limit.is_integer():
        limit = int(limit)  # "must be <= 1", not "<= 1.0"
    return f"must be {_BOUNDS[kind]} {limit}"


def _reworded(message: str) -> str:
    """Pydantic's own message, in the voice of ours."""
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if message.startswith("Input should be "):
        message = "must be " + message.removeprefix("Input should be ")
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]  # "Field ..." -> "field ...", keep "JSON"
    return message
