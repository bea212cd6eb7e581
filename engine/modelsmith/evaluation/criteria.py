"""Rubric criteria: one small pure function per ``kind``, registered in ``CRITERIA``.

Every criterion is ``(spec, output, ctx) -> (score in [0, 1], short reason)``. The same
functions score eval runs, shape the GRPO reward and grade live traffic, so they are cheap,
do no I/O (except a configured judge) and never raise on a malformed output:
``run_criterion`` turns any exception into a 0 with the reason ``"criterion error: ..."``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from referencing import Registry

from modelsmith.specs.regex import SpecRegex, compile_regex
from modelsmith.specs.rubric import (
    ContainsCriterion,
    ExactCriterion,
    JsonFieldCriterion,
    JsonSchemaCriterion,
    JudgeCriterion,
    LabelCriterion,
    LengthCriterion,
    NotContainsCriterion,
    NumericCriterion,
    RegexCriterion,
    parse_json_path,
)

Judge = Callable[[str, str, str, Any], tuple[float, str]]
"""``(rubric, model, output, expected) -> (score, reason)``: a model grading an output."""

CriterionFn = Callable[[Any, str, "ScoringContext"], tuple[float, str]]

CRITERIA: dict[str, CriterionFn] = {}

#: Regexes (user patterns) only see this much of an output: a guard against slow patterns.
REGEX_MAX_CHARS = 20_000
#: Float slack for numbers that should be equal (JSON fields, numeric targets, thresholds).
FLOAT_EPS = 1e-9
_REASON_MAX_CHARS = 200

# Leading decoration before a label: whitespace, quotes, markdown (**, `, _, #, >, ~),
# opening brackets, and a list bullet ("- ", "* ", "• ") -- but not the sign of "-1".
_LABEL_TOKEN = re.compile(r"(?:[\s\"'“”‘’«»*_`#>~(\[{]|[-+•](?=\s))*(\S+)")
_LABEL_TRAILING = "\"'“”‘’«»*_`~.,:;!?)]}"
_NUMBER = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_NO_REGISTRY: Registry = Registry()  # $refs resolve only inside the schema: no retrieval


@dataclass(frozen=True, slots=True)
class ScoringContext:
    """What a criterion may know besides the output."""

    expected: Any = None
    labels: list[str] | None = None  # the specialist's output labels
    count_tokens: Callable[[str], int] | None = None  # default: whitespace-separated words
    judge: Judge | None = None


def criterion(kind: str) -> Callable[[CriterionFn], CriterionFn]:
    """Register the decorated function as the scorer of criterion ``kind``."""

    def register(fn: CriterionFn) -> CriterionFn:
        CRITERIA[kind] = fn
        return fn

    return register


def run_criterion(spec: Any, output: Any, ctx: ScoringContext) -> tuple[float, str]:
    """Score ``output`` with one criterion; never raises, always returns a score in [0, 1]."""
    fn = CRITERIA.get(getattr(spec, "kind", None))  # type: ignore[arg-type]
    if fn is None:
        return 0.0, safe_text(f"unknown criterion kind {getattr(spec, 'kind', None)!r}")
    try:
        score, reason = fn(spec, as_text(output), ctx)
        return clamp(float(score)), safe_text(str(reason))
    except Exception as exc:  # a broken criterion or judge scores 0, it never stops a run
        return 0.0, safe_text(f"criterion error: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- helpers


def as_text(output: Any) -> str:
    """The output as ``str``: ``None`` is empty, bytes are decoded leniently."""
    if isinstance(output, str):
        return output
    if output is None:
        return ""
    if isinstance(output, bytes | bytearray):
        return bytes(output).decode("utf-8", errors="replace")
    return str(output)


def safe_text(text: str, limit: int = _REASON_MAX_CHARS) -> str:
    """``text`` cut to ``limit`` characters and made UTF-8 encodable (lone surrogates -> ?)."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.encode("utf-8", errors="replace").decode("utf-8")


def _show(text: str, limit: int = 40) -> str:
    return repr(safe_text(text, limit))


def clamp(score: float) -> float:
    """``score`` in [0, 1]; NaN counts as 0."""
    if not score >= 0.0:  # also catches NaN
        return 0.0
    return min(score, 1.0)


def extract_label(output: str) -> str:
    """The first word of ``output``, without decoration: ``' **Accept.**'`` -> ``'Accept'``.

    Only the first word counts: ``"Verdict: ACCEPT"`` yields ``"Verdict"``, so a model is
    rewarded for answering with the bare label as its contract asks.
    """
    match = _LABEL_TOKEN.match(output.lstrip())
    return match.group(1).rstrip(_LABEL_TRAILING) if match else ""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} out of range")
    return value


