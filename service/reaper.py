"""The reaper: finds jobs whose worker died mid-job and queues them again, within seconds.

RQ notices an abandoned job only when its StartedJobRegistry entry expires, a minute or more after
the worker's last heartbeat, and then fails it (it retries only jobs enqueued with `Retry`, which
would also retry jobs that raised or ran out of time on their own: those fail for good here). So
the service checks every started execution each `config.reap_interval` seconds. An execution is
abandoned when

- its worker is gone from Redis (the worker's key expired, or says the worker died), or
- its heartbeat is late: older than `config.worker_timeout`, and older than three of the worker's
  own heartbeat intervals (read off the execution key's TTL, which RQ sets to interval + 60 s at
  each beat), so that a worker left at RQ's slow 30 s default is never taken for dead.

A job can also be stranded before it starts: a worker moves the job id from the queue to the queue's
intermediate list (RQ does so on Redis >= 6.2), and only then registers it as started; a worker that
dies in between leaves the id in that list with the job still QUEUED, where RQ's maintenance would
fail it minutes later. A job id that stays in the intermediate list, unstarted, for
`config.worker_timeout` (the usual stay is a few milliseconds) is taken off the list and handled as
abandoned.

An abandoned job is queued again at the front, at most `config.job_retries` times; after that, or
when a cancel was requested, it fails with WORKER_LOST (shown CANCELLED when it was cancelled).
Workers beat every KERNELSCOPE_WORKER_HEARTBEAT seconds (workers/__main__.py), and a work-horse
dies with its worker, so that a lost job is never also finished by an orphan.

After Redis was unreachable the reaper waits one worker_timeout before it judges again, since no
worker could beat meanwhile (workers/__main__.py keeps busy workers alive through the outage).

A job whose work-horse was killed by a signal (SIGKILL is the out-of-memory killer's way) is failed by
its worker, which lives on; RQ does not retry it. The reaper queues such a job again, once
(HORSE_RETRIES), with a note saying so (NOTES_META, shown in Job.warnings); a second kill fails it for good
with the signal named (job_state.apply_failure). GetJob runs the same check (requeue_killed_horse) before
it reports a FAILED job, so no client sees a job fail that is about to run again.

Each pass also runs retention (service/retention.py): jobs that ended config.job_ttl seconds ago are
deleted with their artifacts, and blobs no other record uses with them.

Each decision runs in a WATCH transaction on the job and its execution, so a heartbeat that lands
meanwhile, or another service replica reaping at the same time, turns it into a no-op.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
import time
from dataclasses import dataclass

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.job_lifecycle import record_job_failure
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import parse_composite_key
from rq.worker import Worker

from service.config import Config
from service.registry import Keys, job_tenant

log = logging.getLogger(__name__)

# Starts the failure line the service recognises as a lost worker (job_state.apply_failure).
WORKER_LOST_MARK = "kernelscope.WorkerLost"
# job.meta key counting how often the job's worker died under it.
LOSSES_META = "kernelscope_worker_losses"
# job.meta key counting how often the job's work-horse was killed by a signal.
HORSE_KILLS_META = "kernelscope_horse_kills"
# job.meta key: what the user should know about how the job ran (retries), in plain words.
NOTES_META = "kernelscope_notes"
# Times a job whose work-horse was killed runs again: an out-of-memory kill tends to repeat.
HORSE_RETRIES = 1
# The line RQ's worker records for a work-horse that died without ending its job (rq Worker.monitor_work_horse).
_HORSE_DIED = re.compile(r"Work-horse terminated unexpectedly; waitpid returned -?\d+ \(signal (\d+)\)")
# What RQ adds to a worker's heartbeat interval for the TTL of an execution key.
_RQ_TTL_SLACK_SECONDS = 60.0
# A heartbeat is late after this many of the worker's own intervals (and config.worker_timeout).
_LATE_INTERVALS = 3


@dataclass(frozen=True)
class Reaped:
    """One abandoned job dealt with: queued again (`requeued`) or failed, after `losses` lost workers."""

    job_id: str
    worker: str
    losses: int
    requeued: bool


def horse_signal(exc_string: str) -> int | None:
    """The signal that killed the job's work-horse, when RQ's failure line says one did."""
    match = _HORSE_DIED.search(exc_string or "")
    return int(match.group(1)) if match else None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def horse_kill_words(number: int) -> str:
    """'killed by SIGKILL (out of memory?)': what most likely sent the signal, for the job's note and error."""
    name = signal_name(number)
    guess = {signal.SIGKILL: " (out of memory?)", signal.SIGSEGV: " (a crash)", signal.SIGBUS: " (a crash)",
             signal.SIGABRT: " (a crash)"}.get(number, "")
    return f"killed by {name}{guess}"


