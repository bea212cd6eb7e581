"""`modelsmith doctor`: a healthy fork passes every check; each broken part is one failing
line with its fix, later checks that depend on it are skipped, and the exit code says so."""

from __future__ import annotations

import json

from click.testing import CliRunner

from modelsmith.cli import cli


def doctor(repo, *args):
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["-C", str(repo), "doctor", *args])
    return result


def test_a_healthy_fork_passes_every_check(train_repo):
    result = doctor(train_repo, "--model", "tiny-test", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and [c["name"] for c in report["checks"]] == [
        "specs", "event log", "review", "host local", "dvc remote", "ml stack", "generation",
        "eval"]
    assert all(c["ok"] for c in report["checks"])
    assert "10 scenarios per split" in report["checks"][-1]["detail"]
    text = doctor(train_repo, "--model", "tiny-test").output
    assert text.splitlines()[-1] == "all 8 checks passed"


def test_invalid_specs_fail_with_the_fix_and_skip_the_rest(train_repo):
    spec = train_repo / "specialists" / "rtb-quality.yaml"
    spec.write_text(spec.read_text().replace("composite: 0.9", "composite: 7"))
    result = doctor(train_repo)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith("FAIL specs: 1 problems, first: specialists/rtb-quality.yaml:")
    assert lines[1] == "     fix: run `modelsmith validate` and fix each line it names"
    assert all(line.startswith("skip ") for line in lines[2:-1])


def test_a_host_that_is_down_is_named_with_its_fix(train_repo, silent_port):
    clusters = train_repo / "config" / "clusters.json"
    config = json.loads(clusters.read_text())
    config["hosts"]["gpu-box"] = {"kind": "ssh", "address": f"127.0.0.1:{silent_port}"}
    config["defaults"]["training_hosts"] = ["gpu-box", "local"]
    config["thresholds"]["probe_timeout_s"] = 1
    clusters.write_text(json.dumps(config))
    result = doctor(train_repo, "--no-model")
    assert result.exit_code == 1
    assert "FAIL host gpu-box: ssh down: no answer within 1 s" in result.output
    assert f"fix: check `ssh 127.0.0.1:{silent_port}` works without a password" in result.output
    assert "ok   host local: local up" in result.output
    assert "skip generation: skipped: --no-model" in result.output
    assert result.output.splitlines()[-1] == "1 of 9 checks failed"


def test_a_held_promotion_is_a_failing_check_with_its_fix(train_repo):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(train_repo), "-c", "user.name=t", "-c",
                        "user.email=t@example.invalid", *args], check=True,
                       capture_output=True)

    git("add", "-A")
    git("commit", "-qm", "the fork")
    (train_repo / "evals" / "README.md").write_text("unreviewed\n")
    git("add", "-A")
    git("commit", "-qm", "notes, straight onto main")
    result = doctor(train_repo, "--no-model", "--json")
    (check,) = [c for c in json.loads(result.stdout)["checks"] if c["name"] == "review"]
    assert check["ok"] is False and "evals/README.md" in check["detail"]
    assert "review.since" in check["fix"]
