"""Rubric criteria and micro-benchmarks: discriminated unions on ``kind``.

These models only describe a rubric; the scorer that runs them (and doubles as the training
reward) lives in ``modelsmith.evaluation``.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import Fraction, NonEmptyStr, PositiveInt, SpecModel, spec_error, unique_violations
from .regex import SpecRegex, compile_regex

#: A key of a JSON path: a letter or ``_`` (any script), then letters, digits, ``_`` or ``-``.
_JSON_KEY = re.compile(r"[^\W\d][\w-]*")
_JSON_INDEX = re.compile(r"\[([0-9]{1,18})\]")
_JSON_PATH_HINT = "expected keys and list indexes like 'a.b[0].c' or '$.a.b[0].c'"


def parse_json_path(path: str) -> list[str | int]:
    """Split a JSON path into keys and list indexes: ``a.b[0].c`` -> ``["a", "b", 0, "c"]``.

    A path is dotted keys and ``[n]`` indexes; it may start with the root ``$`` (``$.a``,
    ``$[0]``), which changes nothing, and ``$`` alone is the whole document (``[]``). A key
    starts with a letter or ``_`` and goes on with letters, digits, ``_`` or ``-``; keys
    with other characters (spaces, dots, ``$``) cannot be named. Raises ``ValueError``
    with the reason when the path is malformed (``a..b``, ``.a``, ``a.``, ``a[x]``, ``$$``).
    """
    parts: list[str | int] = []
    pos = 1 if path.startswith("$") else 0
    if not path:
        raise _bad_path(path, "it is empty")
    while pos < len(path):
        char = path[pos]
        if char == "[":
            index = _JSON_INDEX.match(path, pos)
            if index is None:
                raise _bad_path(path, f"'[' at {pos + 1} must open a list index such as [0]")
            parts.append(int(index.group(1)))
            pos = index.end()
            continue
        if pos > 0:  # after the root or a key or index, only '.key' or '[n]' may follow
            if char != ".":
                raise _bad_path(path, _unexpected(path, pos))
            pos += 1
        key = _JSON_KEY.match(path, pos)
        if key is None:
            raise _bad_path(path, _bad_key(path, pos))
        parts.append(key.group())
        pos = key.end()
    return parts


def _bad_path(path: str, why: str) -> ValueError:
    shown = path if len(path) <= 80 else path[:77] + "..."
    return ValueError(f"invalid JSON path {shown!r}: {why}; {_JSON_PATH_HINT}")


def _unexpected(path: str, pos: int) -> str:
    if path[pos] == "$":
        return f"'$' at {pos + 1}: '$' may only start the path"
    if pos == 1 and path[0] == "$":
        return f"unexpected {path[1]!r} at 2 ('$' is followed by '.key' or '[n]')"
    return f"unexpected {path[pos]!r} at {pos + 1}"


def _bad_key(path: str, pos: int) -> str:
    """Why no key starts at ``pos`` (which follows a '.' or starts the path)."""
    if pos == len(path):
        return "it ends with '.'"
    char = path[pos]
    if char == ".":
        return "it starts with '.'" if pos == 0 else f"empty key at {pos + 1} ('..')"
    if char == "$":
        return f"'$' at {pos + 1}: '$' may only start the path"
    if char.isdigit():
        return f"key at {pos + 1} starts with a digit (a list index is written [n])"
    return (f"unexpected {char!r} at {pos + 1} (a key starts with a letter or '_' and goes on "
            "with letters, digits, '_' or '-')")


class _Criterion(SpecModel):
    weight: float = Field(1.0, gt=0, description="Relative weight in the scenario's score.")
    required: bool = Field(False, description="A failed required criterion fails the scenario.")


class LabelCriterion(_Criterion):
    """The output's label equals the scenario's expected label."""

    kind: Literal["label"]
    labels: list[NonEmptyStr] | None = Field(
        None, description="Allowed labels; defaults to the specialist's output labels."
    )

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, labels: list[str] | None) -> list[str] | None:
        if labels is not None:
            if not labels:
                raise ValueError("must list at least one label")
            if dupes := unique_violations(labels):
                raise ValueError(f"duplicate label '{labels[dupes[0]]}'")
        return labels


class ExactCriterion(_Criterion):
    """The output equals ``value`` (default: the scenario's expected value)."""

    kind: Literal["exact"]
    value: str | None = None
    case_sensitive: bool = False


class _SubstringCriterion(_Criterion):
    value: NonEmptyStr | list[NonEmptyStr]

    @field_validator("value")
    @classmethod
    def _not_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("must list at least one string")
        return value

    @property
    def values(self) -> list[str]:
        return [self.value] if isinstance(self.value, str) else list(self.value)


class ContainsCriterion(_SubstringCriterion):
    """The output contains every one of ``value``."""

    kind: Literal["contains"]


class NotContainsCriterion(_SubstringCriterion):
    """The output contains none of ``value``."""

    kind: Literal["not_contains"]


class RegexCriterion(_Criterion):
    """The output matches ``pattern`` somewhere (RE2 syntax, linear time: see
    :mod:`modelsmith.specs.regex`)."""

    kind: Literal["regex"]
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        compile_regex(pattern)
        return pattern

    @cached_property
    def compiled(self) -> SpecRegex:
        return compile_regex(self.pattern)


class JsonSchemaCriterion(_Criterion):
    """The output parses as JSON and conforms to ``schema``. Its ``pattern`` and
    ``patternProperties`` regexes run on RE2 like every spec regex, so they must be RE2
    syntax (checked here, where the file and line are known)."""

    kind: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")

    @field_validator("schema_")
    @classmethod
    def _patterns_compile(cls, schema: dict[str, Any]) -> dict[str, Any]:
        for at, pattern in schema_patterns(schema):
            if not isinstance(pattern, str):
                raise spec_error("must be a string (a regular expression)", *at)
            try:
                compile_regex(pattern)
            except ValueError as exc:
                raise spec_error(str(exc), *at) from None
        return schema


#: JSON Schema keywords whose value is one subschema, a list of them, or a mapping of them.
_ONE_SCHEMA = ("additionalProperties", "unevaluatedProperties", "items", "additionalItems",
               "unevaluatedItems", "contains", "not", "if", "then", "else", "propertyNames",
               "contentSchema")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def schema_patterns(schema: Any, at: tuple[str | int, ...] = ()
                    ) -> list[tuple[tuple[str | int, ...], Any]]:
    """Every regex of a JSON Schema with where it is: ``pattern`` values and the keys of
    ``patternProperties``, in subschemas too (a property *named* "pattern" is not one)."""
    found: list[tuple[tuple[str | int, ...], Any]] = []
    if not isinstance(schema, dict):
        return found
    if "pattern" in schema:
        found.append(((*at, "pattern"), schema["pattern"]))
    patterns = schema.get("patternProperties")
    if isinstance(patterns, dict):
        found.extend(((*at, "patternProperties", key), key) for key in patterns)
    for keyword in _ONE_SCHEMA:
        if isinstance(schema.get(keyword), dict):
            found.extend(schema_patterns(schema[keyword], (*at, keyword)))
    for keyword in _SCHEMA_LISTS:
        if isinstance(schema.get(keyword), list):
            for index, item in enumerate(schema[keyword]):
                found.extend(schema_patterns(item, (*at, keyword, index)))
    for keyword in _SCHEMA_MAPS:
        if isinstance(schema.get(keyword), dict):
            for key, item in schema[keyword].items():
                found.extend(schema_patterns(item, (*at, keyword, key)))
    return found


class JsonFieldCriterion(_Criterion):
    """The JSON output has ``value`` at ``path`` (syntax: :func:`parse_json_path`).

    Without ``value``, the output's node at ``path`` must equal the node at the same path of
    the scenario's expected value (a criterion whose expected value has no such path scores
    0). An explicit ``value`` (``null`` included) is compared instead; it is told apart
    through ``"value" in criterion.model_fields_set``.
    """

    kind: Literal["json_field"]
    path: str = Field(
        description="Dotted keys and list indexes ('a.b[0].c'); a leading '$' root is optional."
    )
    value: Any = Field(None, description="Wanted value; default: expected's node at 'path'.")

    @field_validator("path")
    @classmethod
    def _path_parses(cls, path: str) -> str:
        parse_json_path(path)
        return path

    @property
    def path_parts(self) -> list[str | int]:
        return parse_json_path(self.path)


class NumericCriterion(_Criterion):
    """The output parses as a number within ``tolerance`` of ``value`` (default: expected)."""

    kind: Literal["numeric"]
    tolerance: float = Field(0.0, ge=0)
    value: float | None = None


class LengthCriterion(_Criterion):
    """The output is at most ``max_tokens`` tokens and/or ``max_chars`` characters."""

    kind: Literal["length"]
    max_tokens: PositiveInt | None = None
    max_chars: PositiveInt | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> LengthCriterion:
        if self.max_tokens is None and self.max_chars is None:
            raise spec_error("set max_tokens or max_chars (or both)")
        return self


class JudgeCriterion(_Criterion):
    """An OpenAI-compatible model grades the output against ``rubric``."""

    kind: Literal["judge"]
    model: NonEmptyStr
    rubric: NonEmptyStr


Criterion = Annotated[
    LabelCriterion
    | ExactCriterion
    | ContainsCriterion
    | NotContainsCriterion
    | RegexCriterion
    | JsonSchemaCriterion
    | JsonFieldCriterion
    | NumericCriterion
    | LengthCriterion
    | JudgeCriterion,
    Field(discriminator="kind"),
]

CRITERION_KINDS: tuple[str, ...] = (
    "label",
    "exact",
    "contains",
    "not_contains",
    "regex",
    "json_schema",
    "json_field",
    "numeric",
    "length",
    "judge",
)


class _Benchmark(SpecModel):
    weight: float = Field(1.0, gt=0, description="Relative weight within the micro score.")


class LatencyBenchmark(_Benchmark):
    """The given percentile of response latency stays within ``budget_ms``."""

    kind: Literal["latency"]
    percentile: float = Field(95, gt=0, le=100)
    budget_ms: float = Field(gt=0)


class FormatRateBenchmark(_Benchmark):
    """At least ``min_rate`` of outputs satisfy the output contract (label set, JSON, ...)."""

    kind: Literal["format_rate"]
    min_rate: Fraction


MicroBenchmark = Annotated[LatencyBenchmark | FormatRateBenchmark, Field(discriminator="kind")]