def requeue_killed_horse(conn: redis.Redis, job_id: str) -> Reaped | None:
    """Queue again a FAILED job whose work-horse a signal killed, unless it already ran again HORSE_RETRIES
    times or a cancel was requested; None when the job is left as it is."""
    job_key = RQJob.key_for(job_id)
    with conn.pipeline() as pipe:
        try:
            pipe.watch(job_key)
            status = conn.hget(job_key, "status")
            if status is None or status.decode() != JobStatus.FAILED.value:
                return None
            job = RQJob.fetch(job_id, connection=conn, serializer=JSONSerializer)
            result = job.latest_result()
            number = horse_signal((result.exc_string or "") if result else "")
            kills = int((job.meta or {}).get(HORSE_KILLS_META, 0)) + 1
            if number is None or kills > HORSE_RETRIES or _cancel_requested(conn, job_id):
                return None
            worker = (result.worker_name if result else "") or ""
            job.meta[HORSE_KILLS_META] = kills
            note = (f"the work-horse running this job on worker {worker or 'unknown'} was {horse_kill_words(number)}; "
                    f"the job ran again (retry {kills} of {HORSE_RETRIES})")
            job.meta[NOTES_META] = [*_notes(job), note]
            job.meta["progress"] = {"stage": "queued again", "fraction": 0.0, "message": note}
            job.started_at = None
            job.ended_at = None
            job.worker_name = None
            queue = Queue(job.origin, connection=conn, serializer=JSONSerializer)
            pipe.multi()
            pipe.zrem(FailedJobRegistry(job.origin, connection=conn, serializer=JSONSerializer).key, job_id)
            queue.enqueue_job(job, pipeline=pipe, at_front=True)
            pipe.execute()
        except (redis.WatchError, NoSuchJobError):
            return None  # it changed meanwhile (another replica or GetJob got there first)
    log.warning("job %s: %s", job_id, note)
    return Reaped(job_id=job_id, worker=worker, losses=kills, requeued=True)


def _notes(job: RQJob) -> list[str]:
    notes = (job.meta or {}).get(NOTES_META)
    return [str(n) for n in notes] if isinstance(notes, list) else []


def _cancel_requested(conn: redis.Redis, job_id: str) -> bool:
    tenant = job_tenant(conn, job_id)
    if tenant is None:
        return False
    raw = conn.get(Keys(tenant).record("job", job_id))
    try:
        return bool(raw and json.loads(raw).get("cancel_requested"))
    except ValueError:
        return False


