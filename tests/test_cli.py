"""The `modelsmith` command on real git repositories: read commands, --json, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pygit2
import pytest
from click.testing import CliRunner

from conftest import REPO_ROOT as ROOT
from modelsmith.cli import cli
from modelsmith.events import Event
from modelsmith.events.gitstore import EVENTS_REF, GitEventStore
from modelsmith.events.types import CandidateRegistered, EvalCompleted, Lineage, Promoted
from openai_fake import FakeOpenAI, completion


def run(*args: str, repo: Path | None = None):
    argv = (["-C", str(repo)] if repo else []) + list(args)
    # Rich sizes tables to the terminal; give the tables room so cells are not cut.
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, argv, catch_exceptions=False)


def _record_story(path: Path) -> GitEventStore:
    store = GitEventStore(path)
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    steps = [
        CandidateRegistered(version="v1", lineage=Lineage(base_model="smollm2-135m")),
        EvalCompleted(version="v1", model="v1", suite="rtb-quality", suite_hash="h", run_id="e1",
                      composite=0.93),
        Promoted(version="v1", stage="canary", traffic=0.1),
        Promoted(version="v1", stage="production"),
    ]
    for i, payload in enumerate(steps):
        store.append("rtb-quality", [Event.new(payload, actor="human:ana", cause=f"pr#{i}",
                                               at=t0 + timedelta(hours=i))], i)
    return store


def test_validate_the_demo_repository():
    result = run("validate", str(ROOT))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 1 specialist,")


def test_validate_json_lists_every_error(demo_repo):
    spec = demo_repo / "specialists" / "rtb-quality.yaml"
    spec.write_text(spec.read_text().replace("composite: ", "composite: 7 #"))
    (demo_repo / "config" / "clusters.json").write_text('{"hosts": ')
    result = run("validate", "--json", repo=demo_repo)
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    files = {e["file"] for e in report["errors"]}
    assert report["ok"] is False
    assert {"specialists/rtb-quality.yaml", "config/clusters.json"} <= files
    assert all(e["line"] for e in report["errors"] if e["file"] == "config/clusters.json")


def test_validate_refuses_references_that_fail_their_rubric(demo_repo):
    scenarios = demo_repo / "evals" / "rtb-quality" / "scenarios.jsonl"
    line = len(scenarios.read_text().splitlines()) + 1
    with scenarios.open("a") as fh:
        fh.write(json.dumps({"id": "rtb-odd", "input": "domain=odd.example ctr=9%",
                             "expected": "ACCEPT",
                             "rubric": [{"kind": "regex", "pattern": "^REJECT$"}]}) + "\n")
    invoice = demo_repo / "evals" / "invoice"
    invoice.mkdir()
    (invoice / "suite.yaml").write_text(
        "apiVersion: modelsmith/v1\nkind: EvalSuite\nmetadata: {name: invoice}\nspec:\n"
        "  scenarios: [s.jsonl]\n  rubric:\n    - {kind: json_field, path: $.vendor}\n"
        "    - {kind: json_field, path: total}\n")
    (invoice / "s.jsonl").write_text(
        '{"id": "i-1", "input": "Acme, 3 EUR", "expected": {"vendor": "Acme", "total": 3}}\n'
        '{"id": "i-2", "input": "Bolt, 4 EUR", "expected": {"vendor": "Bolt"}}\n')
    proc = subprocess.run([sys.executable, "-m", "modelsmith", "validate"], cwd=demo_repo,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.splitlines() == [
        "evals/invoice/s.jsonl:2: expected: the reference answer scores 0 on "
        "evals/invoice/suite.yaml spec.rubric[1] (json_field 'total'): the expected value "
        "has no 'total'",
        f"evals/rtb-quality/scenarios.jsonl:{line}: expected: the reference answer scores 0 "
        "on rubric[0] (regex /^REJECT$/): no match for /^REJECT$/",
        f"2 errors in {demo_repo.resolve()}",
    ]
    result = run("validate", "--json", repo=demo_repo)
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [(e["file"], e["line"], e["field"]) for e in report["errors"]] == [
        ("evals/invoice/s.jsonl", 2, "expected"),
        ("evals/rtb-quality/scenarios.jsonl", line, "expected"),
    ]


def test_status_log_history_on_an_empty_log(demo_repo):
    result = run("status", "--json", repo=demo_repo)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["events"] == 0
    assert [s["name"] for s in data["specialists"]] == ["rtb-quality"]
    assert run("log", repo=demo_repo).output.strip() == "no events"
    assert "no stage assignments" in run("history", "rtb-quality", repo=demo_repo).output
    assert run("verify", repo=demo_repo).output.startswith("ok: 0 events")


def test_status_shows_the_folded_fleet(demo_repo):
    _record_story(demo_repo)
    data = json.loads(run("status", "--json", repo=demo_repo).stdout)
    (row,) = data["specialists"]
    assert row["production"]["version"] == "v1"
    assert row["canary"] is None
    assert row["latest_candidate"] == {"version": "v1", "composite": 0.93, "evaluations": 1}
    assert row["desired"] == {"production": None, "canary": None, "shadow": None}
    table = run("status", repo=demo_repo).output
    assert "rtb-quality" in table and "v1 → -" in table  # actual differs from desired


def test_log_and_history(demo_repo):
    _record_story(demo_repo)
    out = run("log", "rtb-quality", repo=demo_repo).output.splitlines()
    assert len(out) == 4 and "Promoted rtb-quality#4 v1 -> production" in out[-1]
    assert "(pr#3)" in out[-1]
    data = json.loads(run("log", "--json", "-n", "2", "--type", "Promoted",
                          repo=demo_repo).stdout)
    assert [e["seq"] for e in data] == [3, 4]
    hist = json.loads(run("history", "rtb-quality", "--json", repo=demo_repo).stdout)
    assert [(a["stage"], a["version"], a["until"] is None) for a in hist["assignments"]] == [
        ("canary", "v1", False), ("production", "v1", True)]
    assert "production" in run("history", "rtb-quality", repo=demo_repo).output


def test_verify_fails_and_names_the_commit_on_a_rewritten_log(demo_repo):
    store = _record_story(demo_repo)
    repo = store.repo
    tip = repo[repo.references[EVENTS_REF].target]
    parent = tip.parents[0]
    # Amend the second-to-last event and put the last one back on top of it.
    amended = repo.create_commit(None, parent.author, parent.committer,
                                 parent.message.replace("canary", "production"),
                                 parent.tree_id, [parent.parents[0].id])
    moved = repo.create_commit(None, tip.author, tip.committer, tip.message, tip.tree_id,
                               [amended])
    repo.references.create(EVENTS_REF, moved, force=True)
    result = run("verify", repo=demo_repo)
    assert result.exit_code == 1
    assert str(moved) in result.output
    report = json.loads(run("verify", "--json", repo=demo_repo).stdout)
    assert report["ok"] is False and any(p["where"] == str(moved) for p in report["problems"])


def test_read_commands_outside_git_fail_cleanly(tmp_path):
    result = CliRunner().invoke(cli, ["-C", str(tmp_path), "status"])
    assert result.exit_code == 1
    assert "not a git repository" in result.output
    assert "Traceback" not in result.output


def test_schema_writes_one_file_per_kind(tmp_path):
    result = run("schema", "--out", str(tmp_path / "schema"))
    assert result.exit_code == 0
    names = sorted(p.name for p in (tmp_path / "schema").iterdir())
    assert "Specialist.schema.json" in names and "EvalSuite.schema.json" in names
    printed = json.loads(run("schema").stdout)
    assert "Specialist" in printed


def _modules_loaded(*argv: str, cwd: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['modelsmith', *{list(argv)!r}]\n"
        "try:\n    runpy.run_module('modelsmith', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('MODULES', ' '.join(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('torch','transformers','trl','dvc','mcp','vllm','ray'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MODULES")][-1]
    return proc, set(line.split()[1:])


@pytest.mark.parametrize("argv", [("--help",), ("validate",), ("status",)])
def test_control_plane_commands_stay_light(argv, demo_repo):
    proc, heavy = _modules_loaded(*argv, cwd=demo_repo)
    assert heavy == set(), proc.stderr


def test_python_dash_m_is_the_same_command(demo_repo):
    a = subprocess.run([sys.executable, "-m", "modelsmith", "validate", "--json"],
                       cwd=demo_repo, capture_output=True, text=True)
    script = str(Path(sys.executable).with_name("modelsmith"))
    b = subprocess.run([script, "validate", "--json"],
                       cwd=demo_repo, capture_output=True, text=True)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout
    helps = [subprocess.run([*cmd, "--help"], capture_output=True, text=True).stdout
             for cmd in ([sys.executable, "-m", "modelsmith"], [script])]
    assert helps[0] == helps[1] and "Usage: modelsmith" in helps[0]


def _laughs() -> str:
    lines = ["  l0: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """One tiny-model build shared by this module's tests."""
    return tmp_path_factory.mktemp("model-cache")


