"""The hostile corpus (``tests/hostile_corpus.py``) as tests.

Every case is loaded in process: a located issue on the expected file, never an exception
or an internal error. A sample (every 20th case and the first of each category) runs
``modelsmith validate`` as a real process under RLIMIT_AS: exit 2, no traceback, a
``file:line`` in the output, and its time and peak memory measured with ``os.wait4``.
The bounds asserted are hang and blow-up guards, far above the measured costs (which are
written to ``hostile-corpus-summary.txt`` in pytest's temporary folder and printed).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostile_corpus import FIXTURE, Case, cases, write_case
from modelsmith.evaluation.criteria import ScoringContext, score_json_schema
from modelsmith.specs import validate_repository
from modelsmith.specs.rubric import JsonSchemaCriterion

CORPUS = cases()
BY_CATEGORY: dict[str, list[Case]] = {}
for _case in CORPUS:
    BY_CATEGORY.setdefault(_case.category, []).append(_case)
SAMPLE = sorted({c.id for c in CORPUS[::20]} | {group[0].id for group in BY_CATEGORY.values()})

#: Guards, not targets: the measured maxima are in the summary.
HANG_GUARD_S = 10.0
RSS_GUARD_MB = 200
ADDRESS_SPACE = 1 << 30  # RLIMIT_AS of the child: a runaway allocation fails, not the host

ENGINE = Path(__file__).resolve().parents[1] / "engine"
_RESULTS: list[dict[str, object]] = []


def _repo(tmp_path: Path, case: Case) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(FIXTURE, root)
    write_case(root, case)
    return root


@pytest.fixture(scope="module", autouse=True)
def summary(tmp_path_factory: pytest.TempPathFactory):
    yield
    if not _RESULTS:
        return
    lines = [f"hostile corpus: {len(CORPUS)} cases, {len(BY_CATEGORY)} categories"]
    for mode in ("in-process", "subprocess"):
        rows = [r for r in _RESULTS if r["mode"] == mode]
        if not rows:
            continue
        slowest = max(rows, key=lambda r: float(r["cpu_s"]))  # type: ignore[arg-type]
        line = (f"{mode}: {len(rows)} runs, max cpu {float(slowest['cpu_s']):.2f} s "
                f"({slowest['id']}), max wall {max(float(r['wall_s']) for r in rows):.2f} s")
        if mode == "subprocess":
            biggest = max(rows, key=lambda r: float(r["rss_mb"]))  # type: ignore[arg-type]
            line += f", max rss {float(biggest['rss_mb']):.0f} MB ({biggest['id']})"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    out = tmp_path_factory.getbasetemp() / "hostile-corpus-summary.txt"
    out.write_text(text + "".join(json.dumps(r) + "\n" for r in _RESULTS))
    print("\n" + text + f"(details: {out})")


def test_corpus_is_large_and_covers_every_category() -> None:
    assert len(CORPUS) >= 500
    assert set(BY_CATEGORY) >= {
        "alias-bomb", "recursive-alias", "deep-nesting", "huge", "duplicate-key", "tab",
        "control-char", "non-utf8", "bom", "oversized", "envelope", "wrong-type", "number",
        "empty", "multi-doc", "jsonl", "symlink", "directory", "regex", "review",
    }


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_case_is_refused_with_a_located_issue(tmp_path: Path, case: Case) -> None:
    root = _repo(tmp_path, case)
    cpu, wall = time.process_time(), time.perf_counter()
    issues = validate_repository(root)  # never raises for bad content
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    _RESULTS.append({"mode": "in-process", "id": case.id, "cpu_s": round(cpu, 3),
                     "wall_s": round(wall, 3)})
    shown = "\n".join(map(str, issues))
    assert issues, "accepted"
    assert not any("internal error" in i.message for i in issues), shown
    named = [i for i in issues if i.file == case.expect]
    assert named, f"{case.expect} not named:\n{shown}"
    if case.located:
        assert any(i.line is not None and i.line >= 1 for i in named), shown
    assert wall < HANG_GUARD_S


#: Runs the CLI and, at exit, writes the process's own peak RSS (``VmHWM``: this program's
#: memory since exec). ``ru_maxrss`` of a child counts the parent's pages it was forked with
#: (the kernel keeps the pre-exec high-water mark), and a test worker that loaded torch is
#: hundreds of MB: it would measure the worker, not ``validate``.
_PEAK_MARK = "@@peak-kb "
_WRAPPER = (
    "import atexit, runpy, sys\n"
    "def _peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    f"            sys.stderr.write('\\n{_PEAK_MARK}' + line.split()[1] + '\\n')\n"
    "atexit.register(_peak)\n"
    "sys.argv = ['modelsmith', *sys.argv[1:]]\n"
    "runpy.run_module('modelsmith', run_name='__main__', alter_sys=True)\n"
)


def _validate_process(root: Path, out: Path) -> tuple[int, str, float, float, float]:
    """``modelsmith validate`` in a child under RLIMIT_AS: exit code, output, wall and cpu
    seconds (``os.wait4``'s rusage of that child alone), peak RSS in MB (its ``VmHWM``)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ENGINE), *filter(None, [os.environ.get("PYTHONPATH")])])}
    started = time.perf_counter()
    with open(out, "wb") as sink:
        child = subprocess.Popen(
            [sys.executable, "-c", _WRAPPER, "-C", str(root), "validate"],
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            preexec_fn=limit,
        )
    deadline = started + 60
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            child.kill()
            pid, status, usage = os.wait4(child.pid, 0)
            break
        time.sleep(0.01)
    wall = time.perf_counter() - started
    child.returncode = code = os.waitstatus_to_exitcode(status)
    output = out.read_bytes().decode("utf-8", "replace")
    peaks = [line for line in output.splitlines() if line.startswith(_PEAK_MARK)]
    rss = int(peaks[-1][len(_PEAK_MARK):]) / 1024 if peaks else float("inf")
    output = "\n".join(line for line in output.splitlines()
                       if not line.startswith(_PEAK_MARK)).strip() + "\n"
    return code, output, wall, usage.ru_utime + usage.ru_stime, rss


@pytest.mark.parametrize("case_id", SAMPLE)
def test_sample_exits_2_located_and_bounded(tmp_path: Path, case_id: str) -> None:
    case = next(c for c in CORPUS if c.id == case_id)
    root = _repo(tmp_path, case)
    code, output, wall, cpu, rss = _validate_process(root, tmp_path / "output.txt")
    _RESULTS.append({"mode": "subprocess", "id": case.id, "cpu_s": round(cpu, 3),
                     "wall_s": round(wall, 3), "rss_mb": round(rss, 1)})
    assert code == 2, output
    assert "Traceback" not in output and "internal error" not in output, output
    expect = re.escape(case.expect)
    pattern = rf"^{expect}:\d+[:\s]" if case.located else rf"^{expect}[:\s]"
    assert re.search(pattern, output, re.MULTILINE), output
    assert wall < HANG_GUARD_S and rss < RSS_GUARD_MB, (wall, rss)


# --------------------------------------------------------------------------- JSON Schema on RE2


def _criterion(schema: dict[str, object]) -> JsonSchemaCriterion:
    return JsonSchemaCriterion.model_validate({"kind": "json_schema", "schema": schema})


@pytest.mark.parametrize(("schema", "expected"), [
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "(a+)+$"}}}, 0.0),
    # the key does not match, so the integer constraint does not apply
    ({"type": "object", "patternProperties": {"(a+)+$": {"type": "integer"}}}, 1.0),
    ({"type": "object", "patternProperties": {"(a+)+$": {"type": "integer"}},
      "additionalProperties": False}, 0.0),
    ({"type": "object", "patternProperties": {"(a+)+$": {"type": "integer"}},
      "unevaluatedProperties": False}, 0.0),
])
def test_json_schema_patterns_run_in_linear_time(
    schema: dict[str, object], expected: float
) -> None:
    # Python's re takes hours on (a+)+$ against 30 a's and a '!'; RE2 takes microseconds.
    hostile = "a" * 50_000 + "!"
    criterion = _criterion(schema)
    value = {"a": hostile} if "properties" in schema else {hostile: "not an integer"}
    started = time.perf_counter()
    score, reason = score_json_schema(criterion, json.dumps(value), ScoringContext())
    assert time.perf_counter() - started < 5  # a hang guard, not a speed check
    assert score == expected and reason


