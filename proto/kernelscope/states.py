"""Which job states are final, for the service (it stops watching and fills end_time) and the SDK (it stops
waiting): a job in one of them never changes state again."""

from __future__ import annotations

from kernelscope.v1 import jobs_pb2

TERMINAL: frozenset[int] = frozenset({jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED})
