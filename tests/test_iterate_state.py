"""The iterate loop's state file and lock: atomic replacement, hostile files, one loop per
specialist even across processes, and no stale lock after a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from modelsmith.iterate.state import (
    PHASES,
    IterateState,
    IterationRecord,
    LoopLock,
    PhaseOutputs,
    StateError,
    StateFile,
)


def fresh(specialist: str = "rtb-quality") -> IterateState:
    return IterateState(specialist=specialist, loop_id="loop-1", options={"max": 3})


def test_state_round_trips_and_tracks_completed_phases(tmp_path):
    file = StateFile(tmp_path, "rtb-quality")
    assert file.load() is None
    state = fresh().advanced("eval", done=True, eval_event="e1")
    state = state.advanced("extract", done=False)
    file.save(state)
    back = file.load()
    assert back == state
    assert back.completed("eval") and not back.completed("extract")
    assert not back.completed("train")
    assert back.advanced("extract", done=True).completed("extract")
    following = back.next_iteration(IterationRecord(iteration=1, composite=0.5))
    assert (following.iteration, following.phase, following.done) == (2, "eval", False)
    assert following.outputs == PhaseOutputs() and following.history[0].composite == 0.5
    with pytest.raises(ValueError, match="unknown phase"):
        state.advanced("deploy", done=True)
    assert PHASES[0] == "eval" and PHASES[-1] == "decide"


def test_a_failed_write_leaves_the_old_state_and_no_temp_file(tmp_path, monkeypatch):
    file = StateFile(tmp_path, "rtb-quality")
    old = fresh().advanced("train", done=False, run_id="r1")
    file.save(old)

    def crash(*_args):
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk vanished"):
        file.save(old.advanced("train", done=True, candidate="v1"))
    monkeypatch.undo()
    assert file.load() == old
    assert sorted(p.name for p in file.folder.iterdir()) == ["state.json"]


@pytest.mark.parametrize(("content", "message"), [
    (b'{"specialist": "rtb-quality", "loop_id": "x", "phase": "tra', "not valid JSON"),
    (b"\xff\xfe garbage", "not valid JSON"),
    (b"[]", "(root)"),
    (b'{"specialist": "rtb-quality", "loop_id": "x", "phase": "deploy"}', "phase"),
    (b'{"specialist": "rtb-quality", "loop_id": "x", "iteration": 0}', "iteration"),
    (b'{"specialist": "rtb-quality", "loop_id": "x", "surprise": 1}', "surprise"),
    (b'{"specialist": "other", "loop_id": "x"}', "specialist: 'other'"),
    (b'{"schema_version": 9, "specialist": "rtb-quality", "loop_id": "x"}', "schema_version"),
])
def test_hostile_state_files_are_named_errors(tmp_path, content, message):
    file = StateFile(tmp_path, "rtb-quality")
    file.folder.mkdir(parents=True)
    file.path.write_bytes(content)
    with pytest.raises(StateError) as error:
        file.load()
    assert str(file.path) in str(error.value) and message in str(error.value)


def test_a_state_path_that_is_not_a_small_regular_file_is_refused(tmp_path, monkeypatch):
    file = StateFile(tmp_path, "rtb-quality")
    file.path.mkdir(parents=True)
    with pytest.raises(StateError, match="not a regular file"):
        file.load()
    file.path.rmdir()
    (tmp_path / "elsewhere.json").write_text(fresh().model_dump_json())
    file.path.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(StateError, match="not a regular file"):
        file.load()
    file.path.unlink()
    monkeypatch.setattr("modelsmith.iterate.state.MAX_STATE_BYTES", 64)
    file.path.write_text(fresh().model_dump_json())
    with pytest.raises(StateError, match="is not a state file"):
        file.load()


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from modelsmith.iterate.state import LoopLock
    lock = LoopLock(Path(sys.argv[1]), "rtb-quality")
    lock.acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


def test_one_loop_per_specialist_across_processes_and_none_left_after_sigkill(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StateError) as error:
            LoopLock(tmp_path, "rtb-quality").acquire()
        assert f"pid {holder.pid}" in str(error.value)
        # Another specialist is another loop.
        with LoopLock(tmp_path, "other"):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    deadline = time.monotonic() + 10
    while True:
        try:
            with LoopLock(tmp_path, "rtb-quality") as lock:
                assert json.loads(lock.path.read_text())["pid"] == os.getpid()
            break
        except StateError:
            assert time.monotonic() < deadline, "the lock outlived the killed process"
            time.sleep(0.05)
    # Released on exit: taken again at once.
    with LoopLock(tmp_path, "rtb-quality"):
        pass


def test_state_lives_under_dot_iterate(tmp_path):
    file = StateFile(Path(tmp_path), "rtb-quality")
    file.save(fresh())
    assert file.path == tmp_path / ".iterate" / "rtb-quality" / "state.json"
    file.clear()
    assert file.load() is None
