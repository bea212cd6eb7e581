"""A generated corpus of hostile declarative files, each written over a copy of the frozen
loader-test repository (``tests/fixtures/repo``).

Every case must be refused: ``modelsmith validate`` exits 2, names the expected file with a
line (unless the problem is the file as a whole, where no line exists), prints no traceback,
and stays within bounded time and memory. ``cases()`` yields them; ``write_case`` applies one.

Categories: alias bombs, recursive aliases, deep nesting, huge collections, duplicate keys,
tabs, control characters, non-UTF-8 bytes, byte-order marks, oversized files, the envelope
(apiVersion, kind, metadata), a wrong type for every field of every kind, out-of-range
numbers, empty files, multiple documents, broken scenario rows, files that leave their suite,
directories where files are expected, regexes RE2 refuses (routing, rubric, JSON Schema) and
invalid review path patterns.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelsmith.specs.yamlio import JSONL_MAX_BYTES, SPEC_MAX_BYTES, dump_yaml, roundtrip_yaml

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "repo"

SPECIALIST = "specialists/rtb-quality.yaml"
SUITE = "evals/rtb-quality/suite.yaml"
SCENARIOS = "evals/rtb-quality/scenarios.jsonl"
PROMOTION = "policies/promotion.yaml"
ROUTING = "policies/routing.yaml"
CLUSTERS = "config/clusters.json"
YAML_FILES = (SPECIALIST, SUITE, PROMOTION, ROUTING)
KINDS = {SPECIALIST: "Specialist", SUITE: "EvalSuite", PROMOTION: "PromotionPolicy",
         ROUTING: "RoutingTable"}


# --------------------------------------------------------------------------- what a case writes


@dataclass(frozen=True)
class Symlink:
    """A symlink to ``target`` (relative to the link's folder, or absolute). With
    ``outside``, the target is a file of that content written next to the repository."""

    target: str
    outside: str | None = None


@dataclass(frozen=True)
class Directory:
    """A folder (with one file in it) where a file is expected."""


@dataclass(frozen=True)
class Sparse:
    """A file of ``size`` bytes, none of them written (stat reports the full size)."""

    size: int


@dataclass(frozen=True)
class Fifo:
    """A named pipe: reading it would block forever."""


Content = str | bytes | Symlink | Directory | Sparse | Fifo


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    files: dict[str, Content]
    #: the file the refusal must name
    expect: str
    #: False when the problem is the file as a whole (too large, not a regular file, outside
    #: the repository): no line of it exists to point at
    located: bool = True
    notes: str = field(default="", compare=False)


def write_case(root: Path, case: Case) -> None:
    """Write ``case`` over the repository copy at ``root``."""
    for rel, content in case.files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        if isinstance(content, str):
            path.write_bytes(content.encode("utf-8"))
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, Symlink):
            target = content.target
            if content.outside is not None:
                outside = root.parent / "outside" / Path(target).name
                outside.parent.mkdir(parents=True, exist_ok=True)
                outside.write_text(content.outside)
                target = str(outside)
            os.symlink(target, path)
        elif isinstance(content, Directory):
            path.mkdir()
            (path / "inside.jsonl").write_text(fixture(SCENARIOS))
        elif isinstance(content, Sparse):
            with open(path, "wb") as handle:
                handle.truncate(content.size)
        elif isinstance(content, Fifo):
            os.mkfifo(path)


def fixture(rel: str) -> str:
    return (FIXTURE / rel).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- building blocks


def billion_laughs(levels: int = 9, width: int = 9, flow: bool = True) -> str:
    """Top-level keys lol0..lol{levels-1}, each ``width`` aliases of the one before."""
    lines = ["lol0: &lol0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        if flow:
            refs = ", ".join([f"*lol{level - 1}"] * width)
            lines.append(f"lol{level}: &lol{level} [{refs}]")
        else:
            lines.append(f"lol{level}: &lol{level}")
            lines.extend([f"  - *lol{level - 1}"] * width)
    return "\n".join(lines) + "\n"


def mapping_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["m0: &m0 {" + ", ".join(f"k{i}: v" for i in range(width)) + "}"]
    for level in range(1, levels):
        refs = ", ".join(f"k{i}: *m{level - 1}" for i in range(width))
        lines.append(f"m{level}: &m{level} {{{refs}}}")
    return "\n".join(lines) + "\n"


def _indent(text: str, by: int) -> str:
    return "".join(" " * by + line + "\n" for line in text.splitlines())


def yaml_with(rel: str, extra: str) -> str:
    """The fixture document of ``rel`` with ``extra`` top-level keys appended."""
    return fixture(rel).rstrip("\n") + "\n" + extra


def replace_line(rel: str, old: str, new: str) -> str:
    text = fixture(rel)
    assert old in text, (rel, old)
    return text.replace(old, new, 1)


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


def scenario_rows() -> list[str]:
    return fixture(SCENARIOS).splitlines()


def with_row(row: str | bytes, at: int = 5) -> bytes:
    """The fixture's scenarios with ``row`` inserted as line ``at + 1``."""
    rows: list[bytes] = [r.encode() for r in scenario_rows()]
    rows.insert(at, row if isinstance(row, bytes) else row.encode("utf-8"))
    return b"\n".join(rows) + b"\n"


def good_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"id": "rtb-900", "input": "domain=x.example ctr=2.0% format=video",
                           "expected": "ACCEPT"}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not _DROP}


_DROP = object()


# --------------------------------------------------------------------------- YAML trees


def _load_tree(rel: str) -> Any:
    return roundtrip_yaml().load(fixture(rel))


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every (path, value) of a tree, containers included (after their children)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaves(value, (*path, index))
    if path:
        yield path, node


