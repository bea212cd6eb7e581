"""Regular expressions written in spec files, run on RE2 (linear time, no backtracking).

Routing regexes run on every request the server sees and rubric regexes on every model
output an eval or a training reward scores. Python's ``re`` backtracks: ``(a+)+$`` against
29 characters takes seconds and holds the GIL, so one request could stall the server. RE2
(Google's engine, the ``google-re2`` package) matches in time linear in the text for every
pattern, at the price of a smaller syntax: no lookarounds, no backreferences, no atomic
groups or possessive quantifiers, counted repetition up to 1000. A pattern outside that
syntax is a validation error that says why.

RE2's ``\\w``, ``\\d``, ``\\s`` and ``\\b`` are ASCII; ``\\p{L}`` (letters) and ``\\p{N}``
(digits) cover other scripts. ``(?i)``, ``(?s)``, ``(?m)`` and named groups work as in Python.
"""

from __future__ import annotations

import re2

#: Memory RE2 may use per pattern (program and matching cache). A pattern whose program
#: does not fit is refused as too large; matching stays linear whatever the budget.
MAX_MEM = 2 << 20
#: Longest pattern accepted (characters).
MAX_PATTERN_CHARS = 4096

_SYNTAX = "RE2 syntax is required, since patterns must match in linear time"

#: RE2 error fragment -> why Python's spelling is not available.
_HINTS: tuple[tuple[str, str], ...] = (
    ("(?<=", "lookbehind assertions are not supported"),
    ("(?<!", "lookbehind assertions are not supported"),
    ("(?=", "lookahead assertions are not supported"),
    ("(?!", "lookahead assertions are not supported"),
    ("(?P=", "backreferences are not supported"),
    ("(?>", "atomic groups are not supported"),
    ("(?(", "conditional groups are not supported"),
    ("(?#", "comments in patterns are not supported"),
    ("(?x", "verbose mode (?x) is not supported"),
    ("++", "possessive quantifiers are not supported"),
    ("*+", "possessive quantifiers are not supported"),
    ("?+", "possessive quantifiers are not supported"),
    ("\\Z", "write \\z for the end of the text"),
    ("repetition size", "counted repetition is limited to 1000"),
    ("too large", "the pattern is too large"),
)


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern on stderr
    options.max_mem = MAX_MEM
    return options


def _why(error: str) -> str:
    if ("invalid escape sequence: \\" in error and error[-1:].isdigit()) or error.endswith(
            "(?P"):
        return "backreferences are not supported"
    for fragment, hint in _HINTS:
        if fragment in error:
            return hint
    return ""


def _message(exc: Exception) -> str:
    raw = exc.args[0] if exc.args else ""
    error = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    hint = _why(error)
    if not hint:
        return f"invalid regular expression: {error} (RE2 syntax)"
    return f"invalid regular expression: {error} ({_SYNTAX}: {hint})"


class SpecRegex:
    """A compiled spec regex: ``search(text)`` says whether it occurs anywhere in ``text``."""

    __slots__ = ("_regex", "pattern")

    def __init__(self, pattern: str) -> None:
        if len(pattern) > MAX_PATTERN_CHARS:
            raise ValueError(
                f"invalid regular expression: longer than {MAX_PATTERN_CHARS} characters"
            )
        try:
            encoded = pattern.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("invalid regular expression: not valid Unicode text") from None
        try:
            self._regex = re2.compile(encoded, _options())
        except re2.error as exc:
            raise ValueError(_message(exc)) from None
        self.pattern = pattern

    def search(self, text: str) -> bool:
        """Whether the pattern matches somewhere in ``text`` (time linear in its length)."""
        # Bytes in, so a lone surrogate in a request (valid JSON) cannot raise.
        return self._regex.search(text.encode("utf-8", "surrogatepass")) is not None

    def __reduce__(self) -> tuple[type[SpecRegex], tuple[str]]:
        return SpecRegex, (self.pattern,)

    def __repr__(self) -> str:
        return f"SpecRegex({self.pattern!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SpecRegex) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)


def compile_regex(pattern: str) -> SpecRegex:
    """Compile a spec regex on RE2; a pattern RE2 refuses raises a short ``ValueError``
    that names what is not supported (lookarounds, backreferences, ...)."""
    return SpecRegex(pattern)
