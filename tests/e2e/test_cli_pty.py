"""`kernelscope analyze` and `kernelscope gate` on a terminal (a pseudo-terminal): the progress bars show, and
Ctrl-C while they wait asks the service to cancel their jobs, says so, and leaves the jobs CANCELLED rather than
running on unseen."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sys
import time
from pathlib import Path

import sdk

SHORT_ID = re.compile(rb"(job_[0-9a-f]{8})")


def _read_until(fd: int, pattern: re.Pattern[bytes], seen: bytearray, timeout: float) -> re.Match[bytes] | None:
    """Read the terminal into `seen` until `pattern` matches it (or `timeout` s pass, or the child closes it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = pattern.search(seen)
        if match:
            return match
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                return pattern.search(seen)
            if not chunk:
                return pattern.search(seen)
            seen.extend(chunk)
    return pattern.search(seen)


def _exit_status(pid: int, fd: int, seen: bytearray, timeout: float) -> int | None:
    """The child's exit code once it ends (None after `timeout` s), reading the terminal meanwhile: a child whose
    last output nobody reads waits in its tty's close for it to drain."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen.extend(os.read(fd, 4096))
            except OSError:  # EIO: the child closed its end; it is exiting
                time.sleep(0.1)
    return None


def _interrupt(argv: list[str], ready: re.Pattern[bytes], said: re.Pattern[bytes], count: int = 1) -> tuple[re.Match[bytes], list[re.Match[bytes]], int | None, str]:
    """Run `argv` on a pty, type Ctrl-C once `ready` shows, and read until `said` shows `count` times.

    (the `ready` match, the `said` matches, the exit code, everything the terminal showed)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI, with the pty as its controlling terminal
        os.environ["PYTHONFAULTHANDLER"] = "1"  # SIGABRT (below, only if it hangs) prints every thread's stack
        os.execv(sys.executable, argv)
    seen = bytearray()
    code: int | None = None
    try:
        shown = _read_until(fd, ready, seen, timeout=240)
        assert shown is not None, seen.decode(errors="replace")
        os.write(fd, b"\x03")  # Ctrl-C, as typed: the terminal sends SIGINT to the foreground process
        all_said = re.compile(b"(?:" + said.pattern + b".*?){%d}" % count, re.S)
        _read_until(fd, all_said, seen, timeout=120)
        code = _exit_status(pid, fd, seen, timeout=60)
    finally:
        if code is None and _exit_status(pid, fd, seen, timeout=0.5) is None:
            os.kill(pid, signal.SIGABRT)  # a hang: its stacks go to the terminal, into `seen` for the message
            if _exit_status(pid, fd, seen, timeout=10) is None:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        os.close(fd)
    return shown, list(said.finditer(seen)), code, seen.decode(errors="replace")


def _assert_cancelled(client: sdk.Client, job_id: str, text: str) -> None:
    for _ in client.watch_job(job_id, deadline=time.monotonic() + 120):  # a running job stops at the worker's next check
        pass
    assert client.get_job(job_id).state == "CANCELLED", text


SAID = re.compile(rb"job (job_[0-9a-f]{32}): (CANCELLED|RUNNING|QUEUED)")
SPEC = '{"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}'


def test_progress_bar_on_a_terminal_and_ctrl_c_cancels_the_job(stack, client: sdk.Client, c3d_pt2: Path) -> None:  # noqa: ANN001
    argv = [
        sys.executable, "-m", "sdk.cli", "--target", stack.target, "analyze", str(c3d_pt2),
        '--task=kernel_viz:{"layers": ["conv2"], "steps": 5000}', "--input-spec", SPEC,
    ]
    # The job's bar: its short id and a percentage, redrawn in place on the terminal.
    bar, said, code, text = _interrupt(argv, re.compile(rb"job_[0-9a-f]{8} [^\r\n]*\d+%"), SAID)
    short_id = SHORT_ID.search(bar.group(0)).group(1).decode()  # type: ignore[union-attr]
    assert said, text
    job_id = said[0].group(1).decode()
    assert job_id.startswith(short_id)
    assert f"interrupted: asking the service to cancel job {job_id}" in text and "Traceback" not in text, text
    assert code == 130, text
    _assert_cancelled(client, job_id, text)


GATE_POLICY = """
[tasks.kernel_viz]
layers = ["conv2"]
steps = 5000

[[checks]]
name = "no new dead kernels"
metric = "kernel_viz.dead_kernels"
max_regression = 0.10
"""


def test_ctrl_c_while_a_gate_waits_cancels_both_of_its_jobs(stack, client: sdk.Client, c3d_pt2: Path, tmp_path: Path) -> None:  # noqa: ANN001
    policy = tmp_path / "gate.toml"
    policy.write_text(GATE_POLICY)
    argv = [
        sys.executable, "-m", "sdk.cli", "--target", stack.target, "gate", str(c3d_pt2), "--baseline", str(c3d_pt2),
        "--policy", str(policy), "--input-spec", SPEC, "--no-github",
    ]
    # Both jobs submitted and waited on (their first progress line); queued or running, Ctrl-C must cancel both.
    ready = re.compile(rb"gate: baseline [^\r\n]*submitted.*gate: model [^\r\n]*: (queued|running)", re.S)
    _, said, code, text = _interrupt(argv, ready, SAID, count=2)
    submitted = re.findall(r"gate: (?:model|baseline) \S+: job (job_[0-9a-f]{32}) submitted", text)
    assert len(submitted) == 2, text
    assert sorted(m.group(1).decode() for m in said) == sorted(submitted), text
    for job_id in submitted:
        assert f"interrupted: asking the service to cancel job {job_id}" in text, text
    assert "Traceback" not in text and code == 130, text
    for job_id in submitted:
        _assert_cancelled(client, job_id, text)
