"""Which job states are final, for the service (it stops watching and fills end_time) and the SDK (it stops
waiting): a job in one of them never changes state again. And where the service asks a job to stop."""

from __future__ import annotations

from kernelscope.v1 import jobs_pb2

TERMINAL: frozenset[int] = frozenset({jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED})

# A field of the job's RQ hash (rq:job:<id>) that the service sets when the job is cancelled, and the work-horse
# reads at each progress write. RQ's stop command reaches only a worker already running the job, and RQ's
# cancel of a queued job is undone when a worker that took it that moment marks it started; the field outlives
# both (RQ writes its own fields and leaves others alone), so a job cancelled at any moment stops.
CANCEL_FIELD = "kernelscope_cancel"