class Reaper:
    """Checks the queue's started executions; `run(stop)` loops until `stop` is set."""

    def __init__(self, conn: redis.Redis, config: Config) -> None:
        self.conn = conn
        self.config = config
        self.queue = Queue(config.queue_name, connection=conn, serializer=JSONSerializer)
        self.started = StartedJobRegistry(config.queue_name, connection=conn, serializer=JSONSerializer)
        self.intermediate = IntermediateQueue(self.queue.key, connection=conn)
        self.failed = FailedJobRegistry(config.queue_name, connection=conn, serializer=JSONSerializer)
        # (job id, registry score) of failed jobs already judged; a job failing again gets a new score.
        self._judged_failures: set[tuple[bytes, float]] = set()
        # job id -> when this reaper first saw it in the intermediate list, unstarted (time.monotonic()).
        self._unstarted_since: dict[str, float] = {}
        # Each pass also deletes the jobs that ended config.job_ttl ago. Imported here: retention imports
        # tenants, which import jobs, which import this module.
        from service.retention import Retention

        self.retention = Retention(conn, config)

    def run(self, stop: threading.Event) -> None:
        resume_at = 0.0
        outage = False
        while not stop.wait(self.config.reap_interval):
            if time.monotonic() < resume_at:
                continue
            try:
                if outage:  # Redis answers only now: the workers get a full worker_timeout from here
                    self.conn.ping()
                    outage, resume_at = False, time.monotonic() + self.config.worker_timeout
                    continue
                self.reap()
                self.retention.sweep()
            except redis.RedisError as exc:
                # Redis away: workers could not beat either (their keys may even expire), so the wait
                # before any job counts as abandoned starts when Redis is back, not when it went.
                log.debug("reaper: Redis unavailable: %s", exc)
                outage, resume_at = True, time.monotonic() + self.config.reap_interval
            except Exception:  # noqa: BLE001 - the reaper must outlive any one bad job
                log.exception("reaper: unexpected error")

    def reap(self) -> list[Reaped]:
        """One pass over the started executions and the intermediate list; returns the jobs it handled."""
        done = []
        for entry in self.conn.zrange(self.started.key, 0, -1):
            composite = entry.decode() if isinstance(entry, bytes) else str(entry)
            try:
                job_id, execution_id = parse_composite_key(composite)
            except ValueError:
                continue
            reaped = self._reap_if_abandoned(job_id, execution_id)
            if reaped is not None:
                done.append(reaped)
        return done + self._reap_stranded() + self._retry_killed_horses()

    def _retry_killed_horses(self) -> list[Reaped]:
        """Failed jobs (new since the last pass) whose work-horse a signal killed, queued again once."""
        failures = {(member, score) for member, score in self.conn.zrange(self.failed.key, 0, -1, withscores=True)}
        fresh = failures - self._judged_failures
        self._judged_failures = failures
        done = []
        for member, _ in fresh:
            reaped = requeue_killed_horse(self.conn, member.decode())
            if reaped is not None:
                done.append(reaped)
        return done

    def _reap_stranded(self) -> list[Reaped]:
        """Jobs left in the intermediate list by a worker that died between taking them and starting them."""
        now = time.monotonic()
        waiting = set(self.intermediate.get_job_ids())
        self._unstarted_since = {j: t for j, t in self._unstarted_since.items() if j in waiting}
        done = []
        for job_id in waiting:
            since = self._unstarted_since.setdefault(job_id, now)
            if now - since < self.config.worker_timeout:
                continue
            try:
                reaped = self._reap_if_stranded(job_id)
            except redis.WatchError:
                continue  # it moved meanwhile: look again next pass
            del self._unstarted_since[job_id]  # handled, or started after all: a new stay starts afresh
            if reaped is not None:
                done.append(reaped)
        return done

    def _late(self, execution: Execution, now: float) -> tuple[bool, str]:
        """(abandoned?, worker name) of one execution, read inside the caller's WATCH."""
        last_beat, worker = self.conn.hmget(execution.key, "last_heartbeat", "worker_name")
        ttl_ms = self.conn.pttl(execution.key)
        worker_name = worker.decode() if worker else ""
        if last_beat is None or ttl_ms == -2:  # the execution record expired: nobody beat for a minute
            return True, worker_name
        if worker_name and self._worker_gone(worker_name):
            return True, worker_name
        since = now - float(last_beat)
        interval = max(1.0, ttl_ms / 1000.0 + since - _RQ_TTL_SLACK_SECONDS) if ttl_ms > 0 else 1.0
        return since > max(self.config.worker_timeout, _LATE_INTERVALS * interval), worker_name

    def _worker_gone(self, name: str) -> bool:
        """The worker's key expired, or the worker registered its death (RQ keeps the key 60 s more)."""
        key = Worker.redis_worker_namespace_prefix + name
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.exists(key)
            pipe.hexists(key, "death")
            exists, died = pipe.execute()
        return not exists or bool(died)

    def _reap_if_abandoned(self, job_id: str, execution_id: str) -> Reaped | None:
        execution = Execution(id=execution_id, job_id=job_id, connection=self.conn)
        job_key = RQJob.key_for(job_id)
        with self.conn.pipeline() as pipe:
            try:
                pipe.watch(job_key, execution.key)
                status = self.conn.hget(job_key, "status")
                if status is None:  # the job's data is gone: drop the stale entry
                    pipe.multi()
                    pipe.zrem(self.started.key, execution.composite_key)
                    pipe.execute()
                    return None
                if status.decode() != JobStatus.STARTED.value:
                    return None  # ended or requeued; RQ's own cleanup removes leftovers
                abandoned, worker = self._late(execution, time.time())
                if not abandoned:
                    return None
                job = RQJob.fetch(job_id, connection=self.conn, serializer=JSONSerializer)
                execution.worker_name = worker
                pipe.multi()
                execution.delete(job=job, pipeline=pipe)
                reaped = self._requeue_or_fail(job, worker, pipe)
                pipe.execute()
            except (redis.WatchError, NoSuchJobError):
                return None  # it moved on meanwhile: alive after all, or another replica got there first
        self._log(reaped, "stopped responding")
        return reaped

    def _reap_if_stranded(self, job_id: str) -> Reaped | None:
        """Requeue or fail a stranded job; None when it started or ended after all. Raises redis.WatchError."""
        job_key = RQJob.key_for(job_id)
        with self.conn.pipeline() as pipe:
            try:
                # A worker that is only slow would start the job by adding it to the started registry
                # and taking it off the intermediate list: either change aborts this transaction.
                pipe.watch(job_key, self.intermediate.key, self.started.key)
                if job_id not in self.intermediate.get_job_ids() or job_id in self.started:
                    return None
                status = self.conn.hget(job_key, "status")
                pipe.multi()
                pipe.lrem(self.intermediate.key, 1, job_id)
                pipe.delete(self.intermediate.get_first_seen_key(job_id))
                if status is None or status.decode() != JobStatus.QUEUED.value:
                    pipe.execute()  # gone, cancelled or ended meanwhile: nothing left to run
                    return None
                job = RQJob.fetch(job_id, connection=self.conn, serializer=JSONSerializer)
                reaped = self._requeue_or_fail(job, "", pipe)
                pipe.execute()
            except NoSuchJobError:
                return None
        self._log(reaped, "died between taking it and starting it")
        return reaped

    def _requeue_or_fail(self, job: RQJob, worker: str, pipe: redis.client.Pipeline) -> Reaped:
        """Queue an abandoned job again, or fail it once it has lost too many workers or was cancelled."""
        losses = int((job.meta or {}).get(LOSSES_META, 0)) + 1
        cancelled = _cancel_requested(self.conn, job.id)
        requeue = losses <= self.config.job_retries and not cancelled
        if requeue:
            self._requeue(job, losses, worker, pipe)
        else:
            why = "a cancel was requested" if cancelled else f"gave up after {losses} lost worker(s)"
            record_job_failure(
                job,
                f"{WORKER_LOST_MARK}: the worker running this job ({worker or 'unknown'}) stopped "
                f"responding; {why} (KERNELSCOPE_JOB_RETRIES={self.config.job_retries})",
                pipe,
            )
        return Reaped(job_id=job.id, worker=worker, losses=losses, requeued=requeue)

    def _log(self, reaped: Reaped, what: str) -> None:
        log.warning(
            "job %s: its worker %s %s; %s",
            reaped.job_id,
            reaped.worker or "(unknown)",
            what,
            f"queued again (lost worker {reaped.losses} of at most {self.config.job_retries})"
            if reaped.requeued
            else "failed",
        )

    def _requeue(self, job: RQJob, losses: int, worker: str, pipe: redis.client.Pipeline) -> None:
        note = (f"the worker running this job ({worker or 'unknown'}) stopped responding; "
                f"queued again (retry {losses} of {self.config.job_retries})")
        job.meta[LOSSES_META] = losses
        job.meta[NOTES_META] = [*_notes(job), note]
        job.meta["progress"] = {"stage": "queued again", "fraction": 0.0, "message": note}
        job.started_at = None
        job.ended_at = None
        job.worker_name = None
        self.queue.enqueue_job(job, pipeline=pipe, at_front=True)
