"""The crash test: ``modelsmith iterate`` on the tiny model is killed with SIGKILL at every
phase boundary of both iterations and in the middle of its evaluations and trainings; each
run of the same command resumes, and the final log holds the same events as an
uninterrupted run with the same seed -- none twice, none missing -- and the same final
candidate (the same weights, byte for byte)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from modelsmith.events.gitstore import GitEventStore
from modelsmith.iterate.loop import FAILPOINT_ENV
from modelsmith.iterate.state import StateFile

COMMAND = ["iterate", "rtb-quality", "--model", "tiny-test", "--profile", "cpu-tiny",
           "--max-iterations", "2", "--target", "0.99", "--json"]
BOUNDARIES = ("eval", "extract", "generate", "validate", "train", "reeval", "decide")


@pytest.fixture
def forks(train_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", str(tmp_path / "remote"))
    twin = tmp_path / "twin"
    shutil.copytree(train_repo, twin)
    return train_repo, twin


def loop(repo: Path, *, kill_after: str | None = None,
         kill_when: tuple[str, int] | None = None) -> tuple[int, list[dict]]:
    """Run the loop; SIGKILL it after a phase (a failpoint) or once it reports progress in
    the middle of ``(phase, iteration)``. Returns the exit status and the JSON lines."""
    env = {**os.environ, FAILPOINT_ENV: kill_after or ""}
    process = subprocess.Popen([sys.executable, "-m", "modelsmith", "-C", str(repo), *COMMAND],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env=env)
    lines = []
    assert process.stdout is not None
    for raw in process.stdout:
        line = json.loads(raw)
        lines.append(line)
        if kill_when and line["event"] == "progress" and line["done"] \
                and (line["phase"], line["iteration"]) == kill_when \
                and line["done"] < line["total"]:
            process.kill()
            break
    return process.wait(timeout=600), lines


def history(repo: Path) -> list[tuple[str, str, str | None]]:
    """(type, iteration/phase, version) of each event: what a replay must not change."""
    return [(e.type, e.actor.split("/", 2)[2], e.data.get("version"))
            for e in GitEventStore(repo).read("rtb-quality")]


def started_not_finished(repo: Path, started: str, finished: str) -> bool:
    kinds = [e.type for e in GitEventStore(repo).read("rtb-quality")]
    return kinds.count(started) > kinds.count(finished)


def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_result(forks):
    crashed, clean = forks
    code, lines = loop(clean)
    assert code == 3 and lines[-1]["reason"] == "budget", lines[-1]
    expected = history(clean)

    kills = 0
    for iteration in (1, 2):
        for phase in BOUNDARIES:
            if (phase, iteration) == ("decide", 2):
                break  # the loop's end
            if phase in ("eval", "train", "reeval") and (phase, iteration) != ("eval", 2):
                # In the middle: iteration 2's eval is iteration 1's re-evaluation, reused.
                code, _ = loop(crashed, kill_when=(phase, iteration))
                assert code == -signal.SIGKILL
                kills += 1
                assert started_not_finished(
                    crashed, *(("TrainingStarted", "TrainingCompleted") if phase == "train"
                               else ("EvalStarted", "EvalCompleted"))), (phase, iteration)
            code, _ = loop(crashed, kill_after=f"{phase}:{iteration}")
            assert code == -signal.SIGKILL, (phase, iteration)
            kills += 1
            state = StateFile(crashed, "rtb-quality").load()
            assert (state.iteration, state.phase, state.done) == (iteration, phase, True)
    assert kills == 18
    code, lines = loop(crashed)
    assert code == 3 and lines[-1]["reason"] == "budget"

    assert history(crashed) == expected
    ids = [e.id for e in GitEventStore(crashed).read()]
    assert len(ids) == len(set(ids))

    def final(repo):
        registered = [e for e in GitEventStore(repo).read("rtb-quality")
                      if e.type == "CandidateRegistered"]
        last = registered[-1].data
        return last["version"], last["lineage"]["weights_hash"], \
            last["lineage"]["dataset_hash"], last["lineage"]["base_model"]

    assert final(crashed) == final(clean)
    assert final(crashed)[0] == "v2"
    # The interrupted training jobs did not outlive the loop that started them.
    jobs = subprocess.run(["pgrep", "-f", f"{crashed}/.iterate/rtb-quality/jobs"],
                          capture_output=True, text=True)
    assert jobs.stdout == ""
