"""The deterministic router: ``policies/routing.yaml`` compiled once into a matcher.

Rules are ordered; the first whose conditions all hold wins (metadata equality, whole-word
case-insensitive keyword sets, a regex searched in the text, length bounds in characters,
the caller's task label); otherwise the default specialist, or a rejection when there is
none. No learned component: the same request always goes to the same place.

Compiling indexes the rules by what a request must carry for them to match -- a task
label, a metadata pair, or one of their keywords -- so a request only checks the rules it
could match, in their order; rules with no such key (a regex or a length bound alone) are
checked for every request. ``explain`` says for each earlier rule which condition failed.
``shadowed`` finds rules no request can reach: an earlier rule matches everything they do.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelsmith.errors import ModelsmithError
from modelsmith.specs.routing import shadowed  # noqa: F401  (the router's own check)

#: Punctuation splits words, as ``\w+`` would (``_`` stays a word character).
_SEPARATORS = str.maketrans({c: " " for c in string.punctuation if c != "_"})


class NoRoute(ModelsmithError, LookupError):
    """No rule matched and the table has no default."""


@dataclass(frozen=True)
class Request:
    text: str
    meta: Mapping[str, str] = field(default_factory=dict)
    task: str | None = None


@dataclass(frozen=True)
class Decision:
    specialist: str
    rule: str | None  # None: the default


@dataclass
class _Rule:
    index: int
    name: str
    route: str
    meta: tuple[tuple[str, str], ...]
    task: str | None
    any_words: frozenset[str]
    all_words: frozenset[str]
    regex: re.Pattern[str] | None
    min_len: int | None
    max_len: int | None

    def failure(self, text: str, words: frozenset[str], meta: Mapping[str, str],
                task: str | None) -> str | None:
        """The first condition that does not hold, or None when the rule matches."""
        if self.task is not None and task != self.task:
            return f"task is {task!r}, not {self.task!r}"
        for key, value in self.meta:
            if meta.get(key) != value:
                return f"meta {key}={meta.get(key)!r}, not {value!r}"
        n = len(text)
        if self.min_len is not None and n < self.min_len:
            return f"length {n} < {self.min_len}"
        if self.max_len is not None and n > self.max_len:
            return f"length {n} > {self.max_len}"
        if self.all_words and not self.all_words <= words:
            return f"missing keywords {sorted(self.all_words - words)}"
        if self.any_words and self.any_words.isdisjoint(words):
            return f"none of the keywords {sorted(self.any_words)}"
        if self.regex is not None and self.regex.search(text) is None:
            return f"regex {self.regex.pattern!r} does not match"
        return None


def required_literal(pattern: re.Pattern[str]) -> str | None:
    """The longest text every match of ``pattern`` contains, read from its top-level
    sequence (None when there is none worth testing, or matching ignores case)."""
    if pattern.flags & re.IGNORECASE:
        return None
    try:
        from re import _constants as codes
        from re import _parser as parser
    except ImportError:  # pragma: no cover - older Pythons
        return None
    try:
        parsed = parser.parse(pattern.pattern, pattern.flags)
    except Exception:  # any parse trouble: no prefilter
        return None
    best, run = "", []
    for op, arg in parsed:
        if op is codes.LITERAL:
            run.append(chr(arg))
            continue
        best = max(best, "".join(run), key=len)
        run = []
    best = max(best, "".join(run), key=len)
    return best if len(best) >= 2 else None


def _matcher(rule: _Rule) -> Any:
    """A predicate with only the rule's own conditions, cheapest first."""
    checks: list[Any] = []
    if rule.task is not None:
        checks.append(lambda t, w, m, k, want=rule.task: k == want)
    for key, value in rule.meta:
        checks.append(lambda t, w, m, k, key=key, value=value: m.get(key) == value)
    if rule.min_len is not None:
        checks.append(lambda t, w, m, k, lo=rule.min_len: len(t) >= lo)
    if rule.max_len is not None:
        checks.append(lambda t, w, m, k, hi=rule.max_len: len(t) <= hi)
    if rule.all_words:
        checks.append(lambda t, w, m, k, need=rule.all_words: need <= w)
    if rule.any_words:
        checks.append(lambda t, w, m, k, some=rule.any_words: not some.isdisjoint(w))
    if rule.regex is not None:
        literal = required_literal(rule.regex)
        if literal:  # a substring test in C rules most texts out before the regex runs
            checks.append(lambda t, w, m, k, lit=literal, search=rule.regex.search:
                          lit in t and search(t) is not None)
        else:
            checks.append(lambda t, w, m, k, search=rule.regex.search: search(t) is not None)
    if len(checks) == 1:
        return checks[0]
    return lambda t, w, m, k: all(check(t, w, m, k) for check in checks)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.lower().translate(_SEPARATORS).split())


