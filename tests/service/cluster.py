"""A kernelscope deployment of real processes for the fault tests, each of which can be killed and started again.

    cluster = Cluster(tmp_dir, server_env={...}).start()   # Redis (AOF on) + `python -m service`
    worker = cluster.start_worker()                         # `python -m workers --no-preload`
    cluster.kill_server(); cluster.start_server()           # same port, same data
    cluster.stop_redis(); cluster.start_redis()             # same directory: the AOF is replayed
    cluster.stop()

Redis is deploy.redis.EmbeddedRedis (what the local stack runs). Jobs run the torch-free fake
(tests/service/fake_worker.py) inside real forking RQ workers, so every process boundary is real:
the server, Redis and workers only share Redis and the gRPC port.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from deploy.probe import wait_serving
from deploy.redis import EmbeddedRedis
from deploy.stack import free_port
from tests.service import fake_worker

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180.0  # a process starting on a loaded machine (load 16 on 2 cores) needs a minute or more
STOP_TIMEOUT_S = 120.0  # a process that has not exited by then is stuck, not slow (a loaded machine takes seconds)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERNELSCOPE_", "FAKE_WORKER_", "REDIS_URL"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


class Cluster:
    """Redis, one server process (restartable on the same port and data) and any number of workers."""

    def __init__(self, root: Path, server_env: dict[str, str] | None = None, worker_env: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.port = free_port()
        self.worker_token = secrets.token_urlsafe(16)
        self.redis = EmbeddedRedis(self.root / "redis")
        self.server_env = server_env or {}
        self.worker_env = worker_env or {}
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = self.root / "logs"
        self._channels: list[grpc.Channel] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def start(self) -> "Cluster":
        self.logs.mkdir(parents=True, exist_ok=True)
        self.start_redis()
        self.start_server()
        return self

    # --- Redis ------------------------------------------------------------------------------

    def start_redis(self) -> None:
        self.redis.start()

    def stop_redis(self) -> None:
        """A clean shutdown (SIGTERM): Redis flushes its AOF and exits."""
        self.redis.stop()

    def crash_redis(self) -> None:
        """SIGKILL: no shutdown, no final AOF flush; only what `appendfsync everysec` already wrote survives."""
        process = self.redis.process
        assert process is not None and process.poll() is None, "Redis is not running"
        process.kill()
        process.wait()
        self.redis.process = None

    def redis_client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.redis_url)

    # --- the server -------------------------------------------------------------------------

    def start_server(self) -> subprocess.Popen[bytes]:
        env = _clean_env(
            REDIS_URL=self.redis_url,
            KERNELSCOPE_PORT=str(self.port),
            KERNELSCOPE_DATA_DIR=str(self.root / "store"),
            KERNELSCOPE_WORKER_TOKEN=self.worker_token,
            KERNELSCOPE_JOB_FUNCTION=fake_worker.JOB_FUNCTION,
            KERNELSCOPE_POLL_INTERVAL="0.05",
            KERNELSCOPE_HEALTH_INTERVAL="0.2",
            **self.server_env,
        )
        self.server = self._spawn("server", [sys.executable, "-m", "service"], env)
        self.wait_serving()
        return self.server

    def kill_server(self, sig: int = signal.SIGKILL) -> None:
        assert self.server is not None
        self.server.send_signal(sig)
        self.server.wait(STOP_TIMEOUT_S)
        self.server = None

    def wait_serving(self, timeout: float = START_TIMEOUT_S) -> None:
        wait_serving(self.address, timeout, self.server, interval=0.05, detail=lambda: f":\n{self.log('server')}")

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.address)
        self._channels.append(channel)
        return channel

    def stub(self) -> Any:
        from kernelscope.v1 import kernelscope_pb2_grpc

        return kernelscope_pb2_grpc.KernelScopeStub(self.channel())

    # --- workers ----------------------------------------------------------------------------

    def start_worker(self, name: str | None = None, program: str | None = None, wait: bool = True) -> str:
        """Start a worker and wait until it is registered in Redis; returns its RQ name.

        `program`: Python source run in place of `python -m workers` (given the same arguments);
        `wait=False` returns at once, for a worker that is meant to die young."""
        name = name or f"w{len(self.workers)}-{secrets.token_hex(2)}"
        launcher = ["-c", program] if program else ["-m", "workers"]
        env = _clean_env(
            REDIS_URL=self.redis_url,
            KERNELSCOPE_SERVICE=self.address,
            KERNELSCOPE_WORKER_TOKEN=self.worker_token,
            **{fake_worker.SERVICE_ENV: self.address, fake_worker.TOKEN_ENV: self.worker_token},
            **self.worker_env,
        )
        self.workers[name] = self._spawn(f"worker-{name}", [sys.executable, *launcher, "--no-preload", "--name", name], env)
        if not wait:
            return name
        conn = self.redis_client()
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while not conn.exists(f"rq:worker:{name}"):
                if self.workers[name].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {name} did not start:\n{self.log('worker-' + name)}")
                time.sleep(0.05)
        finally:
            conn.close()
        return name

    def kill_worker(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.workers.pop(name)
        process.send_signal(sig)
        process.wait(STOP_TIMEOUT_S)

    # --- all --------------------------------------------------------------------------------

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        for channel in self._channels:
            channel.close()
        for name in list(self.workers):
            self.kill_worker(name)
        if self.server is not None and self.server.poll() is None:
            self.kill_server()
        self.stop_redis()

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "ab") as log:
            return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
