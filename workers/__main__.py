"""`python -m workers`: one forking RQ worker serving the kernelscope queue.

The parent process imports torch (so each forked work-horse starts warm) but never touches CUDA:
CUDA is initialised, if at all, inside the work-horse, which is what makes forking safe on GPU nodes.
It also never opens a gRPC channel (those do not survive fork); each horse opens its own.

While a job runs, the worker beats every KERNELSCOPE_WORKER_HEARTBEAT seconds (RQ's default is 30), so
that the service's reaper re-queues the job within seconds if this worker dies; and the work-horse is
killed with its worker (PR_SET_PDEATHSIG), so that a re-queued job never also finishes on an orphan.

Secrets: the first thing `python -m workers` does is re-exec itself with the worker token (and every other
secret-looking variable, and a Redis URL that carries a password) removed from the environment, handing them
to the new image over an inherited pipe that it reads once. os.environ.pop cannot do this: /proc/<pid>/environ
shows the block the process was exec'd with. So neither the worker, its horses nor the sandboxed model
processes have the token in /proc/<pid>/environ; the worker and its horses keep it in memory only (other
secret-looking variables go back into os.environ, which /proc does not show, and the model process drops them).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from workers import defaults

# The inherited pipe the secrets travel through across the re-exec (a descriptor number, not a secret).
SECRET_FD_VARIABLE = "KERNELSCOPE_SECRET_FD"
PIPE_BYTES = 60_000  # below the pipe's buffer, so the write never blocks before the exec

# KERNELSCOPE_WORKER_HEARTBEAT: seconds between a busy worker's heartbeats (whole seconds, RQ uses alarm()).
HEARTBEAT_SECONDS = 2


def _die_with_parent(parent_pid: int) -> None:
    """In the work-horse: ask Linux to SIGKILL us when the worker dies (a no-op elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the worker died before prctl took effect
        os._exit(1)


def _secret_variables(environ: dict[str, str]) -> dict[str, str]:
    from workers.sandbox import is_secret

    return {k: v for k, v in environ.items() if is_secret(k) or (k == "REDIS_URL" and "@" in v)}


def _without_secrets_in_environ() -> dict[str, str]:
    """Re-exec this command with the secrets out of its environment; in the new image, return them.

    Returns the secrets to keep in memory (empty when there were none). Never returns in the old image.
    """
    fd_text = os.environ.pop(SECRET_FD_VARIABLE, None)
    if fd_text is not None:  # the re-executed image: read the secrets once
        with os.fdopen(int(fd_text), "rb") as pipe:
            return dict(json.loads(pipe.read() or b"{}"))
    secrets = _secret_variables(dict(os.environ))
    data = json.dumps(secrets).encode()
    if not secrets or len(data) > PIPE_BYTES:
        if secrets:
            logging.getLogger(__name__).warning("secrets too large to hand over a pipe: they stay in /proc/self/environ")
        return {k: os.environ.pop(k) for k in secrets}
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)
    os.close(write_fd)
    os.set_inheritable(read_fd, True)
    env = {k: v for k, v in os.environ.items() if k not in secrets}
    env[SECRET_FD_VARIABLE] = str(read_fd)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)
    raise AssertionError("unreachable")


def _preload() -> None:
    """Import torch, the loaders and every analysis once, so that each forked horse starts warm.

    None of these initialise CUDA at import; the test suite checks that the parent never does.
    """
    import importlib

    import matplotlib

    matplotlib.use("Agg")  # workers have no display
    import torch  # noqa: F401

    from workers import tasks

    # torch.export.load imports pt2_archive (and with it torch._dynamo) on first use: seconds in every horse.
    # torch.optim's first step imports torch._dynamo as well.
    for module in ("workers.loader", "torch._dynamo", "torch.export.pt2_archive", "matplotlib.pyplot", "onnxruntime", *tasks._PROVIDERS.values()):
        try:
            importlib.import_module(module)
        except ImportError as exc:  # a missing optional piece only costs the horse the import later
            logging.getLogger(__name__).warning("could not preload %s: %s", module, exc)


class KernelScopeWorker(Worker):
    """RQ's worker, made safe to stop and to kill.

    - The horse dies with its worker (PR_SET_PDEATHSIG), so a re-queued job never also finishes on an orphan.
    - A heartbeat that cannot reach Redis is skipped, not fatal: RQ would quit with the job running, and a Redis
      restart would take every busy worker down with it.
    - A SIGTERM or SIGINT that arrives while the worker registers itself (RQ installs its handlers only after
      registering, and orchestrators stop workers the moment they appear) stops it cleanly, with its death
      registered, instead of killing it with its registration left behind.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parent_pid = os.getpid()

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        def stop_once_started(signum: int, frame: object) -> None:
            self._stop_requested = True  # work() checks this before taking its first job

        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, stop_once_started)
        super().bootstrap(*args, **kwargs)

    def main_work_horse(self, *horse_args: Any, **horse_kwargs: Any) -> None:
        _die_with_parent(self.parent_pid)
        super().main_work_horse(*horse_args, **horse_kwargs)

    def maintain_heartbeats(self, *beat_args: Any, **beat_kwargs: Any) -> None:
        try:
            super().maintain_heartbeats(*beat_args, **beat_kwargs)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            self.log.warning("heartbeat skipped, Redis unreachable: %s", exc)


def main(argv: list[str] | None = None, secrets: dict[str, str] | None = None) -> int:
    """Run the worker. `secrets`: variables already taken out of the environment (by the re-exec)."""
    secrets = dict(secrets or {})
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("--redis-url", default=secrets.get("REDIS_URL") or os.environ.get("REDIS_URL", defaults.REDIS_URL))
    parser.add_argument("--queue", default=os.environ.get("KERNELSCOPE_QUEUE", defaults.QUEUE_NAME))
    parser.add_argument("--service", default=os.environ.get("KERNELSCOPE_SERVICE", defaults.SERVICE_TARGET))
    parser.add_argument("--name", default=None, help="worker name (default: RQ's)")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--no-preload", action="store_true", help="do not import torch in the parent")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")

    from workers import connection

    token = secrets.get("KERNELSCOPE_WORKER_TOKEN")
    connection.configure(target=args.service, token=token)
    if not args.no_preload:
        _preload()

    heartbeat = max(1, int(os.environ.get("KERNELSCOPE_WORKER_HEARTBEAT", HEARTBEAT_SECONDS)))
    redis = Redis.from_url(args.redis_url)
    queue = Queue(args.queue, connection=redis, serializer=JSONSerializer)
    worker = KernelScopeWorker(
        [queue], connection=redis, serializer=JSONSerializer, name=args.name, job_monitoring_interval=heartbeat
    )
    worker.work(burst=args.burst, with_scheduler=False)
    return 0


if __name__ == "__main__":
    hidden = _without_secrets_in_environ()
    # Back into os.environ (libc's table, in memory: /proc/self/environ does not show it) for code that reads
    # them there; connection.configure takes the token out again, and the model process drops every secret.
    os.environ.update({k: v for k, v in hidden.items() if k != "KERNELSCOPE_WORKER_TOKEN"})
    sys.exit(main(secrets=hidden))