class Router:
    """A compiled routing table (see the module docstring)."""

    def __init__(self, rules: Sequence[Any], default: str | None) -> None:
        self.default = default
        self.rules: list[_Rule] = []
        for index, rule in enumerate(rules):
            when = rule.when
            keywords = when.keywords
            length = when.length
            self.rules.append(_Rule(
                index, rule.name, rule.route,
                tuple(sorted((when.meta or {}).items())), when.task,
                frozenset(w.lower() for w in keywords.any) if keywords else frozenset(),
                frozenset(w.lower() for w in keywords.all) if keywords else frozenset(),
                re.compile(when.regex) if when.regex is not None else None,
                length.min if length else None, length.max if length else None))
        # The index: what a request must carry for a rule to be worth checking.
        self._always: list[int] = []
        self._by_task: dict[str, list[int]] = {}
        self._by_meta: dict[tuple[str, str], list[int]] = {}
        self._by_word: dict[str, list[int]] = {}
        for r in self.rules:
            if r.task is not None:
                self._by_task.setdefault(r.task, []).append(r.index)
            elif r.meta:
                self._by_meta.setdefault(r.meta[0], []).append(r.index)
            elif r.all_words:
                self._by_word.setdefault(min(r.all_words), []).append(r.index)
            elif r.any_words:
                for word in r.any_words:
                    self._by_word.setdefault(word, []).append(r.index)
            else:
                self._always.append(r.index)
        self._needs_words = bool(self._by_word) or any(
            r.all_words or r.any_words for r in self.rules)
        self._word_keys = frozenset(self._by_word)
        self._matchers = [_matcher(r) for r in self.rules]
        # A rule whose only condition is "any of these words" matched when it was found.
        self._found_is_match = {
            r.index for r in self.rules
            if r.any_words and not (r.all_words or r.meta or r.task or r.regex
                                    or r.min_len is not None or r.max_len is not None)}

    @classmethod
    def from_table(cls, table: Any) -> Router:
        """From a loaded ``RoutingTable`` document (None: no rules, no default)."""
        if table is None:
            return cls([], None)
        return cls(table.spec.rules, table.spec.default)

    def _candidates(self, words: frozenset[str], meta: Mapping[str, str],
                    task: str | None) -> list[int]:
        found = list(self._always)
        if task is not None:
            found += self._by_task.get(task, ())
        if meta and self._by_meta:
            for pair in meta.items():
                found += self._by_meta.get(pair, ())
        hits = words & self._word_keys
        if hits:
            by_word = self._by_word
            for word in hits:
                found += by_word[word]
        return sorted(set(found)) if len(found) > 1 else found

    def route(self, request: Request) -> Decision:
        text, meta, task = request.text, request.meta, request.task
        words = _words(text) if self._needs_words else frozenset()
        found_is_match, matchers = self._found_is_match, self._matchers
        for index in self._candidates(words, meta, task):
            if index in found_is_match or matchers[index](text, words, meta, task):
                rule = self.rules[index]
                return Decision(rule.route, rule.name)
        if self.default is None:
            raise NoRoute("no routing rule matched and the table has no default")
        return Decision(self.default, None)

    def explain(self, request: Request) -> list[tuple[str, str, str | None]]:
        """``(rule, route, why it failed)`` for every rule up to the one that matched
        (whose reason is None), then ``("default", ...)`` when none did."""
        words = _words(request.text)
        out = []
        for rule in self.rules:
            why = rule.failure(request.text, words, request.meta, request.task)
            out.append((rule.name, rule.route, why))
            if why is None:
                return out
        out.append(("default", self.default or "-",
                    None if self.default else "no default: the request is rejected"))
        return out
