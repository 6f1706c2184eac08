"""A progress bar for waiting on jobs; silent when stderr is not a terminal (CI logs stay clean)."""

from __future__ import annotations

import sys
from typing import Any

from kernelscope.v1 import jobs_pb2


class ProgressBar:
    """Shows the job's fraction done and its current task/stage. `enabled=None` means: only on a TTY."""

    def __init__(self, enabled: bool | None = None, description: str = "") -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=100, desc=description or "job", unit="%", bar_format="{desc} {bar} {n:.0f}% [{elapsed}]")

    def update(self, job: jobs_pb2.Job) -> None:
        if self._bar is None:
            return
        p = job.progress
        state = jobs_pb2.JobState.Name(job.state).lower()
        stage = f"{p.task}: {p.stage}" if p.task else (p.stage or state)
        self._bar.set_description_str(f"{job.id[:12]} {stage}"[:60])
        target = 100.0 if job.state == jobs_pb2.SUCCEEDED else 100.0 * p.fraction
        self._bar.n = max(self._bar.n, target)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
