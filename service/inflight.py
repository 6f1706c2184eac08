"""InflightSlots: how many of a tenant's jobs may be queued or running at once (KERNELSCOPE_MAX_JOBS_IN_FLIGHT).

Why slots and not a count of RQ's registries: a creation must take its slot atomically with the check (two
concurrent CreateJob calls at the limit must not both pass), and a slot must come back exactly once, whether the
job ends, is cancelled, is deleted or its creation fails half-way. The slots are a sorted set of job ids scored
by claim time (registry.Keys.inflight); a claim is one Lua script (service.scripts.CLAIM_SLOT). When the set
is full, a claim first asks RQ which of its members did end (nobody may have looked at them since).
"""

from __future__ import annotations

import time

import redis
from rq.job import Job as RQJob
from rq.job import JobStatus

from service import errors, scripts
from service.registry import Keys

# RQ statuses after which a job holds no in-flight slot (a missing job counts as ended too).
_ENDED_RQ_STATUSES = frozenset(s.value.encode() for s in (
    JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED,
))
# Seconds after its claim that a slot whose job has neither an RQ job nor a record counts as abandoned
# (a creation that died half-way, or an internal job whose records expired); before, it is being created.
_CLAIM_GRACE_SECONDS = 60.0


class InflightSlots:
    """One tenant's in-flight slots (its `keys`), at most `limit` held at once."""

    def __init__(self, conn: redis.Redis, keys: Keys, limit: int) -> None:
        self.conn = conn
        self.keys = keys
        self.limit = limit
        self._claim_slot = conn.register_script(scripts.CLAIM_SLOT)

    def claim(self, job_id: str) -> None:
        """Take one of the tenant's slots for `job_id`, or RESOURCE_EXHAUSTED naming the limit."""
        key = self.keys.inflight()
        for attempt in range(2):
            count = int(self._claim_slot(keys=[key], args=[job_id, self.limit, time.time()]))
            if count < 0:
                return
            if attempt == 0:
                self.release_ended()
        raise errors.resource_exhausted(
            "TOO_MANY_JOBS",
            f"tenant {self.keys.tenant!r} has {count} jobs queued or running, the limit is {self.limit} "
            "(KERNELSCOPE_MAX_JOBS_IN_FLIGHT); wait for some to finish",
        )

    def release(self, job_id: str, pipe: redis.client.Pipeline | None = None) -> bool:
        """Give the job's slot back; True only for the call that actually released it (with `pipe`, queued in
        that transaction, and True)."""
        if pipe is not None:
            pipe.zrem(self.keys.inflight(), job_id)
            return True
        return bool(self.conn.zrem(self.keys.inflight(), job_id))

    def release_ended(self) -> None:
        """Free the slots of jobs RQ says have ended (or no longer holds) though nobody looked at them since."""
        claims = [(m.decode(), score) for m, score in self.conn.zrange(self.keys.inflight(), 0, -1, withscores=True)]
        if not claims:
            return
        with self.conn.pipeline(transaction=False) as pipe:
            for job_id, _ in claims:
                pipe.hget(RQJob.key_for(job_id), "status")
                pipe.exists(self.keys.record("job", job_id))
            replies = pipe.execute()
        settled = time.time() - _CLAIM_GRACE_SECONDS
        ended = [
            job_id
            for (job_id, claimed), status, has_record in zip(claims, replies[0::2], replies[1::2])
            if status in _ENDED_RQ_STATUSES or (status is None and (has_record or claimed < settled))
        ]
        if ended:
            self.conn.zrem(self.keys.inflight(), *ended)
