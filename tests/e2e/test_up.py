"""`kernelscope up` starts Redis, the server and workers; Ctrl-C (SIGINT) stops every one of them."""

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