_JSON = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def parse_json_output(output: str) -> tuple[bool, Any, str]:
    """Parse ``output`` as one JSON document: ``(ok, value, error)``.

    Tolerated: surrounding whitespace and one ```` ```json ```` (or bare ```` ``` ````)
    fence around the whole output. Not tolerated: anything else around the document,
    single quotes, trailing commas, ``NaN``/``Infinity`` and numbers beyond float range.
    """
    text = output.strip()
    if text.startswith("```"):
        newline = text.find("\n")
        if newline < 0 or len(text) < newline + 4 or not text.endswith("```"):
            return False, None, "unterminated ``` fence"
        if text[3:newline].strip().lower() not in ("", "json"):
            return False, None, "fenced block is not JSON"
        text = text[newline + 1 : -3].strip()
    if not text:
        return False, None, "empty output"
    try:
        return True, _JSON.decode(text), ""
    except RecursionError:
        return False, None, "invalid JSON: nested too deeply"
    except ValueError as exc:  # JSONDecodeError, over-long integers, NaN/Infinity
        return False, None, f"invalid JSON: {exc}"


# --- JSON Schema regexes on RE2 -----------------------------------------------------------
# jsonschema runs `pattern`, `patternProperties` (and the additionalProperties and
# unevaluatedProperties that consult it) on Python's backtracking `re`: `(a+)+$` against a
# model output of 30 characters would hold the GIL for seconds. These keyword functions are
# jsonschema's own with each search on RE2 (linear time), and schemas are checked with a
# format checker whose "regex" format is RE2's syntax, as the spec loader checks them.


@lru_cache(maxsize=1024)
def _schema_regex(pattern: str) -> SpecRegex:
    return compile_regex(pattern)


def _re2_search(pattern: str, text: str) -> bool:
    return _schema_regex(pattern).search(text)


def _is_valid(errors: Any) -> bool:
    return next(iter(errors), None) is None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    if validator.is_type(instance, "string") and not _re2_search(pattern, instance):
        yield ValidationError(f"{safe_text(instance, 60)!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Any:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _re2_search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional(instance: Any, schema: Any) -> list[str]:
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return [key for key in instance if key not in properties
            and not any(_re2_search(pattern, key) for pattern in patterns)]


def _additional_properties(validator: Any, ap: Any, instance: Any, schema: Any) -> Any:
    if not validator.is_type(instance, "object"):
        return
    extras = _additional(instance, schema)
    if validator.is_type(ap, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], ap, path=extra)
    elif not ap and extras:
        shown = ", ".join(repr(each) for each in sorted(extras))
        if "patternProperties" in schema:
            patterns = ", ".join(repr(each) for each in sorted(schema["patternProperties"]))
            yield ValidationError(f"{shown} do(es) not match any of the regexes: {patterns}")
        else:
            yield ValidationError(f"Additional properties are not allowed ({shown} unexpected)")


def _evaluated_keys(validator: Any, instance: Any, schema: Any) -> set[str]:
    """jsonschema's find_evaluated_property_keys_by_schema, patternProperties on RE2."""
    if validator.is_type(schema, "boolean"):
        return set()
    keys: set[str] = set()
    for keyword in ("$ref", "$dynamicRef"):
        ref = schema.get(keyword)
        if ref is not None:
            resolved = validator._resolver.lookup(ref)
            keys |= _evaluated_keys(
                validator.evolve(schema=resolved.contents, _resolver=resolved.resolver),
                instance, resolved.contents)
    properties = schema.get("properties")
    if validator.is_type(properties, "object"):
        keys |= properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        if (subschema := schema.get(keyword)) is not None:
            keys |= {key for key, value in instance.items()
                     if _is_valid(validator.descend(value, subschema))}
    for pattern in schema.get("patternProperties", {}):
        keys |= {key for key in instance if _re2_search(pattern, key)}
    for key, subschema in schema.get("dependentSchemas", {}).items():
        if key in instance:
            keys |= _evaluated_keys(validator, instance, subschema)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword, []):
            if _is_valid(validator.descend(instance, subschema)):
                keys |= _evaluated_keys(validator, instance, subschema)
    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            keys |= _evaluated_keys(validator, instance, schema["if"])
            if "then" in schema:
                keys |= _evaluated_keys(validator, instance, schema["then"])
        elif "else" in schema:
            keys |= _evaluated_keys(validator, instance, schema["else"])
    return keys


def _unevaluated_properties(validator: Any, up: Any, instance: Any, schema: Any) -> Any:
    if not validator.is_type(instance, "object"):
        return
    evaluated = _evaluated_keys(validator, instance, schema)
    bad = [key for key in instance if key not in evaluated
           and not _is_valid(validator.descend(instance[key], up, path=key, schema_path=key))]
    if bad:
        shown = ", ".join(repr(each) for each in sorted(bad))
        if up is False:
            yield ValidationError(f"Unevaluated properties are not allowed ({shown} unexpected)")
        else:
            yield ValidationError("Unevaluated properties are not valid under the given "
                                  f"schema ({shown} unevaluated and invalid)")


