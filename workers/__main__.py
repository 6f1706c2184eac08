"""`python -m workers`: one forking RQ worker serving the kernelscope queue.

The parent process imports torch (so each forked work-horse starts warm) but never touches CUDA:
CUDA is initialised, if at all, inside the work-horse, which is what makes forking safe on GPU nodes.
It also never opens a gRPC channel (those do not survive fork); each horse opens its own.

While a job runs, the worker beats every KERNELSCOPE_WORKER_HEARTBEAT seconds (RQ's default is 30), so
that the service's reaper re-queues the job within seconds if this worker dies; and the work-horse is
killed with its worker (PR_SET_PDEATHSIG), so that a re-queued job never also finishes on an orphan.

A Redis restart is ridden out: progress that cannot be written is dropped (workers/progress.py), and every
other write around a job, and the worker's own bookkeeping, waits for Redis to come back, for up to
KERNELSCOPE_REDIS_PATIENCE seconds (300), before the worker gives up and quits.

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
import time
from typing import Any, Callable, TypeVar

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from kernelscope.backoff import Backoff
from workers import defaults

# The inherited pipe the secrets travel through across the re-exec (a descriptor number, not a secret).
SECRET_FD_VARIABLE = "KERNELSCOPE_SECRET_FD"
PIPE_BYTES = 60_000  # below the pipe's buffer, so the write never blocks before the exec

# KERNELSCOPE_WORKER_HEARTBEAT: seconds between a busy worker's heartbeats (whole seconds, RQ uses alarm()).
HEARTBEAT_SECONDS = 2
# KERNELSCOPE_REDIS_PATIENCE: seconds a worker waits for Redis to come back before it gives up and quits.
REDIS_PATIENCE_S = 300.0
OUTAGE_BACKOFF_S = (0.1, 5.0)  # first and longest pause (kernelscope.backoff) while Redis is unreachable
# Longest wait of the thread that listens for RQ's commands (RQ's own: 60 s); stopping the worker waits for it.
LISTENER_POLL_S = 1.0

REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError)
T = TypeVar("T")


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


def through_outage(call: Callable[[], T], what: str, patience_s: float, logger: logging.Logger) -> T:
    """`call()`, tried again (kernelscope.backoff's policy, logged) while Redis is unreachable, for `patience_s`."""
    first, longest = OUTAGE_BACKOFF_S
    backoff = Backoff(patience_s, first_s=first, longest_s=longest, jitter=0.0)  # one worker: no herd to spread
    while True:
        try:
            return call()
        except REDIS_ERRORS as exc:
            pause = backoff.pause()
            if pause is None:
                raise
            logger.warning("%s: Redis unreachable, trying again in %.1f s: %s", what, pause, exc)
        time.sleep(pause)


class PatientJob(Job):
    """RQ's job whose status read waits through a Redis outage: the worker reads it when its horse exits, and
    RQ quits the whole worker on a ConnectionError there."""

    redis_patience_s = REDIS_PATIENCE_S

    def get_status(self, refresh: bool = True) -> Any:
        read = super().get_status
        return through_outage(lambda: read(refresh), f"job {self.id}: status", self.redis_patience_s, logging.getLogger(__name__))


class KernelScopeWorker(Worker):
    """RQ's worker, made safe to stop and to kill, and to ride out a Redis restart.

    - The horse dies with its worker (PR_SET_PDEATHSIG), so a re-queued job never also finishes on an orphan.
    - A heartbeat that cannot reach Redis is skipped, not fatal: RQ would quit with the job running, and a Redis
      restart would take every busy worker down with it.
    - Every other Redis write RQ makes around a job (its start, its result or failure, the worker's state) waits
      for Redis to come back (up to `redis_patience_s`) instead of raising: a raise there loses the result in
      the horse or quits the worker in the parent.
    - A SIGTERM or SIGINT that arrives while the worker registers itself (RQ installs its handlers only after
      registering, and orchestrators stop workers the moment they appear) stops it cleanly, with its death
      registered, instead of killing it with its registration left behind.
    - Its command listener wakes every second, so that a stopped worker exits at once: redis-py's
      PubSubWorkerThread.stop() waits for the listener's current wait to end, and with RQ's 60 s one a worker
      whose listener had just read the reply to its UNSUBSCRIBE took up to a minute to exit after SIGTERM.
    """

    redis_patience_s = REDIS_PATIENCE_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("job_class", PatientJob)
        super().__init__(*args, **kwargs)
        self.parent_pid = os.getpid()

    def _patiently(self, call: Callable[[], T], what: str) -> T:
        return through_outage(call, f"worker {self.name}: {what}", self.redis_patience_s, self.log)

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        def stop_once_started(signum: int, frame: object) -> None:
            self._stop_requested = True  # work() checks this before taking its first job

        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, stop_once_started)
        super().bootstrap(*args, **kwargs)

    def subscribe(self) -> None:
        """RQ's subscribe, with a listener that wakes every LISTENER_POLL_S seconds instead of every minute."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=LISTENER_POLL_S, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def main_work_horse(self, *horse_args: Any, **horse_kwargs: Any) -> None:
        _die_with_parent(self.parent_pid)
        super().main_work_horse(*horse_args, **horse_kwargs)

    def maintain_heartbeats(self, *beat_args: Any, **beat_kwargs: Any) -> None:
        try:
            super().maintain_heartbeats(*beat_args, **beat_kwargs)
        except REDIS_ERRORS as exc:
            self.log.warning("heartbeat skipped, Redis unreachable: %s", exc)

    # The parent, between and after jobs.
    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:  # queued on a pipeline: nothing is sent yet
            super().heartbeat(timeout, pipeline)
            return
        self._patiently(lambda: super(KernelScopeWorker, self).heartbeat(timeout), "heartbeat")

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().set_state(state, pipeline)
            return
        self._patiently(lambda: super(KernelScopeWorker, self).set_state(state), f"state {state}")

    def check_for_suspension(self, burst: bool) -> None:
        self._patiently(lambda: super(KernelScopeWorker, self).check_for_suspension(burst), "suspension check")

    def run_maintenance_tasks(self) -> None:
        try:
            super().run_maintenance_tasks()
        except REDIS_ERRORS as exc:  # cleaning registries can wait for the next round
            self.log.warning("maintenance skipped, Redis unreachable: %s", exc)

    # The horse: a job's start and its outcome. RQ writes each in one MULTI/EXEC, so a try that could not
    # reach Redis changed nothing and is simply made again.
    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        self._patiently(
            lambda: super(KernelScopeWorker, self).prepare_job_execution(job, remove_from_intermediate_queue),
            f"job {job.id}: start",
        )

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        self._patiently(
            lambda: super(KernelScopeWorker, self).handle_execution_ended(job, queue, heartbeat_ttl),
            f"job {job.id}: end",
        )

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any, execution: Any) -> None:
        self._patiently(
            lambda: super(KernelScopeWorker, self).handle_job_success(job, queue, started_job_registry, execution),
            f"job {job.id}: result",
        )

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = "",
                           execution: Any = None) -> None:
        # RQ logs and drops a failure it could not write; wait for Redis first so that it is written.
        self._patiently(self.connection.ping, f"job {job.id}: failure")
        super().handle_job_failure(job, queue, started_job_registry=started_job_registry, exc_string=exc_string,
                                   execution=execution)


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
    KernelScopeWorker.redis_patience_s = PatientJob.redis_patience_s = float(
        os.environ.get("KERNELSCOPE_REDIS_PATIENCE", REDIS_PATIENCE_S)
    )
    redis = Redis.from_url(args.redis_url)
    # RQ's worker needs Redis to be built: one started (or restarted) during an outage waits for it.
    through_outage(redis.ping, "start", KernelScopeWorker.redis_patience_s, logging.getLogger(__name__))
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