SPEC = "specialists/rtb-quality.yaml"
# Each case: the file, how to break it, and where the message points (an alias bomb: at the
# alias whose expansion passes the budget).
HOSTILE = {
    "alias-bomb": (SPEC, lambda t: t.split("spec:")[0] + "spec:\n" + _laughs(), ":14:"),
    "duplicate-key": (SPEC, lambda t: t.replace("  base:", "  base: x\n  base:"), ":14:"),
    "tab": (SPEC, lambda t: t.replace("  base:", "\tbase:"), ":13:"),
    "non-utf8": (SPEC, lambda t: t.replace("Accept", "Acc\udcffept"), ":10:"),
    "wrong-api": (SPEC, lambda t: t.replace("modelsmith/v1", "modelsmith/v9"), ":2:"),
    "name-with-dots": (SPEC, lambda t: t.replace("name: rtb-quality", "name: ../rtb"), ":5:"),
    "broken-jsonl": ("evals/rtb-quality/scenarios.jsonl",
                     lambda t: t.replace("\n", "\n{\"id\": oops\n", 1), ":2:"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_validate_hostile_files_exit_2_with_location_and_no_traceback(case, demo_repo):
    file, mutate, where = HOSTILE[case]
    path = demo_repo / file
    text = path.read_text()
    path.write_bytes(mutate(text).encode("utf-8", "surrogateescape"))
    proc = subprocess.run([sys.executable, "-m", "modelsmith", "validate"], cwd=demo_repo,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"{file}{where}" in proc.stderr, proc.stderr


def test_validate_a_50_mb_file_exits_2(demo_repo):
    path = demo_repo / "evals" / "rtb-quality" / "scenarios.jsonl"
    with open(path, "ab") as fh:
        fh.truncate(50 * 1024 * 1024)
    proc = subprocess.run([sys.executable, "-m", "modelsmith", "validate"], cwd=demo_repo,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "scenarios.jsonl" in proc.stderr and "too large" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_demo_runs_on_a_scratch_fork_and_leaves_the_repo_alone(tmp_path, model_cache,
                                                              monkeypatch):
    monkeypatch.setenv("MODELSMITH_CACHE", str(model_cache))
    def events_tip():
        found = pygit2.discover_repository(str(ROOT))
        ref = pygit2.Repository(found).references.get(EVENTS_REF) if found else None
        return ref.target if ref else None

    before = events_tip()
    dest = tmp_path / "demo"
    result = run("demo", "--dir", str(dest), "--eval-only", "--limit", "3", repo=ROOT)
    assert result.exit_code == 0, result.output
    assert "ok: 1 specialist," in result.output and "ok: 2 events" in result.output
    assert "EvalCompleted rtb-quality#2 tiny-test" in result.output
    assert "rtb-quality" in result.output
    fork = pygit2.Repository(str(dest))
    assert fork.head.shorthand == "main" and not fork.status()
    assert events_tip() == before
    again = run("demo", "--dir", str(dest), repo=ROOT)
    assert again.exit_code == 1 and "not empty" in again.output


@pytest.mark.parametrize("message", ["just a note\n", "x\n\n{not json}\n\nEvent-Id: abcdefgh1\n"
                                     "Stream: rtb-quality\n"])
def test_a_foreign_commit_on_the_log_gives_a_clear_error(demo_repo, message):
    store = _record_story(demo_repo)
    repo = store.repo
    tip = repo.references[EVENTS_REF].target
    sig = pygit2.Signature("x", "x@example.com")
    bad = repo.create_commit(EVENTS_REF, sig, sig, message, repo.TreeBuilder().write(), [tip])
    for argv in (["status"], ["log"], ["history", "rtb-quality"]):
        proc = subprocess.run([sys.executable, "-m", "modelsmith", *argv], cwd=demo_repo,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, (argv, proc.stdout, proc.stderr)
        assert str(bad) in proc.stderr and "modelsmith verify" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_read_commands_work_when_the_cache_cannot_be_written(demo_repo):
    _record_story(demo_repo)
    # A file where the cache folder should be: every cache write fails, even as root.
    (demo_repo / ".git" / "modelsmith").write_text("not a folder")
    for argv in (["status", "--json"], ["log"], ["history", "rtb-quality"], ["verify"]):
        result = run(*argv, repo=demo_repo)
        assert result.exit_code == 0, (argv, result.output)
    assert json.loads(run("status", "--json", repo=demo_repo).stdout)["events"] == 4


def test_eval_on_the_tiny_model_records_an_evaluation(demo_repo, model_cache, monkeypatch):
    monkeypatch.setenv("MODELSMITH_CACHE", str(model_cache))
    result = run("eval", "rtb-quality", "--model", "tiny-test", "--limit", "6", "--json",
                 repo=demo_repo)
    # A randomly initialised model cannot meet the target: exit 3, not an error.
    assert result.exit_code == 3, result.output
    data = json.loads(result.stdout)
    assert data["model"] == "tiny-test" and data["meets"] is False and data["event_id"]
    assert data["report"]["n_core"] == 6 and data["report"]["n_heldout"] == 6
    log = run("log", "rtb-quality", repo=demo_repo).output
    assert "EvalStarted" in log and "EvalCompleted rtb-quality#2 tiny-test composite=" in log
    md = run("eval", "rtb-quality", "--model", "tiny-test", "--limit", "2", "--markdown",
             "--no-record", "--min-composite", "0", repo=demo_repo)
    assert md.exit_code == 0 and "| **composite** |" in md.output
    assert len(list(GitEventStore(demo_repo).read("rtb-quality"))) == 2


def test_eval_errors_are_clear(demo_repo, model_cache, monkeypatch):
    monkeypatch.setenv("MODELSMITH_CACHE", str(model_cache))
    for argv, text in ((["eval", "nope"], "no specialist 'nope'"),
                       (["eval", "rtb-quality", "--model", "v3"], "no candidate v3"),
                       (["eval", "rtb-quality", "--model", "no-such-profile/x"], "")):
        result = CliRunner().invoke(cli, ["-C", str(demo_repo), *argv])
        assert result.exit_code in (1, 2), (argv, result.output)
        assert text in result.output and "Traceback" not in result.output


def test_compare_two_recorded_evaluations(demo_repo, model_cache, monkeypatch):
    monkeypatch.setenv("MODELSMITH_CACHE", str(model_cache))
    for _ in range(2):
        assert run("eval", "rtb-quality", "--model", "tiny-test", "--min-composite", "0",
                   repo=demo_repo).exit_code == 0
    events = [e for e in GitEventStore(demo_repo).read("rtb-quality")
              if e.type == "EvalCompleted"]
    a, b = events[0].id, events[1].id
    data = json.loads(run("compare", "rtb-quality", a, b, "--json", repo=demo_repo).stdout)
    # Greedy decoding is deterministic: the same model twice differs by nothing.
    assert data["verdict"] == "inconclusive" and data["diff"] == 0 and data["n"] == 320
    text = run("compare", "rtb-quality", "tiny-test", b, repo=demo_repo).output
    assert "verdict: inconclusive" in text


def test_lineage_names_every_input(demo_repo):
    store = GitEventStore(demo_repo)
    lineage_in = Lineage(base_model="smollm2-135m", parent="v1", dataset_hash="d" * 32,
                         suite_hash="s" * 64, config_hash="c" * 64,
                         trainer_versions={"trl": "1.16.0"}, run_id="r7", host="local",
                         duration_s=412.5, weights_hash="w" * 32)
    store.append("rtb-quality", [
        Event.new(CandidateRegistered(version="v2", lineage=lineage_in), actor="loop"),
        Event.new(EvalCompleted(version="v2", model="v2", suite="rtb-quality",
                                suite_hash="s" * 64, run_id="e", composite=0.93, heldout=0.91),
                  actor="loop"),
    ], 0)
    data = json.loads(run("lineage", "rtb-quality", "v2", "--json", repo=demo_repo).stdout)
    assert data["lineage"] == lineage_in.model_dump()
    assert data["evaluations"][0]["composite"] == 0.93
    text = run("lineage", "rtb-quality", "v2", repo=demo_repo).output
    for value in ("d" * 32, "s" * 64, "c" * 64, "w" * 32, "trl=1.16.0", "v1"):
        assert value in text
    missing = run("lineage", "rtb-quality", "v9", repo=demo_repo)
    assert missing.exit_code == 1 and "candidates: v2" in missing.output


def test_the_demo_runs_the_iterate_loop_and_shows_the_score_history(tmp_path, model_cache,
                                                                      monkeypatch):
    monkeypatch.setenv("MODELSMITH_CACHE", str(model_cache))
    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", str(tmp_path / "remote"))
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))
    dest = tmp_path / "demo"
    # The demo's loop, cut to one short iteration (the full one is measured in the README).
    result = run("demo", "--dir", str(dest), "--max-iterations", "1", "--profile", "cpu-tiny",
                 repo=ROOT)
    assert result.exit_code == 0, result.output
    assert "the iterate loop on rtb-quality from tiny-test" in result.output
    assert "rtb-quality: budget: budget of 1 iterations spent" in result.output
    assert "| 1 | v1 |" in result.output
    assert f"score history plot: {dest}/.iterate/rtb-quality/scores.svg" in result.output
    assert "CandidateRegistered rtb-quality#" in result.output
    assert "ok: 9 events" in result.output and "run it again to go on" in result.output


def test_the_demo_evaluates_a_frontier_baseline_on_the_same_suite(tmp_path, model_cache,
                                                                   monkeypatch):
    monkeypatch.setenv("MODELSMITH_CACHE", str(model_cache))
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    frontier = FakeOpenAI()
    # A frontier model that reads the policy: reject low click-through and blocked domains
    # badly enough to be beaten, well enough to be a baseline -- here it always accepts.
    frontier.responder = lambda body: (200, completion("ACCEPT"), {})
    monkeypatch.setenv("OPENAI_BASE_URL", frontier.base_url)
    dest = tmp_path / "demo"
    try:
        result = CliRunner().invoke(cli, ["-C", str(ROOT), "demo", "--dir", str(dest),
                                          "--until", "zero-shot",
                                          "--baseline", "openai:frontier"])
    finally:
        frontier.close()
    assert result.exit_code == 0, result.output
    assert "the frontier baseline openai:frontier on the same suite" in result.output
    evals = [e.data for e in GitEventStore(dest).read("rtb-quality")
             if e.type == "EvalCompleted"]
    assert [e["model"] for e in evals] == ["tiny-test", "openai:frontier"]
    assert evals[0]["suite_hash"] == evals[1]["suite_hash"]
    assert evals[1]["backend"] == "openai" and evals[1]["composite"] > evals[0]["composite"]
    assert len(frontier.calls) >= 520  # every scenario (and its variants) went to it
    assert json.loads(json.dumps(evals[1]))["dev_n"] == 100