def _re2_syntax(pattern: object) -> bool:
    if not isinstance(pattern, str):
        return True  # formats apply to strings only
    compile_regex(pattern)  # ValueError: not RE2 syntax
    return True


#: Schemas are checked against the meta-schema with "regex" meaning RE2 syntax.
SCHEMA_FORMATS = FormatChecker()
SCHEMA_FORMATS.checks("regex", raises=ValueError)(_re2_syntax)

#: Draft 2020-12 with every regex on RE2.
RE2Validator: Any = validators.extend(Draft202012Validator, {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "unevaluatedProperties": _unevaluated_properties,
})


def schema_validator(schema: dict[str, Any]) -> Any:
    """A cached Draft 2020-12 validator for ``schema``, its regexes on RE2; ``None`` when
    the schema is invalid (a pattern outside RE2 syntax included)."""
    entry = _VALIDATORS.get(id(schema))
    if entry is not None and entry[0] is schema:
        return entry[1]
    try:
        RE2Validator.check_schema(schema, format_checker=SCHEMA_FORMATS)
        validator: Any = RE2Validator(schema, registry=_NO_REGISTRY)
    except SchemaError:
        validator = None
    if len(_VALIDATORS) >= 1024:
        _VALIDATORS.clear()
    # keeping the schema alive keeps its id from being reused by another dict
    _VALIDATORS[id(schema)] = (schema, validator)
    return validator


_VALIDATORS: dict[int, tuple[dict[str, Any], Any]] = {}


def schema_error(validator: Any, value: Any) -> str | None:
    """The most relevant validation error as ``"$.path: message"``, or ``None`` if valid."""
    error = best_match(validator.iter_errors(value))
    if error is None:
        return None
    return f"{error.json_path}: {safe_text(error.message, 120)}"


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: numbers within ``FLOAT_EPS``, booleans are not numbers, strings exact."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b or abs(a - b) <= FLOAT_EPS
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _expected_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


@lru_cache(maxsize=1024)
def _path_parts(path: str) -> tuple[str | int, ...]:
    return tuple(parse_json_path(path))


