"""Progress of a running job, written to the RQ job's meta where the service reads it.

Tasks report their own fraction; the reporter maps it onto the whole job and throttles writes to
Redis so that a task may call it in its inner loop. Progress is not data: a write that cannot reach
Redis is dropped (the task carries on) and the next report after the outage says where the job is.
Each write also reads whether the job was cancelled (kernelscope.states.CANCEL_FIELD, or RQ's CANCELED status): a
job cancelled while it runs stops there (workers.errors.JobCancelled).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from kernelscope.states import CANCEL_FIELD
from rq.job import JobStatus

from workers.errors import JobCancelled

MIN_INTERVAL_S = 0.25  # at most this often to Redis, except at stage changes
# After a write that could not reach Redis, reports are dropped unsent for this long (each try costs a connect).
OUTAGE_RETRY_S = 1.0

log = logging.getLogger(__name__)


class JobProgress:
    """Writes {"stage", "fraction", "task", "task_index", "task_count", "message"} into job.meta["progress"]."""

    def __init__(self, rq_job: Any | None, task_count: int) -> None:
        self._job = rq_job
        self.task_count = max(task_count, 1)
        self.task = ""
        self.task_index = 0
        self._stage = ""
        self._last_write = 0.0
        self._retry_at = 0.0  # while Redis is unreachable: no write before this (monotonic) time
        self.dropped = 0  # reports dropped in the current outage
        self.last: dict[str, Any] = {}

    def start_task(self, index: int, name: str) -> None:
        self.task_index, self.task = index, name
        self.report("starting", 0.0)

    def report(self, stage: str, fraction: float, message: str = "") -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        overall = (self.task_index + fraction) / self.task_count
        self.last = {
            "stage": stage,
            "fraction": round(overall, 4),
            "task": self.task,
            "task_index": self.task_index,
            "task_count": self.task_count,
            "message": message,
        }
        now = time.monotonic()
        if stage != self._stage or now - self._last_write >= MIN_INTERVAL_S or fraction >= 1.0:
            self._stage, self._last_write = stage, now
            self._write()

    def publish(self, report: dict[str, Any]) -> None:
        """Write a report computed elsewhere (by the model process), keeping only the known, typed fields."""
        try:
            self.last = {
                "stage": str(report.get("stage", ""))[:200],
                "fraction": min(max(float(report.get("fraction", 0.0)), 0.0), 1.0),
                "task": str(report.get("task", ""))[:200],
                "task_index": int(report.get("task_index", 0)),
                "task_count": self.task_count,
                "message": str(report.get("message", ""))[:1000],
            }
        except (TypeError, ValueError):
            return
        self.task, self.task_index = self.last["task"], min(max(self.last["task_index"], 0), self.task_count - 1)
        self._write()

    def _write(self) -> None:
        if self._job is None:
            return
        now = time.monotonic()
        if now < self._retry_at:
            self.dropped += 1
            return
        self._job.meta["progress"] = self.last
        try:
            self._job.save_meta()
            status, flag = self._job.connection.hmget(self._job.key, "status", CANCEL_FIELD)
            cancelled = bool(flag) or status == JobStatus.CANCELED.value.encode()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if not self.dropped:
                log.warning("progress dropped while Redis is unreachable (the job carries on): %s", exc)
            self.dropped += 1
            self._retry_at = now + OUTAGE_RETRY_S
            return
        if self.dropped:
            log.warning("progress written again after %d dropped report(s)", self.dropped)
            self.dropped, self._retry_at = 0, 0.0
        if cancelled:
            raise JobCancelled(f"job {self._job.id} was cancelled while it ran")


class PipeProgress(JobProgress):
    """In the sandboxed model process: the same throttled reports, sent to the horse instead of Redis."""

    def __init__(self, channel: Any, task_count: int) -> None:
        super().__init__(None, task_count)
        self._channel = channel

    def _write(self) -> None:
        self._channel.send("progress", progress=self.last)
