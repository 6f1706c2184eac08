"""`kernelscope up` starts Redis, the server and workers; Ctrl-C (SIGINT) stops every one of them; a second
`kernelscope up` over a running one (same port or same data directory) refuses, touching none of its files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from deploy.probe import wait_serving
from deploy.stack import free_port


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.add(int(entry.name))
    return found | {g for c in found for g in _children(c)} if found else found


def test_up_serves_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "sdk.cli", "up", "--port", str(port), "--workers", "1", "--data-dir", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        output = lambda: process.stdout.read().decode() if process.poll() is not None and process.stdout else ""  # noqa: E731
        wait_serving(f"127.0.0.1:{port}", 60, process, interval=0.2, detail=output)
        deadline = time.monotonic() + 60
        children = _children(process.pid)
        while len(children) < 3 and time.monotonic() < deadline:  # workers start once the server serves
            time.sleep(0.2)
            children = _children(process.pid)
        assert len(children) >= 3, f"expected redis, server and a worker, found {children}"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        time.sleep(0.2)
        alive = [pid for pid in children if Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]]
        assert not alive, f"processes left running after Ctrl-C: {alive}"
        assert not (tmp_path / "redis" / "redis.sock").exists()
    finally:
        if process.poll() is None:
            process.kill()


def _up(port: int, home: Path, workers: int = 0) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "sdk.cli", "up", "--port", str(port), "--workers", str(workers), "--data-dir", str(home)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _files(home: Path) -> dict[str, tuple[int, int, int]]:
    """Every file of a stack's home: (inode, size, mtime). The Redis socket and the logs are what a second
    stack used to replace."""
    return {str(p.relative_to(home)): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for p in home.rglob("*") if not p.is_dir() and "appendonly" not in p.name}


def test_a_second_up_over_a_running_stack_refuses_and_leaves_it_alone(tmp_path: Path) -> None:
    port, home = free_port(), tmp_path / "home"
    first = _up(port, home)
    try:
        wait_serving(f"127.0.0.1:{port}", 60, first, interval=0.2,
                     detail=lambda: first.stderr.read().decode() if first.poll() is not None and first.stderr else "")
        socket_path = home / "redis" / "redis.sock"
        before = _files(home)
        assert "redis/redis.sock" in before and "logs/server.log" in before, before

        for what, second in (("port", _up(port, tmp_path / "other-home")), ("data directory", _up(free_port(), home))):
            try:
                out, err = second.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                second.kill()
                second.communicate()
                raise AssertionError(f"a second `up` on the same {what} kept running") from None
            lines = err.decode().strip().splitlines()
            assert second.returncode == 1 and len(lines) == 1, (second.returncode, err.decode())
            assert lines[0].startswith("error: ") and what in lines[0] and "in use" in lines[0], lines
            assert not out, out

        assert _files(home) == before, "the second `up` touched the first stack's files"
        assert not (tmp_path / "other-home" / "logs").exists() and not (tmp_path / "other-home" / "redis").exists()
        wait_serving(f"127.0.0.1:{port}", 10, first)  # the first still serves
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=60) == 0
        assert not socket_path.exists()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def _workers(pid: int) -> set[int]:
    """The `python -m workers` processes under `up` (not their horses)."""
    found = set()
    for child in _children(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"workers" in argv and b"--name" in argv:
            found.add(child)
    return found


def test_up_restarts_a_worker_that_dies_and_says_so(tmp_path: Path) -> None:
    port = free_port()
    up = _up(port, tmp_path / "home", workers=1)
    try:
        wait_serving(f"127.0.0.1:{port}", 60, up, interval=0.2)
        deadline = time.monotonic() + 60
        while not (workers := _workers(up.pid)):
            assert time.monotonic() < deadline, "no worker started"
            time.sleep(0.2)
        (victim,) = workers
        os.killpg(victim, signal.SIGKILL)  # the OOM killer's way
        deadline = time.monotonic() + 60
        while not (workers := _workers(up.pid) - {victim}):
            assert time.monotonic() < deadline, "the dead worker was not replaced"
            time.sleep(0.2)
        up.send_signal(signal.SIGINT)
        _, err = up.communicate(timeout=60)
        assert up.returncode == 0
        log = err.decode()
        assert f"worker0 (pid {victim}) exited with SIGKILL" in log and "restarting it in 1.0 s" in log, log
        assert f"worker0 restarted (pid {workers.pop()})" in log, log
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
