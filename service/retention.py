"""Retention: ended jobs are deleted `config.job_ttl` seconds after their end, artifacts and blobs with them.

Every public job is scheduled in one sorted set, ks:retention (job id scored by the time to look at it
next): at creation for creation + job_ttl, and again for end + job_ttl once the service sees it ended.
The reaper calls `sweep` each pass; a due job that has not ended yet is looked at again later, one that
ended job_ttl ago is deleted exactly as DeleteJob deletes it: record, RQ's data, artifacts, and each
blob no other record uses (blobs are reference-counted, registry.BlobRefs, so an artifact whose bytes
another job or tenant also holds stays stored, and the quotas are credited as the last use goes).

The deadline is computed at look time from the job's end and the current job_ttl, so changing the
setting applies to every job; job_ttl 0 keeps jobs until DeleteJob. Jobs created before retention
existed are scheduled once, by `backfill`, when a service first starts with it. DescribeModel's
internal jobs are not scheduled: their records expire in Redis after config.internal_job_ttl.
"""

from __future__ import annotations

import logging
import time

import redis
from kernelscope.states import TERMINAL

from service import errors
from service.blobstore import BlobStore
from service.config import Config
from service.registry import Keys, job_tenant
from service.tenants import Tenants

log = logging.getLogger(__name__)

_BACKFILLED_KEY = "ks:retention:backfilled"
# Jobs looked at per sweep at most, so that one pass of the reaper stays short.
_BATCH = 100
# Seconds before a due job that has not ended is looked at again (it is also rescheduled when it ends).
_RECHECK_SECONDS = 3600.0


def schedule(conn: redis.Redis, job_id: str, at: float) -> None:
    """Look at job `job_id` at time `at` (seconds since the epoch), replacing an earlier schedule."""
    conn.zadd(Keys.RETENTION, {job_id: at})


def unschedule(conn: redis.Redis, job_id: str) -> None:
    conn.zrem(Keys.RETENTION, job_id)


class Retention:
    """Deletes ended jobs past config.job_ttl; `sweep()` handles the jobs due now."""

    def __init__(self, conn: redis.Redis, config: Config, tenants: Tenants | None = None) -> None:
        self.conn = conn
        self.config = config
        self._tenants = tenants

    @property
    def tenants(self) -> Tenants:
        """Built at the first deletion, so a reaper that never deletes never opens the blob store."""
        if self._tenants is None:
            self._tenants = Tenants(self.conn, self.config, BlobStore(self.config.data_dir))
        return self._tenants

    def sweep(self, now: float | None = None) -> list[str]:
        """Delete the due jobs that ended job_ttl ago, reschedule the others; returns the deleted ids."""
        if self.config.job_ttl <= 0:
            return []
        self.backfill()
        now = time.time() if now is None else now
        deleted = []
        for raw in self.conn.zrangebyscore(Keys.RETENTION, "-inf", now, start=0, num=_BATCH):
            job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            try:
                if self._look(job_id, now):
                    deleted.append(job_id)
            except errors.ServiceError as exc:  # deleted meanwhile (NOT_FOUND), by DeleteJob or another replica
                log.info("retention: job %s: %s", job_id, exc.message)
                unschedule(self.conn, job_id)
            except redis.RedisError:
                raise
            except Exception:  # noqa: BLE001 - one job that cannot be handled must not hold up the others
                log.exception("retention: job %s could not be handled; trying again later", job_id)
                schedule(self.conn, job_id, now + _RECHECK_SECONDS)
        if deleted:
            log.info("retention: deleted %d job(s) ended more than %d s ago", len(deleted), self.config.job_ttl)
        return deleted

    def _look(self, job_id: str, now: float) -> bool:
        tenant = job_tenant(self.conn, job_id)
        jobs = self.tenants.get(tenant).jobs if tenant is not None else None
        if jobs is None or not self.conn.exists(jobs.keys.record("job", job_id)):
            unschedule(self.conn, job_id)  # deleted meanwhile
            return False
        job = jobs.get(job_id)
        if job.state not in TERMINAL:
            schedule(self.conn, job_id, now + min(float(self.config.job_ttl), _RECHECK_SECONDS))
            return False
        ended = job.end_time.ToNanoseconds() / 1e9 if job.HasField("end_time") else now
        deadline = ended + self.config.job_ttl
        if deadline > now:
            schedule(self.conn, job_id, deadline)
            return False
        jobs.delete(job_id)
        return True

    def backfill(self) -> None:
        """Schedule the public jobs created before retention existed, once per Redis: each is looked at
        in the next sweeps (and then kept until job_ttl after its end)."""
        if self.conn.exists(_BACKFILLED_KEY):
            return
        now = time.time()
        for index in self.conn.scan_iter(match="ks:*:jobs", count=1000):
            members = [m.decode() if isinstance(m, bytes) else m for m in self.conn.zrange(index, 0, -1)]
            ids = [m.split(":", 1)[1] for m in members if ":" in m]
            if ids:
                self.conn.zadd(Keys.RETENTION, {job_id: now for job_id in ids}, nx=True)
        self.conn.set(_BACKFILLED_KEY, int(now))
