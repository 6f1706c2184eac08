"""A handle on a submitted job: its state, waiting for it (with progress), its result, cancelling it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from kernelscope.states import TERMINAL
from kernelscope.v1 import jobs_pb2
from sdk.errors import JobFailed
from sdk.progress import ProgressBar
from sdk.result import Result

if TYPE_CHECKING:
    from sdk.client import Client


class Job:
    def __init__(self, proto: jobs_pb2.Job, client: "Client") -> None:
        self.proto = proto
        self._client = client

    @property
    def id(self) -> str:
        return self.proto.id

    @property
    def state(self) -> str:
        return jobs_pb2.JobState.Name(self.proto.state)

    @property
    def done(self) -> bool:
        return self.proto.state in TERMINAL

    def refresh(self) -> "Job":
        self.proto = self._client.get_job(self.id).proto
        return self

    def cancel(self) -> "Job":
        self.proto = self._client.cancel_job(self.id).proto
        return self

    def wait(self, timeout: float | None = None, progress: bool | None = None, raise_on_error: bool = True) -> Result:
        """Block until the job ends (or `timeout` seconds pass: DeadlineExceeded); show a bar on a TTY.

        A FAILED or CANCELLED job raises JobFailed (with the partial Result) unless raise_on_error=False.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = ProgressBar(progress, description=self.id[:12])
        try:
            for update in self._client.watch_job(self.id, deadline=deadline):
                self.proto = update
                bar.update(update)
        finally:
            bar.close()
        result = Result(self.proto, self._client)
        if raise_on_error and self.proto.state != jobs_pb2.SUCCEEDED:
            raise JobFailed(result)
        return result

    def result(self, raise_on_error: bool = True) -> Result:
        return self.wait(progress=False, raise_on_error=raise_on_error)

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, state={self.state})"
