"""The local executor: the executor contract (output streamed and kept, a silent job
stopped as stalled with its whole process group, a heartbeat file keeps a quiet job alive,
a memory limit yields a real OOM that the classifier names), and a command that cannot
start is reported without a return code."""

from __future__ import annotations

import pytest

from executor_contract import ExecutorContract
from modelsmith.fleet.executors import Job, LocalExecutor


class TestLocalExecutor(ExecutorContract):
    stall_timeout_s = 1.0

    @pytest.fixture
    def executor(self):
        return LocalExecutor()

    def test_a_command_that_cannot_start_is_reported(self, executor, tmp_path):
        result = executor.run(Job(["/nonexistent/trainer"], cwd=tmp_path))
        assert result.returncode is None and "cannot start" in result.log_tail
        assert result.host == "local"
