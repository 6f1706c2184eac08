"""Progress bars for uploads (bytes sent) and for waiting on jobs; silent when stderr is not a terminal
(CI logs stay clean)."""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable, Iterator, Sized, TypeVar

from kernelscope.v1 import jobs_pb2


Piece = TypeVar("Piece", bound=Sized)


class _Bar:
    """A tqdm bar on stderr, or nothing: `enabled=None` means only when stderr is a terminal."""

    def __init__(self, enabled: bool | None, **options: Any) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(**{**_size(), **options})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _size() -> dict[str, int]:
    """tqdm's ncols/nrows where the terminal reports no size (a fresh pseudo-terminal, some container ttys): there
    tqdm would take 0 columns and -1 rows, draw nothing, and the bar would silently not show."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return {}
    return {} if size.columns > 0 and size.lines > 0 else {"ncols": size.columns or 100, "nrows": size.lines or 24}


class UploadBar(_Bar):
    """Bytes of an upload handed to gRPC so far. `enabled=None` means: only on a TTY."""

    def __init__(self, total: int, description: str, enabled: bool | None = None) -> None:
        super().__init__(enabled, total=total, desc=f"upload {description}"[:48], unit="B", unit_scale=True, unit_divisor=1024)

    def track(self, pieces: Iterable[Piece]) -> Iterator[Piece]:
        """`pieces` unchanged; each counts once gRPC asks for the next one (sent, flow control allowing).

        Starts from zero every time it is called, so a retried upload shows its new attempt.
        """
        if self._bar is not None:
            self._bar.reset()
        for piece in pieces:
            yield piece
            if self._bar is not None:
                self._bar.update(len(piece))


class ProgressBar(_Bar):
    """Shows the job's fraction done and its current task/stage. `enabled=None` means: only on a TTY."""

    def __init__(self, enabled: bool | None = None, description: str = "") -> None:
        super().__init__(enabled, total=100, desc=description or "job", unit="%", bar_format="{desc} {bar} {n:.0f}% [{elapsed}]")

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
