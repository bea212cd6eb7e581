"""The deterministic router: ``policies/routing.yaml`` compiled once into a matcher.

Rules are ordered; the first whose conditions all hold wins (metadata equality, whole-word
case-insensitive keyword sets, a regex searched in the text (on RE2, so matching is linear
in the text whatever the pattern: see ``modelsmith.specs.regex``), length bounds in characters,
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
from modelsmith.specs.regex import SpecRegex, compile_regex
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
    regex: SpecRegex | None
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
        if self.regex is not None and not self.regex.search(text):
            return f"regex {self.regex.pattern!r} does not match"
        return None


_META = frozenset("\\.^$*+?()[]{}|")
_QUANTIFIERS = frozenset("*+?{")
_COUNTED = re.compile(r"\{[0-9]+(?:,[0-9]*)?\}")
#: An inline flag group that turns on case-insensitive matching: (?i), (?si), (?i:...).
_IGNORE_CASE = re.compile(r"\(\?[a-zA-Z]*i[a-zA-Z-]*[:)]")


def required_literal(pattern: str | re.Pattern[str] | SpecRegex) -> str | None:
    """The longest text every match of ``pattern`` contains (None when there is none worth
    testing, or matching ignores case).

    Read from the pattern's top level (RE2 syntax, which Python's shares for what counts
    here): runs of literal characters outside groups and classes; a quantified character
    leaves its run, and top-level alternatives contribute the prefix their leading runs
    share. Anything unclear ends a run, so the answer is conservative.
    """
    if isinstance(pattern, re.Pattern) and pattern.flags & re.IGNORECASE:
        return None
    text = pattern if isinstance(pattern, str) else pattern.pattern
    if not isinstance(text, str) or _IGNORE_CASE.search(text):
        return None
    branches = _top_level_runs(text)
    if branches is None:
        return None
    if len(branches) == 1:
        best = max(branches[0][1], key=len, default="")
    else:  # alternatives: what every branch starts with
        leads = [lead for lead, _ in branches]
        best = leads[0]
        for lead in leads[1:]:
            n = 0
            while n < min(len(best), len(lead)) and best[n] == lead[n]:
                n += 1
            best = best[:n]
    return best if len(best) >= 2 else None


def _top_level_runs(text: str) -> list[tuple[str, list[str]]] | None:
    """Per top-level alternative: (its leading literal run, all its literal runs)."""
    branches: list[tuple[str, list[str]]] = []
    runs: list[str] = []
    run: list[str] = []
    lead: str | None = None  # the branch's leading run, once something ended it
    depth = 0
    i, n = 0, len(text)

    def close() -> None:
        nonlocal run, lead
        runs.append("".join(run))
        if lead is None:
            lead = "".join(run)
        run = []

    while i < n:
        char = text[i]
        if char == "\\":
            if i + 1 >= n:
                return None
            nxt = text[i + 1]
            if nxt == "Q":  # \Q...\E quotes metacharacters: skip it whole
                end = text.find("\\E", i + 2)
                i = n if end < 0 else end + 2
                close()
                continue
            if depth == 0 and not nxt.isalnum() and nxt.isascii() and nxt.isprintable():
                run.append(nxt)  # an escaped punctuation character is itself
            elif depth == 0:
                close()
            i += 2
            continue
        if char == "[":
            i = _class_end(text, i)
            if i < 0:
                return None
            if depth == 0:
                close()
            continue
        if char == "(":
            if depth == 0:
                close()
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0:
            if char == "|":
                close()
                branches.append((lead or "", runs))
                runs, lead = [], None
            elif char in _QUANTIFIERS:
                counted = _COUNTED.match(text, i) if char == "{" else None
                if char != "{" or counted:
                    if run:
                        run.pop()  # the quantified character is not required
                    close()
                    if counted:
                        i = counted.end()
                        continue
                else:  # RE2 reads a '{' that opens no repetition as itself
                    close()
            elif char in _META:
                close()
            else:
                run.append(char)
        i += 1
    if depth != 0:
        return None
    close()
    branches.append((lead or "", runs))
    return branches


def _class_end(text: str, start: int) -> int:
    """Index just past the character class opening at ``start`` (-1: unterminated)."""
    i = start + 1
    if i < len(text) and text[i] == "^":
        i += 1
    if i < len(text) and text[i] == "]":  # a leading ']' is a literal
        i += 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "[" and text.startswith("[:", i):
            end = text.find(":]", i + 2)
            if end >= 0:
                i = end + 2
                continue
        if char == "]":
            return i + 1
        i += 1
    return -1


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
                          lit in t and search(t))
        else:
            checks.append(lambda t, w, m, k, search=rule.regex.search: search(t))
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
                compile_regex(when.regex) if when.regex is not None else None,
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
