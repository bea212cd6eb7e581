"""The loop's live progress: the status line and the JSON progress events, on a fake clock."""

from __future__ import annotations

import io

from modelsmith.iterate.progress import LoopProgress, duration, parse_job_line
from modelsmith.iterate.state import IterationRecord


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_status_line_estimates_the_phase_and_the_loop():
    clock, events, out = Clock(), [], io.StringIO()
    progress = LoopProgress(max_iterations=3, emit=events.append, stream=out, clock=clock,
                            interval_s=0.0)
    progress.start_iteration(1, [])
    progress.start_phase("eval")
    assert out.getvalue().splitlines()[-1] == ("iteration 1/3 · eval · loop ETA after "
                                               "iteration 1")
    clock.now += 10
    progress.steps(25, 100, "generations")
    # 25 units in 10 s: 75 left take 30 s; no iteration finished yet, so no loop estimate.
    assert events[-1]["phase_eta_s"] == 30.0 and events[-1]["loop_eta_s"] is None
    assert "25/100 generations" in out.getvalue().splitlines()[-1]
    clock.now += 50
    progress.finished_iteration(0.71, 60.0)
    progress.start_iteration(2, [IterationRecord(iteration=1, composite=0.71, duration_s=60)])
    progress.start_phase("train")
    clock.now += 20
    progress.job_line("progress phase=grpo step=10 total=40 reward=0.5")
    line = out.getvalue().splitlines()[-1]
    assert line == ("iteration 2/3 · train · 10/40 grpo reward=0.5 · composite 0.710 · "
                    "phase ETA 1m00s · loop ETA ≤ 2m00s")
    # The loop: this iteration's 60 s phase estimate beats the mean's 40 s left, plus one
    # more iteration of 60 s.
    assert events[-1]["loop_eta_s"] == 120.0 and events[-1]["composite"] == 0.71
    # SFT, then GRPO: a new stage is timed on its own.
    clock.now += 30
    progress.job_line("progress phase=grpo step=40 total=40")
    clock.now += 5
    progress.job_line("progress phase=rl step=5 total=100")
    assert events[-1]["phase_eta_s"] == 95.0


def test_job_lines_and_durations():
    assert parse_job_line("progress phase=sft step=3 total=80 loss=1.25") == {
        "phase": "sft", "step": "3", "total": "80", "loss": "1.25"}
    assert parse_job_line("Loading weights") is None
    assert [duration(s) for s in (None, 4.4, 75, 3725)] == ["?", "4s", "1m15s", "1h02m"]


def test_json_progress_is_throttled_to_one_a_second():
    clock, events = Clock(), []
    progress = LoopProgress(max_iterations=2, emit=events.append, clock=clock)
    progress.start_phase("eval")
    for done in range(1, 50):
        clock.now += 0.1
        progress.steps(done, 100)
    assert 5 <= len(events) <= 6  # the phase start, then about one per second
    progress.steps(100, 100)
    assert events[-1]["done"] == 100  # the end of a phase is always reported