def test_json_schema_patterns_still_match() -> None:
    criterion = _criterion({"type": "object", "properties": {"id": {"pattern": "^inv-[0-9]+$"}},
                            "patternProperties": {"^x-": {"type": "integer"}},
                            "additionalProperties": False})
    assert score_json_schema(criterion, '{"id": "inv-42", "x-n": 1}', ScoringContext())[0] == 1
    assert score_json_schema(criterion, '{"id": "inv-4a"}', ScoringContext())[0] == 0
    assert score_json_schema(criterion, '{"x-n": "one"}', ScoringContext())[0] == 0
    assert score_json_schema(criterion, '{"other": 1}', ScoringContext())[0] == 0
    # RE2 syntax Python's re lacks is fine too
    letters = _criterion({"type": "string", "pattern": "^\\p{L}+$"})
    assert score_json_schema(letters, '"héllo"', ScoringContext())[0] == 1


def test_python_only_schema_pattern_is_refused_at_its_line(spec_files: Path) -> None:
    suite = spec_files / "evals/rtb-quality/suite.yaml"
    text = suite.read_text()
    suite.write_text(text.replace("      required: true\n", (
        "      required: true\n"
        "    - kind: json_schema\n"
        "      schema:\n"
        "        type: object\n"
        "        properties:\n"
        "          a: {type: string, pattern: '(?<=x)a'}\n"), 1))
    line = text[: text.index("      required: true\n")].count("\n") + 6
    issues = validate_repository(spec_files)
    assert len(issues) == 1, issues
    issue = issues[0]
    assert issue.file == "evals/rtb-quality/suite.yaml" and issue.line == line, issue
    assert issue.field == "spec.rubric[1].schema.properties.a.pattern", issue
    assert "lookbehind" in issue.message