def parse_number(text: str) -> float | None:
    """The first number in ``text``: sign, decimals, ``1,234.5``, ``1e-3``; ``45%`` is 45."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    return float(match.group().replace(",", ""))


# --------------------------------------------------------------------------- criteria


@criterion("label")
def score_label(spec: LabelCriterion, output: str, ctx: ScoringContext) -> tuple[float, str]:
    """The first word of the output (see ``extract_label``) equals the expected label."""
    expected = _expected_text(ctx.expected)
    if expected is None:
        return 0.0, "no expected label"
    got = extract_label(output)
    if not got:
        return 0.0, "empty output: no label"
    folded = got.casefold()
    labels = spec.labels or ctx.labels
    if labels and folded not in {label.casefold() for label in labels}:
        return 0.0, f"{_show(got)} is not a label (expected {expected!r})"
    if folded == expected.strip().casefold():
        return 1.0, f"label {expected!r}"
    return 0.0, f"label {_show(got)}, expected {expected!r}"


@criterion("exact")
def score_exact(spec: ExactCriterion, output: str, ctx: ScoringContext) -> tuple[float, str]:
    """The whole output, stripped, equals ``value`` (default: expected)."""
    value = spec.value if spec.value is not None else _expected_text(ctx.expected)
    if value is None:
        return 0.0, "no expected value"
    got, want = output.strip(), value.strip()
    if not spec.case_sensitive:
        got, want = got.casefold(), want.casefold()
    if got == want:
        return 1.0, "exact match"
    return 0.0, f"{_show(output.strip())} != {_show(value.strip())}"


@criterion("contains")
def score_contains(spec: ContainsCriterion, output: str, ctx: ScoringContext) -> tuple[float, str]:
    """Fraction of ``value`` strings found in the output (case-insensitive)."""
    text = output.casefold()
    wanted = spec.values
    missing = [s for s in wanted if s.casefold() not in text]
    if not missing:
        return 1.0, f"contains all {len(wanted)}"
    return 1.0 - len(missing) / len(wanted), f"missing {safe_text(repr(missing), 120)}"


@criterion("not_contains")
def score_not_contains(
    spec: NotContainsCriterion, output: str, ctx: ScoringContext
) -> tuple[float, str]:
    """1 minus the fraction of ``value`` strings found in the output (case-insensitive)."""
    text = output.casefold()
    banned = spec.values
    found = [s for s in banned if s.casefold() in text]
    if not found:
        return 1.0, f"contains none of {len(banned)}"
    return 1.0 - len(found) / len(banned), f"contains {safe_text(repr(found), 120)}"


@criterion("regex")
def score_regex(spec: RegexCriterion, output: str, ctx: ScoringContext) -> tuple[float, str]:
    """An RE2 search (linear time) of the pattern in the first ``REGEX_MAX_CHARS`` characters."""
    if spec.compiled.search(output[:REGEX_MAX_CHARS]):
        return 1.0, f"matches /{safe_text(spec.pattern, 60)}/"
    return 0.0, f"no match for /{safe_text(spec.pattern, 60)}/"


@criterion("json_schema")
def score_json_schema(
    spec: JsonSchemaCriterion, output: str, ctx: ScoringContext
) -> tuple[float, str]:
    """The output parses as JSON (see ``parse_json_output``) and conforms to the schema."""
    validator = schema_validator(spec.schema_)
    if validator is None:
        return 0.0, "invalid schema"
    ok, value, error = parse_json_output(output)
    if not ok:
        return 0.0, error
    problem = schema_error(validator, value)
    return (0.0, problem) if problem else (1.0, "valid JSON per schema")


@criterion("json_field")
def score_json_field(
    spec: JsonFieldCriterion, output: str, ctx: ScoringContext
) -> tuple[float, str]:
    """The JSON output holds ``value`` at ``path``; without ``value``, the same node as the
    expected value at that path (an expected value without it scores 0)."""
    parts = _path_parts(spec.path)
    if "value" in spec.model_fields_set:
        want = spec.value
    else:
        found, want = _json_node(ctx.expected, parts)
        if not found:
            return 0.0, f"the expected value has no {safe_text(spec.path, 60)!r}"
    ok, doc, error = parse_json_output(output)
    if not ok:
        return 0.0, error
    found, node = _json_node(doc, parts)
    if not found:
        return 0.0, f"{spec.path}: missing"
    if json_equal(node, want):
        return 1.0, f"{spec.path} == {safe_text(repr(want), 60)}"
    return 0.0, f"{spec.path} is {safe_text(repr(node), 60)}, expected {safe_text(repr(want), 60)}"


def _json_node(doc: Any, parts: tuple[str | int, ...]) -> tuple[bool, Any]:
    """``(True, node)`` at ``parts`` of ``doc``, ``(False, None)`` when it has no such node."""
    node = doc
    for part in parts:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return False, None
        elif not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


@criterion("numeric")
def score_numeric(spec: NumericCriterion, output: str, ctx: ScoringContext) -> tuple[float, str]:
    """The first number in the output is within ``tolerance`` of ``value`` (default: expected).

    A percent sign is tolerated and ignored: ``"45%"`` reads as 45.
    """
    if spec.value is not None:
        target = spec.value
    else:
        try:
            target = float(ctx.expected)
        except (TypeError, ValueError):
            return 0.0, f"no numeric target (expected {safe_text(repr(ctx.expected), 60)})"
    got = parse_number(output)
    if got is None:
        return 0.0, "no number in output"
    if abs(got - target) <= spec.tolerance + FLOAT_EPS:
        return 1.0, f"{got:g} within {spec.tolerance:g} of {target:g}"
    return 0.0, f"{got:g} not within {spec.tolerance:g} of {target:g}"


@criterion("length")
def score_length(spec: LengthCriterion, output: str, ctx: ScoringContext) -> tuple[float, str]:
    """The output stays within ``max_tokens`` (``ctx.count_tokens``) and ``max_chars``."""
    parts: list[str] = []
    ok = True
    if spec.max_tokens is not None:
        tokens = ctx.count_tokens(output) if ctx.count_tokens else len(output.split())
        ok = tokens <= spec.max_tokens
        parts.append(f"{tokens} tokens {'<=' if ok else '>'} {spec.max_tokens}")
    if spec.max_chars is not None:
        chars_ok = len(output) <= spec.max_chars
        ok = ok and chars_ok
        parts.append(f"{len(output)} chars {'<=' if chars_ok else '>'} {spec.max_chars}")
    return (1.0 if ok else 0.0), ", ".join(parts)


@criterion("judge")
def score_judge(spec: JudgeCriterion, output: str, ctx: ScoringContext) -> tuple[float, str]:
    """The configured judge model grades the output against the rubric text."""
    if ctx.judge is None:
        return 0.0, "no judge configured"
    score, reason = ctx.judge(spec.rubric, spec.model, output, ctx.expected)
    score = float(score)
    if math.isnan(score):
        return 0.0, f"judge returned NaN: {reason}"
    return clamp(score), f"judge {spec.model}: {reason}"
