"""External conformance suites against a real Modelsmith fleet (``./dev conformance``).

Both suites run against the demo repository with the tiny test model as every
specialist's production version (built locally, no hub), served by the real CLI on
127.0.0.1 with an ephemeral port:

``mcp``     ``modelsmith mcp --transport streamable-http`` under the MCP conformance suite
            (npm ``@modelcontextprotocol/conformance``, its active server scenarios). The
            scenarios we are expected to fail, with why, are in
            ``conformance/mcp-expected-failures.yml`` (the suite's own baseline format).
``openai``  ``modelsmith serve`` under the ``openai`` package's own generated chat
            completion tests (vendored in ``conformance/openai``, see its NOTICE), their
            ``TEST_API_BASE_URL`` pointed at the server. The tests we are expected to fail,
            with why, are in ``conformance/openai-expected-failures.txt``.

Exit 0 when every result matches its list: 1 when a test fails that is not listed, or a
listed one now passes (the list must stay honest). ``--update`` rewrites the lists from
this run instead, and exits 0: for MCP the reasons of scenarios still failing are kept
(they are written by hand), new ones get the failure's message to be edited; for OpenAI
every reason is the failure's message from this run.

Usage: python conformance/run.py [mcp|openai|all] [--update] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MCP_PACKAGE = "@modelcontextprotocol/conformance@0.1.16"
MCP_PREFIX = ROOT / ".venv" / "conformance"
MCP_CLI = MCP_PREFIX / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" \
    / "index.js"
MCP_EXPECTED = HERE / "mcp-expected-failures.yml"
OPENAI_DIR = HERE / "openai"
OPENAI_TESTS = "tests/api_resources/chat/test_completions.py"
OPENAI_EXPECTED = HERE / "openai-expected-failures.txt"
DEMO_PARTS = ("specialists", "evals", "policies", "config")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", nargs="?", choices=["mcp", "openai", "all"], default="all")
    parser.add_argument("--update", action="store_true",
                        help="rewrite the expected-failure lists from this run")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (fleet, logs, results)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="modelsmith-conformance-"))
    try:
        repo = make_fleet(work)
        ok = True
        if args.suite in ("mcp", "all"):
            ok &= run_mcp(repo, work, update=args.update)
        if args.suite in ("openai", "all"):
            ok &= run_openai(repo, work, update=args.update)
    finally:
        if args.keep:
            print(f"conformance: work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


# -- the fleet ------------------------------------------------------------------------------


def make_fleet(work: Path) -> Path:
    """The demo's specs in a fresh git repository, every specialist with the tiny test
    model registered as v1 and promoted to production."""
    import pygit2

    from modelsmith.artifacts.models import resolve_model
    from modelsmith.events.gitstore import GitEventStore
    from modelsmith.events.types import CandidateRegistered, Event, Lineage, Promoted
    from modelsmith.specs import load_repository

    os.environ["MODELSMITH_CACHE"] = str(work / "cache")
    root = work / "repo"
    for part in DEMO_PARTS:
        shutil.copytree(ROOT / part, root / part)
    pygit2.init_repository(str(root))
    repo = load_repository(root)
    tiny = resolve_model("tiny-test", repo.clusters, progress=lambda _m: None).path
    store = GitEventStore(root)
    for name in sorted(repo.specialists):
        shutil.copytree(tiny, root / "models" / name / "v1")
        store.append(name, [Event.new(p, actor="conformance") for p in (
            CandidateRegistered(version="v1", lineage=Lineage(base_model="tiny-test")),
            Promoted(version="v1", stage="production"))], 0)
    print(f"conformance: fleet {', '.join(sorted(repo.specialists))} (v1 = tiny-test, "
          "production)")
    return root


class Served:
    """``modelsmith -C repo ARGS...`` in its own process, until the line its stderr prints
    once it listens (``pattern``'s group 1 is the URL); SIGTERM on exit."""

    def __init__(self, repo: Path, args: list[str], pattern: str, log: Path) -> None:
        self.log = log
        # The suites send no token of ours: a token set in this shell is not the server's.
        env = {k: v for k, v in os.environ.items()
               if k not in ("MODELSMITH_SERVE_TOKEN", "MODELSMITH_MCP_TOKEN")}
        self.proc = subprocess.Popen([sys.executable, "-m", "modelsmith", "-C", str(repo),
                                      *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env)
        ready = threading.Event()
        self.url: str | None = None

        def read() -> None:
            assert self.proc.stderr is not None
            with log.open("w") as out:
                for line in self.proc.stderr:
                    out.write(line)
                    out.flush()
                    found = re.search(pattern, line)
                    if found and self.url is None:
                        self.url = found.group(1)
                        ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(300) or self.url is None:
            self.stop()
            raise SystemExit(f"conformance: `modelsmith {' '.join(args)}` did not start:\n"
                             f"{log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def compare(name: str, failed: dict[str, str], passed: set[str],
            expected: dict[str, str]) -> bool:
    """Print the verdict of one suite; whether every result matches the list."""
    unexpected = sorted(set(failed) - set(expected))
    stale = sorted(set(expected) & passed)
    missing = sorted(set(expected) - set(failed) - passed)
    print(f"conformance {name}: {len(passed)} passed, {len(failed)} failed "
          f"({len(set(failed) & set(expected))} expected), {len(unexpected)} unexpected "
          f"failures, {len(stale)} expected failures now passing")
    for test in unexpected:
        print(f"  UNEXPECTED FAILURE {test}: {failed[test]}")
    for test in stale:
        print(f"  NOW PASSES (remove it from the list) {test}")
    for test in missing:  # renamed upstream, or deselected: not a failure of ours
        print(f"  not run (listed as expected to fail) {test}")
    return not unexpected and not stale


# -- MCP ------------------------------------------------------------------------------------


def read_mcp_expected() -> dict[str, str]:
    """``scenario: reason`` from the baseline: ``  - scenario  # reason`` lines."""
    expected = {}
    if MCP_EXPECTED.exists():
        for line in MCP_EXPECTED.read_text().splitlines():
            found = re.match(r"\s*-\s*([\w.-]+)\s*(?:#\s*(.*))?$", line)
            if found:
                expected[found.group(1)] = (found.group(2) or "").strip()
    return expected


def write_mcp_expected(failed: dict[str, str], old: dict[str, str]) -> None:
    lines = ["# MCP conformance scenarios `modelsmith mcp --transport streamable-http` is",
             "# expected to fail, with why (the suite's --expected-failures format; the",
             "# comment is the reason). Regenerate: ./dev conformance mcp --update",
             "server:"]
    lines += [f"  - {s}  # {old.get(s) or failed[s]}" for s in sorted(failed)]
    MCP_EXPECTED.write_text("\n".join(lines) + "\n")
    print(f"conformance mcp: wrote {len(failed)} expected failures to {MCP_EXPECTED}")


def mcp_cli() -> list[str] | None:
    if shutil.which("node") is None or (not MCP_CLI.exists() and shutil.which("npm") is None):
        print("conformance mcp: the MCP suite runs under Node.js (20 or later): install node "
              "and npm")
        return None
    if not MCP_CLI.exists():
        subprocess.run(["npm", "install", "--silent", "--prefix", str(MCP_PREFIX),
                        MCP_PACKAGE], check=True, stdout=subprocess.DEVNULL)
    # Node < 22 lacks fs.globSync, which the suite imports (for another command).
    return ["node", "--import", (HERE / "node20-fs.mjs").as_uri(), str(MCP_CLI)]


def run_mcp(repo: Path, work: Path, *, update: bool) -> bool:
    cli = mcp_cli()
    if cli is None:
        return False
    results = work / "mcp-results"
    results.mkdir()
    with Served(repo, ["mcp", "--transport", "streamable-http", "--port", "0"],
                r"serving MCP on (\S+)", work / "mcp-server.log") as served:
        run = subprocess.run([*cli, "server", "--url", str(served.url), "-o",
                              str(results)], cwd=work,
                             capture_output=True, text=True, timeout=1200)
    (work / "mcp-suite.log").write_text(run.stdout + run.stderr)
    failed, passed = {}, set()
    for checks in sorted(results.glob("server-*/checks.json")):
        scenario = re.sub(r"^server-(.*)-\d{4}-\d\d-\d\dT.*$", r"\1", checks.parent.name)
        bad = [c for c in json.loads(checks.read_text()) if c.get("status") == "FAILURE"]
        if bad:
            failed[scenario] = "; ".join(
                f"{c.get('id')}: {c.get('errorMessage') or c.get('description')}"
                for c in bad)[:300].replace("\n", " ")
        else:
            passed.add(scenario)
    if not failed and not passed:
        print(f"conformance mcp: the suite produced no results (exit {run.returncode}):\n"
              f"{run.stdout[-3000:]}{run.stderr[-3000:]}")
        return False
    expected = read_mcp_expected()
    if update:
        write_mcp_expected(failed, expected)
        return True
    return compare("mcp", failed, passed, expected)


# -- OpenAI ---------------------------------------------------------------------------------


def read_openai_expected() -> dict[str, str]:
    """``test id: reason`` from ``TEST_ID  REASON`` lines (``#`` starts a comment)."""
    expected = {}
    if OPENAI_EXPECTED.exists():
        for line in OPENAI_EXPECTED.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                test, _, reason = line.strip().partition(" ")
                expected[test] = reason.strip()
    return expected


def write_openai_expected(failed: dict[str, str]) -> None:
    lines = ["# The openai package's chat completion tests (conformance/openai, see its NOTICE)",
             "# that `modelsmith serve` is expected to fail: TEST_ID REASON, one a line; the",
             "# reason is the failure as this server gave it. Test ids are relative to",
             f"# conformance/openai/{OPENAI_TESTS}. Why, by kind:",
             "# - create (sync and async, plain, raw, streaming, all params): the tests send",
             "#   model gpt-5.4 (not a specialist: a specialist's name is its model) and only a",
             "#   developer message (a specialist answers the user's text), the all-params tests",
             "#   fields a specialist has no use for (audio, tools, functions, logprobs, ...).",
             "# - retrieve, update, list, delete: stored completions are not offered.",
             "# What passes are the client-side path checks (an empty completion id).",
             "# Regenerate: ./dev conformance openai --update"]
    lines += [f"{t} {failed[t]}" for t in sorted(failed)]
    OPENAI_EXPECTED.write_text("\n".join(lines) + "\n")
    print(f"conformance openai: wrote {len(failed)} expected failures to {OPENAI_EXPECTED}")


def _reason(case: Any) -> str:
    """A failed test's message, one short line (the server's error message kept)."""
    node = case.find("failure")
    if node is None:
        node = case.find("error")
    text = (node.get("message") or node.text or "").strip()
    text = re.sub(r"\s+", " ", text.split("\n\n")[0])
    return text[:240]


def run_openai(repo: Path, work: Path, *, update: bool) -> bool:
    report = work / "openai-junit.xml"
    with Served(repo, ["serve", "--port", "0"], r"serving on (\S+/v1)",
                work / "openai-server.log") as served:
        env = {**os.environ, "TEST_API_BASE_URL": str(served.url)}
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
                              "-o", "junit_family=xunit2", f"--junitxml={report}",
                              OPENAI_TESTS], cwd=OPENAI_DIR, env=env, capture_output=True,
                             text=True, timeout=1800)
    (work / "openai-tests.log").write_text(run.stdout + run.stderr)
    if not report.exists():
        print(f"conformance openai: pytest wrote no report (exit {run.returncode}):\n"
              f"{run.stdout[-3000:]}{run.stderr[-3000:]}")
        return False
    failed, passed = {}, set()
    for case in ET.parse(report).iter("testcase"):
        test = f"{case.get('classname', '').rpartition('.')[2]}::{case.get('name')}"
        if case.find("skipped") is not None:
            continue
        if case.find("failure") is not None or case.find("error") is not None:
            failed[test] = _reason(case)
        else:
            passed.add(test)
    expected = read_openai_expected()
    if update:
        write_openai_expected(failed)
        return True
    return compare("openai", failed, passed, expected)


if __name__ == "__main__":
    sys.exit(main())
