"""The embedded stack keeps the workers it was asked for: a worker that dies (SIGKILL, as the OOM killer
does it) is started again, after a pause that doubles while it keeps dying, and says so in the log."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from redis import Redis
from rq import Worker

from deploy.stack import RESTART_BACKOFF_S, LocalStack

START_TIMEOUT_S = 180.0  # a worker imports torch before it registers; the machine may be busy


def _name(process: subprocess.Popen[bytes]) -> str:
    args = list(process.args)  # type: ignore[arg-type]
    return str(args[args.index("--name") + 1])


def _wait_registered(stack: LocalStack, index: int, previous: int | None) -> subprocess.Popen[bytes]:
    """The worker in slot `index` once it is a new process (not `previous`) registered in Redis."""
    deadline = time.monotonic() + START_TIMEOUT_S
    conn = Redis.from_url(stack.redis_url)
    try:
        while True:
            process = stack.worker_processes[index]
            if process.pid != previous and process.poll() is None:
                if _name(process) in {w.name for w in Worker.all(connection=conn)}:
                    return process
            assert time.monotonic() < deadline, f"no live, registered worker{index}:\n{(stack.log_dir / f'worker{index}.log').read_text()[-3000:]}"
            time.sleep(0.1)
    finally:
        conn.close()


def test_a_worker_that_dies_is_restarted_with_backoff_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="kernelscope.stack")
    monkeypatch.delenv("REDIS_URL", raising=False)  # the stack's own Redis
    with LocalStack(workers=2, data_dir=tmp_path) as stack:
        first = _wait_registered(stack, 0, None)
        other = _wait_registered(stack, 1, None)
        os.killpg(first.pid, signal.SIGKILL)
        second = _wait_registered(stack, 0, first.pid)
        os.killpg(second.pid, signal.SIGKILL)  # dies young again: the pause doubles
        third = _wait_registered(stack, 0, second.pid)

        assert stack.worker_restarts == 2 and len(stack.worker_processes) == 2
        assert stack.worker_processes[1] is other and other.poll() is None, "the other worker was touched"
        pause = RESTART_BACKOFF_S[0]
        messages = [r.getMessage() for r in caplog.records if r.name == "kernelscope.stack"]
        assert any(f"worker0 (pid {first.pid}) exited with SIGKILL" in m and f"restarting it in {pause:.1f} s" in m for m in messages), messages
        assert any(f"worker0 (pid {second.pid}) exited with SIGKILL" in m and f"restarting it in {2 * pause:.1f} s" in m for m in messages), messages
        assert any(f"worker0 restarted (pid {third.pid})" in m for m in messages), messages
    assert third.poll() is not None and other.poll() is not None, "stop() left a worker running"