def _set(tree: Any, path: tuple[Any, ...], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _path_id(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _mutated_yaml(rel: str, path: tuple[Any, ...], value: Any) -> str:
    tree = _load_tree(rel)
    _set(tree, path, value)
    return dump_yaml(tree)


def _mutated_json(rel: str, path: tuple[Any, ...], value: Any) -> str:
    data = json.loads(fixture(rel))
    _set(data, path, value)
    return json_text(data)


def _json_leaves(rel: str) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield from _leaves(json.loads(fixture(rel)))


# Fields whose type admits anything (free text, free-form mappings): a wrong type there is
# not wrong, so they are left out of the wrong-type sweep.
_ANY_TYPE = {"description", "system_prompt", "labels", "annotations"}


_turn = [0]


def _rotate(values: list[Any], count: int) -> list[Any]:
    """``count`` of ``values``, starting one further along at each call, so that a sweep over
    many fields uses every value without trying every value on every field."""
    start = _turn[0]
    _turn[0] += 1
    return [values[(start + i) % len(values)] for i in range(min(count, len(values)))]


def _wrong_values(original: Any) -> list[tuple[str, Any]]:
    """Values of a type ``original``'s field cannot hold."""
    values: list[tuple[str, Any]] = []
    if not isinstance(original, dict):
        values.append(("map", {"not": "this"}))
    if not isinstance(original, list):
        values.append(("list", ["not", "this"]))
    if isinstance(original, bool | int | float) or original is None:
        values.append(("text", "not-a-number-or-bool"))
    elif isinstance(original, str):
        values.append(("int", 12345))
    if isinstance(original, dict | list):
        values.append(("text", "not-a-collection"))
    return values


def _skip_wrong_type(path: tuple[Any, ...], original: Any) -> bool:
    names = {p for p in path if isinstance(p, str)}
    if names & _ANY_TYPE:
        return True
    # null is the documented "empty" of these fields; a string there may be valid
    return original is None and path[-1] in ("production", "canary", "shadow", "generator",
                                              "address", "default")


# --------------------------------------------------------------------------- the categories


def _alias_cases() -> Iterator[Case]:
    variants = {
        "flow": billion_laughs(),
        "block": billion_laughs(flow=False),
        "mapping": mapping_bomb(),
        "narrow-deep": billion_laughs(levels=30, width=2),
        "dup-key": billion_laughs() + "lol8: *lol8\n",
        "dup-key-value": billion_laughs() + "lol7: *lol8\n",
        "dup-key-nested": "dup:\n  a: &z [*lol8, *lol8]\n  a: *z\n",
    }
    for rel in YAML_FILES:
        for name, bomb in variants.items():
            if name == "dup-key-nested":
                bomb = billion_laughs() + bomb
            yield Case(f"alias-bomb-{name}-{Path(rel).stem}", "alias-bomb",
                       {rel: yaml_with(rel, bomb)}, rel)
        # a bomb fed into a real field rather than an unknown one
        field_line = {SPECIALIST: "  description: >-", SUITE: "  description: Bid-request",
                      PROMOTION: "  rollback:", ROUTING: "  default: rtb-quality"}[rel]
        text = fixture(rel).replace(field_line, "  bomb: *lol8\n" + field_line, 1)
        yield Case(f"alias-bomb-in-spec-{Path(rel).stem}", "alias-bomb",
                   {rel: billion_laughs() + text.replace(
                       "apiVersion:", "\napiVersion:", 1)}, rel)


def _recursive_alias_cases() -> Iterator[Case]:
    variants = {
        "seq": "loop: &a [*a]\n",
        "map": "loop: &a {k: *a}\n",
        "nested": "loop: &a [1, [2, {k: [*a]}]]\n",
        "block": "loop: &a\n  k:\n    - *a\n",
        "merge": "loop: &a\n  <<: *a\n",
        "key": "loop: &a [1]\nother:\n  ? *a\n  : 1\n",
    }
    for rel in YAML_FILES:
        for name, text in variants.items():
            yield Case(f"recursive-alias-{name}-{Path(rel).stem}", "recursive-alias",
                       {rel: yaml_with(rel, text)}, rel)


def _deep_cases() -> Iterator[Case]:
    yaml_variants = {
        "flow-seq-65": "deep: " + "[" * 65 + "]" * 65 + "\n",
        "flow-seq-5000": "deep: " + "[" * 5000 + "]" * 5000 + "\n",
        "flow-map-200": "deep: " + "{a: " * 200 + "1" + "}" * 200 + "\n",
        "flow-unclosed": "deep: " + "[" * 3000 + "\n",
        "block-map-100": "deep:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(100))
                         + "  " * 101 + "1\n",
        "block-seq-100": "deep:\n  " + "- " * 100 + "x\n",
        "block-seq-lines": "deep:\n" + "".join("  " * (i + 1) + "-\n" for i in range(100))
                           + "  " * 101 + "- x\n",
        "quoted-brackets": "deep: " + "['x', " * 100 + "1" + "]" * 100 + "\n",
        "aliased-depth": "d0: &d0 [x]\n" + "".join(
            f"d{i}: &d{i} [*d{i - 1}]\n" for i in range(1, 70)),
    }
    for rel in YAML_FILES:
        for name, text in yaml_variants.items():
            yield Case(f"deep-{name}-{Path(rel).stem}", "deep-nesting",
                       {rel: yaml_with(rel, text)}, rel)
    clusters = fixture(CLUSTERS)
    json_variants = {
        "array-65": "[" * 65 + "]" * 65,
        "array-1000": "[" * 1000 + "]" * 1000,
        "array-100000": "[" * 100_000 + "]" * 100_000,
        "object-200": '{"a": ' * 200 + "1" + "}" * 200,
        "unclosed-100000": "[" * 100_000,
    }
    for name, deep in json_variants.items():
        text = clusters.replace('"thresholds":', f'"deep": {deep},\n  "thresholds":', 1)
        yield Case(f"deep-json-{name}-clusters", "deep-nesting", {CLUSTERS: text}, CLUSTERS)
        row = '{"id": "rtb-900", "input": "x", "expected": "ACCEPT", "meta": {"d": ' + deep \
              + "}}"
        yield Case(f"deep-json-{name}-scenarios", "deep-nesting",
                   {SCENARIOS: with_row(row)}, SCENARIOS)


def _huge_cases() -> Iterator[Case]:
    count = 25_000
    variants = {
        "flow-list": "huge: [" + ", ".join("x" for _ in range(count)) + "]\n",
        "block-list": "huge:\n" + "  - x\n" * count,
        "block-map": "huge:\n" + "".join(f"  k{i}: {i}\n" for i in range(count)),
        "flow-map": "huge: {" + ", ".join(f"k{i}: 1" for i in range(count)) + "}\n",
    }
    for rel in YAML_FILES:
        for name, text in variants.items():
            yield Case(f"huge-{name}-{Path(rel).stem}", "huge", {rel: yaml_with(rel, text)}, rel)
    clusters = json.loads(fixture(CLUSTERS))
    big = copy.deepcopy(clusters)
    big["hosts"]["local"]["affinity"] = ["x"] * count
    yield Case("huge-json-list-clusters", "huge", {CLUSTERS: json_text(big)}, CLUSTERS)
    big = copy.deepcopy(clusters)
    big["models"].update({f"m{i}": {} for i in range(count)})
    yield Case("huge-json-map-clusters", "huge", {CLUSTERS: json_text(big)}, CLUSTERS)
    row = json.dumps(good_row(tags=["t"] * 300_000))
    yield Case("huge-json-list-scenarios", "huge", {SCENARIOS: with_row(row)}, SCENARIOS)
    row = json.dumps(good_row(meta={f"k{i}": i for i in range(250_000)}))
    yield Case("huge-json-map-scenarios", "huge", {SCENARIOS: with_row(row)}, SCENARIOS)


def _duplicate_key_cases() -> Iterator[Case]:
    for rel in YAML_FILES:
        stem = Path(rel).stem
        yield Case(f"dup-kind-{stem}", "duplicate-key",
                   {rel: yaml_with(rel, f"kind: {KINDS[rel]}\n")}, rel)
        yield Case(f"dup-metadata-name-{stem}", "duplicate-key",
                   {rel: replace_line(rel, "  name:", "  name: x\n  name:")}, rel)
        yield Case(f"dup-flow-{stem}", "duplicate-key",
                   {rel: yaml_with(rel, "extra: {a: 1, b: 2, a: 3}\n")}, rel)
        yield Case(f"dup-long-key-{stem}", "duplicate-key",
                   {rel: yaml_with(rel, ("k" * 5000 + ": 1\n") * 2)}, rel)
    yield Case("dup-spec-task-specialist", "duplicate-key",
               {SPECIALIST: replace_line(SPECIALIST, "  evals: rtb-quality",
                                         "  evals: rtb-quality\n  evals: other")}, SPECIALIST)
    clusters = fixture(CLUSTERS)
    yield Case("dup-top-clusters", "duplicate-key",
               {CLUSTERS: clusters.replace('"thresholds":', '"hosts": {},\n  "thresholds":', 1)},
               CLUSTERS)
    yield Case("dup-nested-clusters", "duplicate-key",
               {CLUSTERS: clusters.replace('"gpus": 0,', '"gpus": 0, "gpus": 1,', 1)}, CLUSTERS)
    yield Case("dup-row-scenarios", "duplicate-key", {SCENARIOS: with_row(
        '{"id": "rtb-900", "id": "rtb-901", "input": "x", "expected": "ACCEPT"}')}, SCENARIOS)
    yield Case("dup-row-nested-scenarios", "duplicate-key", {SCENARIOS: with_row(
        '{"id": "rtb-900", "input": "x", "expected": "ACCEPT", "meta": {"a": 1, "a": 2}}')},
        SCENARIOS)


def _tab_cases() -> Iterator[Case]:
    for rel in YAML_FILES:
        stem = Path(rel).stem
        yield Case(f"tab-indent-{stem}", "tab",
                   {rel: replace_line(rel, "\n  name:", "\n\tname:")}, rel)
        yield Case(f"tab-nested-indent-{stem}", "tab",
                   {rel: yaml_with(rel, "extra:\n  a:\n  \tb: 1\n")}, rel)
        yield Case(f"tab-block-seq-{stem}", "tab", {rel: yaml_with(rel, "extra:\n\t- 1\n")}, rel)
    yield Case("tab-in-json-string-clusters", "tab",
               {CLUSTERS: fixture(CLUSTERS).replace('"eval_host": "local"',
                                                    '"eval_host": "lo\tcal"', 1)}, CLUSTERS)
    yield Case("tab-in-json-string-scenarios", "tab", {SCENARIOS: with_row(
        '{"id": "rtb-900", "input": "a\tb", "expected": "ACCEPT"}')}, SCENARIOS)


def _control_cases() -> Iterator[Case]:
    chars = {"nul": "\x00", "bel": "\x07", "esc": "\x1b", "del": "\x7f", "fffe": "\ufffe",
             "c1": "\x9b"}
    for rel in YAML_FILES:
        stem = Path(rel).stem
        for name, char in chars.items():
            yield Case(f"control-{name}-value-{stem}", "control-char",
                       {rel: replace_line(rel, "  name: ", f"  name: a{char}")}, rel)
        yield Case(f"control-nul-comment-{stem}", "control-char",
                   {rel: yaml_with(rel, "# a comment \x00 here\n")}, rel)
    for name, char in chars.items():
        yield Case(f"control-{name}-clusters", "control-char",
                   {CLUSTERS: fixture(CLUSTERS).replace('"eval_host": "local"',
                                                        f'"eval_host": "lo{char}cal"', 1)},
                   CLUSTERS)
    yield Case("control-nul-outside-string-clusters", "control-char",
               {CLUSTERS: fixture(CLUSTERS).replace('"hosts"', '\x00"hosts"', 1)}, CLUSTERS)
    for name in ("nul", "esc"):
        yield Case(f"control-{name}-scenarios", "control-char", {SCENARIOS: with_row(
            '{"id": "rtb-900", "input": "a' + chars[name] + 'b", "expected": "ACCEPT"}')},
            SCENARIOS)


def _non_utf8_cases() -> Iterator[Case]:
    def inject(rel: str, bad: bytes) -> bytes:
        lines = fixture(rel).encode().split(b"\n")
        lines[3] = lines[3] + bad
        return b"\n".join(lines)

    variants: dict[str, Callable[[str], bytes]] = {
        "ff-start": lambda rel: b"\xff" + fixture(rel).encode(),
        "latin1": lambda rel: inject(rel, "caf\u00e9".encode("latin-1")),
        "truncated": lambda rel: fixture(rel).encode() + b"\xe2\x82",
        "overlong": lambda rel: inject(rel, b"\xc0\xaf"),
        "surrogate": lambda rel: inject(rel, b"\xed\xa0\x80"),
        "utf16": lambda rel: fixture(rel).encode("utf-16"),
    }
    for rel in (*YAML_FILES, CLUSTERS, SCENARIOS):
        for name, make in variants.items():
            yield Case(f"non-utf8-{name}-{Path(rel).stem}", "non-utf8", {rel: make(rel)}, rel)


def _bom_cases() -> Iterator[Case]:
    bom = "\ufeff"
    for rel in YAML_FILES:
        stem = Path(rel).stem
        # a BOM is allowed; the broken name after it must still be found on its line
        yield Case(f"bom-then-error-{stem}", "bom",
                   {rel: bom + replace_line(rel, "  name: ", "  name: Bad_Name-")}, rel)
        yield Case(f"bom-mid-file-{stem}", "bom",
                   {rel: replace_line(rel, "\nmetadata:", f"\n{bom}metadata:")}, rel)
        yield Case(f"bom-utf32-{stem}", "bom", {rel: fixture(rel).encode("utf-32")}, rel)
    yield Case("bom-then-error-clusters", "bom",
               {CLUSTERS: bom + fixture(CLUSTERS).replace('"gpus": 0', '"gpus": -1', 1)},
               CLUSTERS)
    yield Case("bom-twice-clusters", "bom", {CLUSTERS: bom + bom + fixture(CLUSTERS)}, CLUSTERS)
    yield Case("bom-row-scenarios", "bom",
               {SCENARIOS: with_row(bom + json.dumps(good_row()))}, SCENARIOS)
    yield Case("bom-utf16-scenarios", "bom",
               {SCENARIOS: fixture(SCENARIOS).encode("utf-16")}, SCENARIOS)


def _oversized_cases() -> Iterator[Case]:
    for rel in (*YAML_FILES, CLUSTERS):
        yield Case(f"oversized-{Path(rel).stem}", "oversized",
                   {rel: Sparse(SPEC_MAX_BYTES + 1)}, rel, located=False)
    yield Case("oversized-scenarios", "oversized", {SCENARIOS: Sparse(JSONL_MAX_BYTES + 1)},
               SCENARIOS, located=False)
    yield Case("oversized-real-bytes-specialist", "oversized",
               {SPECIALIST: fixture(SPECIALIST) + "#" * SPEC_MAX_BYTES}, SPECIALIST,
               located=False)


def _envelope_cases() -> Iterator[Case]:
    for rel in YAML_FILES:
        stem, kind = Path(rel).stem, KINDS[rel]
        api = "apiVersion: modelsmith/v1\n"
        variants = {
            "api-missing": fixture(rel).replace(api, "", 1),
            "api-v2": fixture(rel).replace(api, "apiVersion: modelsmith/v2\n", 1),
            "api-bare": fixture(rel).replace(api, "apiVersion: v1\n", 1),
            "api-int": fixture(rel).replace(api, "apiVersion: 1\n", 1),
            "api-list": fixture(rel).replace(api, "apiVersion: [modelsmith/v1]\n", 1),
            "api-null": fixture(rel).replace(api, "apiVersion: null\n", 1),
            "kind-missing": fixture(rel).replace(f"kind: {kind}\n", "", 1),
            "kind-lowercase": fixture(rel).replace(f"kind: {kind}", f"kind: {kind.lower()}", 1),
            "kind-other-folder": fixture(rel).replace(
                f"kind: {kind}", "kind: " + ("EvalSuite" if kind != "EvalSuite" else
                                             "Specialist"), 1),
            "kind-int": fixture(rel).replace(f"kind: {kind}", "kind: 42", 1),
            "kind-map": fixture(rel).replace(f"kind: {kind}", "kind: {a: 1}", 1),
            "metadata-missing": replace_line(rel, "metadata:\n  name:", "other:\n  name:"),
            "metadata-list": replace_line(rel, "metadata:\n  name:", "metadata:\n  - name:"),
            "name-invalid": replace_line(rel, "  name: ", "  name: Bad_Name."),
            "name-too-long": replace_line(rel, "  name: ", "  name: " + "a" * 70),
            "name-missing": replace_line(rel, "  name: ", "  nmae: "),
            "unknown-top-field": yaml_with(rel, "statuss: {}\n"),
        }
        if rel in (SPECIALIST, SUITE):
            variants["name-mismatch"] = replace_line(rel, "  name: rtb-quality",
                                                     "  name: other-name")
        for name, text in variants.items():
            yield Case(f"envelope-{name}-{stem}", "envelope", {rel: text}, rel)


def _wrong_type_cases() -> Iterator[Case]:
    for rel in YAML_FILES:
        for path, original in _leaves(_load_tree(rel)):
            if path[0] in ("apiVersion", "kind") or _skip_wrong_type(path, original):
                continue
            for name, value in _rotate(_wrong_values(original), 2):
                yield Case(f"wrong-type-{Path(rel).stem}-{_path_id(path)}-{name}", "wrong-type",
                           {rel: _mutated_yaml(rel, path, value)}, rel)
    # the policy's review block (absent from the fixture: defaults apply)
    for number, (path, value) in enumerate((
        (("review",), "x"), (("review",), ["x"]), (("review", "paths"), "evals/**"),
        (("review", "paths"), {"a": 1}), (("review", "paths"), [1]),
        (("review", "paths"), [["evals/**"]]), (("review", "min_approvals"), "two"),
        (("review", "min_approvals"), 1.5), (("review", "min_approvals"), [1]),
        (("review", "approvers"), "alice"), (("review", "approvers"), [{"a": 1}]),
        (("review", "since"), 1234567), (("review", "since"), ["abcdef0"]),
        (("review", "unknown"), True),
    )):
        tree = _load_tree(PROMOTION)
        tree["spec"].setdefault("review", {})
        node = tree["spec"]
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
        label = f"{_path_id(path)}-{type(value).__name__}-{number}"
        yield Case(f"wrong-type-promotion-spec.{label}", "wrong-type",
                   {PROMOTION: dump_yaml(tree)}, PROMOTION)
    for path, original in _json_leaves(CLUSTERS):
        if _skip_wrong_type(path, original):
            continue
        for name, value in _rotate(_wrong_values(original), 1):
            yield Case(f"wrong-type-clusters-{_path_id(path)}-{name}", "wrong-type",
                       {CLUSTERS: _mutated_json(CLUSTERS, path, value)}, CLUSTERS)


_YAML_NUMBERS = {
    "inf": ".inf", "neg-inf": "-.inf", "nan": ".nan", "1e999": "1e999", "neg": "-1",
    "digits-5000": "9" * 5000, "neg-digits-5000": "-" + "9" * 5000,
    "hex-huge": "0x" + "f" * 200,
}
_JSON_NUMBERS = {
    "nan": "NaN", "inf": "Infinity", "neg-inf": "-Infinity", "1e999": "1e999", "neg": "-1",
    "digits-5000": "9" * 5000, "neg-digits-5000": "-" + "9" * 5000,
}


def _number_cases() -> Iterator[Case]:
    marker = "__NUMBER__"
    for rel in YAML_FILES:
        for path, original in _leaves(_load_tree(rel)):
            if isinstance(original, bool) or not isinstance(original, int | float):
                continue
            template = _mutated_yaml(rel, path, marker)
            for name, spelled in _rotate(list(_YAML_NUMBERS.items()), 3):
                yield Case(f"number-{Path(rel).stem}-{_path_id(path)}-{name}", "number",
                           {rel: template.replace(marker, spelled)}, rel)
    for path, original in _json_leaves(CLUSTERS):
        if isinstance(original, bool) or not isinstance(original, int | float):
            continue
        template = _mutated_json(CLUSTERS, path, marker)
        for name, spelled in _rotate(list(_JSON_NUMBERS.items()), 2):
            yield Case(f"number-clusters-{_path_id(path)}-{name}", "number",
                       {CLUSTERS: template.replace(f'"{marker}"', spelled)}, CLUSTERS)
    # seeds: past 2**32 - 1 (what numpy, random and torch accept)
    for path in (("models", "tiny-test", "source", "seed"), ("profiles", "cpu-lora", "seed")):
        for value in (2**32, 2**64, 10**99):
            yield Case(f"number-clusters-{_path_id(path)}-huge-{len(str(value))}", "number",
                       {CLUSTERS: _mutated_json(CLUSTERS, path, value)}, CLUSTERS)
    for name, spelled in _JSON_NUMBERS.items():
        if name == "neg":
            continue
        row = '{"id": "rtb-900", "input": "x", "expected": "ACCEPT", "meta": {"n": ' + \
              spelled + "}}"
        yield Case(f"number-scenarios-{name}", "number", {SCENARIOS: with_row(row)}, SCENARIOS)


def _empty_cases() -> Iterator[Case]:
    variants = {"zero-bytes": "", "newlines": "\n\n\n", "spaces": "   \n  \n",
                "comment": "# nothing here\n", "separator": "---\n", "end-marker": "---\n...\n",
                "null": "~\n", "null-word": "null\n", "list": "[]\n", "scalar": "'text'\n",
                "number": "42\n", "directive-only": "%YAML 1.2\n---\n"}
    for rel in YAML_FILES:
        for name, text in variants.items():
            yield Case(f"empty-{name}-{Path(rel).stem}", "empty", {rel: text}, rel)
    for name, text in {"zero-bytes": "", "spaces": "  \n", "null": "null", "list": "[]",
                       "number": "42", "string": '"x"', "object": "{}"}.items():
        yield Case(f"empty-{name}-clusters", "empty", {CLUSTERS: text}, CLUSTERS)
    # no scenarios at all: the suite has no core scenario
    yield Case("empty-scenarios", "empty", {SCENARIOS: ""}, SUITE)
    yield Case("empty-lines-scenarios", "empty", {SCENARIOS: "\n\n  \n"}, SUITE)


def _multi_doc_cases() -> Iterator[Case]:
    for rel in (SPECIALIST, SUITE):
        stem = Path(rel).stem
        yield Case(f"multi-doc-twice-{stem}", "multi-doc",
                   {rel: fixture(rel) + "---\n" + fixture(rel)}, rel)
        yield Case(f"multi-doc-garbage-{stem}", "multi-doc",
                   {rel: fixture(rel) + "---\n[1, 2]\n"}, rel)
    yield Case("multi-doc-two-routing-tables", "multi-doc",
               {PROMOTION: fixture(PROMOTION) + "---\n" + fixture(ROUTING).replace(
                   "name: default", "name: second", 1)}, ROUTING)
    yield Case("multi-doc-duplicate-policy", "multi-doc",
               {ROUTING: fixture(ROUTING) + "---\n" + fixture(PROMOTION)}, ROUTING)
    yield Case("multi-doc-specialist-in-policies", "multi-doc",
               {PROMOTION: fixture(PROMOTION) + "---\n" + fixture(SPECIALIST)}, PROMOTION)
    yield Case("multi-doc-list-in-policies", "multi-doc",
               {ROUTING: fixture(ROUTING) + "---\n- a\n- b\n"}, ROUTING)
    yield Case("multi-doc-broken-second", "multi-doc",
               {ROUTING: fixture(ROUTING) + "---\nkey: [unclosed\n"}, ROUTING)


def _scenario_row_cases() -> Iterator[Case]:
    rows: dict[str, str | bytes] = {
        "not-json": "this is not json",
        "truncated": '{"id": "rtb-900", "input": "x"',
        "trailing-comma": '{"id": "rtb-900", "input": "x", "expected": "ACCEPT",}',
        "single-quotes": "{'id': 'rtb-900'}",
        "array": '["rtb-900", "x", "ACCEPT"]',
        "string": '"a row"',
        "number": "42",
        "null": "null",
        "two-objects": '{"id": "a"} {"id": "b"}',
        "id-missing": json.dumps(good_row(id=_DROP)),
        "id-invalid": json.dumps(good_row(id="has space")),
        "id-too-long": json.dumps(good_row(id="a" * 200)),
        "id-int": json.dumps(good_row(id=900)),
        "id-null": json.dumps(good_row(id=None)),
        "input-missing": json.dumps(good_row(input=_DROP)),
        "input-empty": json.dumps(good_row(input="")),
        "input-blank": json.dumps(good_row(input="   \t ")),
        "input-int": json.dumps(good_row(input=7)),
        "input-list": json.dumps(good_row(input=["a"])),
        "split-unknown": json.dumps(good_row(split="test")),
        "split-int": json.dumps(good_row(split=1)),
        "tags-string": json.dumps(good_row(tags="a,b")),
        "tags-ints": json.dumps(good_row(tags=[1, 2])),
        "variants-empty-string": json.dumps(good_row(variants=[""])),
        "variants-map": json.dumps(good_row(variants={"a": "b"})),
        "rubric-empty": json.dumps(good_row(rubric=[])),
        "rubric-unknown-kind": json.dumps(good_row(rubric=[{"kind": "vibes"}])),
        "rubric-kind-missing": json.dumps(good_row(rubric=[{"weight": 1}])),
        "rubric-weight-zero": json.dumps(good_row(rubric=[{"kind": "label", "weight": 0}])),
        "rubric-bad-json-path": json.dumps(good_row(
            rubric=[{"kind": "json_field", "path": "a..b"}])),
        "rubric-length-no-bound": json.dumps(good_row(rubric=[{"kind": "length"}])),
        "meta-list": json.dumps(good_row(meta=["a"])),
        "unknown-field": json.dumps(good_row(expcted="ACCEPT")),
        "duplicate-id": json.dumps(good_row(id="rtb-001")),
        "lone-surrogate-id": '{"id": "\\ud800", "input": "x", "expected": "ACCEPT"}',
        "expected-not-a-label": json.dumps(good_row(expected="MAYBE")),
        "expected-list": json.dumps(good_row(expected=["ACCEPT"])),
        "heldout-leak": json.dumps(good_row(
            split="heldout", input="domain=news.example ctr=1.2% floor=$0.80 format=banner")),
        "dev-leak-variant": json.dumps(good_row(
            split="dev", variants=["domain=casino-ads.example ctr=2.1% floor=$1.50 "
                                   "format=video"])),
        "split-clash": json.dumps(good_row(id="rtb-002", split="heldout")),
        "bad-escape": '{"id": "rtb-900", "input": "\\x41", "expected": "ACCEPT"}',
        "invalid-utf8": b'{"id": "rtb-900", "input": "\xff\xfe", "expected": "ACCEPT"}',
        "crlf-garbage": '{"id": "rtb-900", "input": "x", "expected": "ACCEPT"}\r\x0c junk',
        "form-feed-split": '{"id": "rtb-900", "input": "x", \x0c"expected": "ACCEPT", x}',
        "long-garbage": "x" * 100_000,
    }
    for name, row in rows.items():
        yield Case(f"jsonl-{name}", "jsonl", {SCENARIOS: with_row(row)}, SCENARIOS)
    many = "\n".join(f"not json {i}" for i in range(20_000)) + "\n"
    yield Case("jsonl-20000-bad-rows", "jsonl", {SCENARIOS: many}, SCENARIOS)
    yield Case("jsonl-only-heldout", "jsonl", {SCENARIOS: "\n".join(
        json.dumps({**json.loads(r), "split": "heldout"}) for r in scenario_rows()) + "\n"},
        SUITE)


def _file_cases() -> Iterator[Case]:
    """Files that leave their suite or repository, and things that are not files."""
    suite_dir = "evals/rtb-quality"
    cases: list[tuple[str, dict[str, Content], str, bool]] = [
        ("scenarios-symlink-outside-repo",
         {SCENARIOS: Symlink("outside.jsonl", outside=fixture(SCENARIOS))}, SUITE, True),
        ("scenarios-symlink-outside-suite",
         {SCENARIOS: Symlink("../../specialists/rtb-quality.yaml")}, SUITE, True),
        ("scenarios-symlink-absolute", {SCENARIOS: Symlink("/etc/hostname")}, SUITE, True),
        ("scenarios-symlink-broken", {SCENARIOS: Symlink("missing.jsonl")}, SUITE, True),
        ("scenarios-symlink-loop", {SCENARIOS: Symlink("scenarios.jsonl")}, SUITE, True),
        ("scenarios-symlink-dev-null", {SCENARIOS: Symlink("/dev/null")}, SUITE, True),
        ("scenarios-fifo", {SCENARIOS: Fifo()}, SUITE, True),
        ("scenarios-is-directory", {SCENARIOS: Directory()}, SUITE, True),
        ("scenarios-names-directory",
         {SUITE: replace_line(SUITE, "scenarios: [scenarios.jsonl]", "scenarios: [data]"),
          f"{suite_dir}/data": Directory()}, SUITE, True),
        ("scenarios-names-dot",
         {SUITE: replace_line(SUITE, "scenarios: [scenarios.jsonl]", "scenarios: ['.']")},
         SUITE, True),
        ("scenarios-names-dir-slash",
         {SUITE: replace_line(SUITE, "scenarios: [scenarios.jsonl]",
                              "scenarios: [scenarios.jsonl, data/]"),
          f"{suite_dir}/data": Directory()}, SUITE, True),
        ("scenarios-absolute-path",
         {SUITE: replace_line(SUITE, "scenarios: [scenarios.jsonl]", "scenarios: [/etc/passwd]")},
         SUITE, True),
        ("scenarios-dotdot-path",
         {SUITE: replace_line(SUITE, "scenarios: [scenarios.jsonl]",
                              "scenarios: [../../config/clusters.json]")}, SUITE, True),
        ("scenarios-missing-file",
         {SUITE: replace_line(SUITE, "scenarios: [scenarios.jsonl]", "scenarios: [nope.jsonl]")},
         SUITE, True),
        ("scenarios-listed-twice",
         {SUITE: replace_line(SUITE, "scenarios: [scenarios.jsonl]",
                              "scenarios: [scenarios.jsonl, scenarios.jsonl]")}, SUITE, True),
        ("scenarios-backslash",
         {SUITE: replace_line(SUITE, "scenarios: [scenarios.jsonl]",
                              "scenarios: ['sub\\scenarios.jsonl']")}, SUITE, True),
        ("generator-symlink-outside",
         {SUITE: replace_line(SUITE, "generator: null", "generator: gen.py:make"),
          f"{suite_dir}/gen.py": Symlink("gen.py", outside="def make():\n    return []\n")},
         SUITE, True),
        ("generator-symlink-outside-suite",
         {SUITE: replace_line(SUITE, "generator: null", "generator: gen.py:make"),
          f"{suite_dir}/gen.py": Symlink("../../config/clusters.json")}, SUITE, True),
        ("generator-is-directory",
         {SUITE: replace_line(SUITE, "generator: null", "generator: gen.py:make"),
          f"{suite_dir}/gen.py": Directory()}, SUITE, True),
        ("generator-missing",
         {SUITE: replace_line(SUITE, "generator: null", "generator: gen.py:make")}, SUITE, True),
        ("generator-dotdot",
         {SUITE: replace_line(SUITE, "generator: null", "generator: ../gen.py:make")},
         SUITE, True),
        ("generator-absolute",
         {SUITE: replace_line(SUITE, "generator: null", "generator: /tmp/gen.py:make")},
         SUITE, True),
        ("generator-no-function",
         {SUITE: replace_line(SUITE, "generator: null", "generator: gen.py")}, SUITE, True),
        ("suite-symlink-outside-repo",
         {SUITE: Symlink("suite.yaml", outside=fixture(SUITE))}, SUITE, False),
        ("specialist-symlink-outside-repo",
         {SPECIALIST: Symlink("rtb-quality.yaml", outside=fixture(SPECIALIST))}, SPECIALIST,
         False),
        ("specialist-fifo", {SPECIALIST: Fifo()}, SPECIALIST, False),
        ("specialist-symlink-dev-zero", {SPECIALIST: Symlink("/dev/zero")}, SPECIALIST, False),
        ("clusters-is-directory", {CLUSTERS: Directory()}, CLUSTERS, False),
        ("clusters-fifo", {CLUSTERS: Fifo()}, CLUSTERS, False),
        ("clusters-symlink-broken", {CLUSTERS: Symlink("missing.json")}, CLUSTERS, False),
        ("policy-symlink-outside-repo",
         {PROMOTION: Symlink("promotion.yaml", outside=fixture(PROMOTION))}, PROMOTION, False),
    ]
    for name, files, expect, located in cases:
        category = "directory" if "directory" in name or "dir-" in name or name[-3:] == "dot" \
            else "symlink" if "symlink" in name or "fifo" in name else "suite-paths"
        yield Case(f"files-{name}", category, files, expect, located=located)


# Patterns RE2 refuses: Python-only syntax, and patterns whose program is too large.
_BAD_PATTERNS = {
    "lookahead": "foo(?=bar)",
    "negative-lookahead": "foo(?!bar)",
    "lookbehind": "(?<=a)b",
    "negative-lookbehind": "(?<!a)b",
    "backreference": "(a)\\1",
    "named-backreference": "(?P<x>a)(?P=x)",
    "atomic-group": "(?>a+)b",
    "possessive": "a++b",
    "possessive-star": "a*+b",
    "conditional": "(a)?(?(1)b|c)",
    "end-Z": "abc\\Z",
    "verbose": "(?x) a b c",
    "comment": "a(?#note)b",
    "repeat-1001": "a{1001}",
    "nested-repeat": "(a{1000}){1000}",
    "program-too-large": "((a{100}){100}){100}",
    "unbalanced": "(abc",
    "bad-range": "[z-a]",
    "nothing-to-repeat": "*a",
    "unknown-class": "\\p{Nope}",
    "too-long": "a" * 5000,
}


def _regex_cases() -> Iterator[Case]:
    for name, pattern in _BAD_PATTERNS.items():
        quoted = json.dumps(pattern)  # a JSON string is a YAML double-quoted scalar
        yield Case(f"regex-{name}-routing", "regex",
                   {ROUTING: replace_line(ROUTING, '        regex: "(?i)\\\\bdomain=\\\\S+.*'
                                          '\\\\bctr="', f"        regex: {quoted}")}, ROUTING)
        yield Case(f"regex-{name}-suite-rubric", "regex", {SUITE: replace_line(
            SUITE, "      required: true\n",
            f"      required: true\n    - kind: regex\n      pattern: {quoted}\n")}, SUITE)
        row = good_row(rubric=[{"kind": "regex", "pattern": pattern}])
        yield Case(f"regex-{name}-row-rubric", "regex",
                   {SCENARIOS: with_row(json.dumps(row))}, SCENARIOS)
        schema = {"type": "object", "properties": {"a": {"type": "string",
                                                         "pattern": pattern}}}
        yield Case(f"regex-{name}-json-schema-pattern", "regex", {SUITE: replace_line(
            SUITE, "      required: true\n", "      required: true\n    - kind: json_schema\n"
            f"      schema: {json.dumps(schema)}\n")}, SUITE)
        schema = {"type": "object", "patternProperties": {pattern: {"type": "integer"}}}
        yield Case(f"regex-{name}-json-schema-pattern-properties", "regex",
                   {SUITE: replace_line(SUITE, "      required: true\n",
                                        "      required: true\n    - kind: json_schema\n"
                                        f"      schema: {json.dumps(schema)}\n")}, SUITE)
    nested = {"$defs": {"d": {"items": {"pattern": "(?<=a)b"}}},
              "anyOf": [{"not": {"properties": {"pattern": {"pattern": "(a)\\1"}}}}]}
    yield Case("regex-json-schema-nested-row", "regex", {SCENARIOS: with_row(json.dumps(good_row(
        rubric=[{"kind": "json_schema", "schema": nested}])))}, SCENARIOS)
    yield Case("regex-json-schema-pattern-not-string", "regex", {SCENARIOS: with_row(json.dumps(
        good_row(rubric=[{"kind": "json_schema", "schema": {"pattern": 5}}])))}, SCENARIOS)


_BAD_REVIEW_PATHS = {
    "empty": "", "blank": "   ", "absolute": "/evals/**", "backslash": "evals\\**",
    "dotdot": "evals/../policies/**", "dot": "./evals/**", "double-slash": "evals//x",
    "star-star-glued": "evals/a**", "unclosed-class": "evals/[abc", "hash-empty-key": "evals/**#",
    "hash-bad-key": "evals/**#1spec", "hash-dots": "evals/**#spec..task",
    "too-long": "evals/" + "a" * 400, "hash-space": "evals/**#spec task",
}


def _review_cases() -> Iterator[Case]:
    for name, pattern in _BAD_REVIEW_PATHS.items():
        tree = _load_tree(PROMOTION)
        tree["spec"]["review"] = {"paths": ["evals/**", pattern]}
        yield Case(f"review-path-{name}", "review", {PROMOTION: dump_yaml(tree)}, PROMOTION)
    for name, review in {
        "min-approvals-zero": {"min_approvals": 0},
        "min-approvals-negative": {"min_approvals": -3},
        "too-few-approvers": {"min_approvals": 3, "approvers": ["alice"]},
        "approver-empty": {"approvers": [""]},
        "since-not-a-commit": {"since": "HEAD~1"},
        "since-short": {"since": "abc"},
        "paths-empty-list-item": {"paths": [None]},
        "unknown-field": {"pathz": ["evals/**"]},
    }.items():
        tree = _load_tree(PROMOTION)
        tree["spec"]["review"] = review
        yield Case(f"review-{name}", "review", {PROMOTION: dump_yaml(tree)}, PROMOTION)


_GENERATORS = (
    _alias_cases, _recursive_alias_cases, _deep_cases, _huge_cases, _duplicate_key_cases,
    _tab_cases, _control_cases, _non_utf8_cases, _bom_cases, _oversized_cases, _envelope_cases,
    _wrong_type_cases, _number_cases, _empty_cases, _multi_doc_cases, _scenario_row_cases,
    _file_cases, _regex_cases, _review_cases,
)


def cases() -> list[Case]:
    """Every case of the corpus, ids unique."""
    out: list[Case] = []
    seen: set[str] = set()
    _turn[0] = 0  # the same corpus on every call (each test worker collects its own)
    for generate in _GENERATORS:
        for case in generate():
            assert case.id not in seen, case.id
            seen.add(case.id)
            out.append(case)
    return out
