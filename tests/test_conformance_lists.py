"""The checked-in expected-failure lists of ``./dev conformance`` (conformance/run.py)
stay readable and point at real things: every MCP scenario has a reason, every OpenAI
test id names a test of the vendored suite, and the runner's verdict fails on an
unexpected failure and on a listed test that passes. The suites themselves run in
``./dev conformance`` (Node, two servers, a minute), not here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _runner():
    spec = importlib.util.spec_from_file_location("conformance_run",
                                                  ROOT / "conformance" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_expected_mcp_failure_has_a_reason():
    expected = _runner().read_mcp_expected()
    assert len(expected) >= 10 and "server-initialize" not in expected
    assert all(reason for reason in expected.values()), \
        [s for s, r in expected.items() if not r]


def test_every_expected_openai_failure_names_a_vendored_test():
    pytest.importorskip("openai")
    run = _runner()
    expected = run.read_openai_expected()
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", run.OPENAI_TESTS],
        cwd=run.OPENAI_DIR, capture_output=True, text=True, timeout=120)
    ids = {line.split(".py::", 1)[1] for line in collected.stdout.splitlines()
           if ".py::" in line}
    assert len(ids) > len(expected) > 0, collected.stdout[-2000:] + collected.stderr[-2000:]
    assert set(expected) <= ids, sorted(set(expected) - ids)
    assert all(reason for reason in expected.values())


def test_the_verdict_fails_on_surprises_both_ways(capsys):
    compare = _runner().compare
    listed = {"a": "why", "b": "why"}
    assert compare("x", {"a": "boom", "b": "boom"}, {"c"}, listed)
    assert not compare("x", {"a": "boom", "b": "boom", "c": "new"}, set(), listed)
    assert not compare("x", {"a": "boom"}, {"b", "c"}, listed)
    out = capsys.readouterr().out
    assert "UNEXPECTED FAILURE c: new" in out and "NOW PASSES (remove it from the list) b" in out
