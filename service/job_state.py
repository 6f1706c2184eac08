"""How RQ's view of a job (its status, the JobManifest its function returned, RQ's failure line) becomes the
API's Job: states, results, errors and progress, each text bounded so that every stored outcome stays readable."""

from __future__ import annotations

import signal
from typing import Any

from kernelscope import contract
from kernelscope.v1 import common_pb2, jobs_pb2

from service.reaper import WORKER_LOST_MARK, horse_kill_words, horse_signal

# What a job's stored outcome may hold, so that every record stays readable (the gRPC message limit is
# 16 MiB): its tasks' summaries together, and each text the worker reports (error messages, progress).
MAX_SUMMARIES_BYTES = 4 * 1024 * 1024
MAX_TEXT_CHARS = 4096


def text(value: Any) -> str:
    """A worker-reported text as stored: at most MAX_TEXT_CHARS characters."""
    out = str(value)
    return out if len(out) <= MAX_TEXT_CHARS else out[: MAX_TEXT_CHARS - 1] + "…"


def set_error(detail: common_pb2.ErrorDetail, code: str, reason: str, message: str) -> None:
    detail.code, detail.reason, detail.message = text(code)[:64], text(reason)[:64], text(message)


def error_from(detail: common_pb2.ErrorDetail, raw: common_pb2.ErrorDetail) -> None:
    read = contract.error(raw.code, raw.reason, raw.message)
    set_error(detail, read.code, read.reason, read.message)


def set_progress(progress: jobs_pb2.Progress, raw: dict[str, Any]) -> None:
    try:
        progress.stage = text(raw.get("stage") or "")
        progress.fraction = min(1.0, max(0.0, float(raw.get("fraction") or 0.0)))
        progress.task = text(raw.get("task") or "")
        progress.task_index = int(raw.get("task_index") or 0)
        progress.task_count = int(raw.get("task_count") or 0)
        progress.message = text(raw.get("message") or "")
    except (TypeError, ValueError, OverflowError):
        pass  # a malformed progress report is not worth failing a read over


def apply_manifest(job: jobs_pb2.Job, raw: Any) -> None:
    """SUCCEEDED when neither the manifest nor any task reports an error, else FAILED with the first error."""
    try:
        manifest = contract.manifest_from_json(raw)
    except contract.BadManifest as exc:
        job.state = jobs_pb2.FAILED
        set_error(job.error, "INTERNAL", "BAD_MANIFEST", str(exc))
        return
    if manifest.worker:
        job.worker = text(manifest.worker)
    first_task_error: common_pb2.ErrorDetail | None = None
    room = MAX_SUMMARIES_BYTES
    for reported in manifest.results[: len(job.tasks)]:
        result = job.results.add(task=text(reported.task)[:64])
        encoded = reported.summary_json
        if len(encoded) > room:  # kept out of the record: it would make the job unreadable
            set_error(
                result.error, "RESOURCE_EXHAUSTED", "SUMMARY_TOO_LARGE",
                f"the task's summary is {len(encoded)} bytes of JSON; a job's summaries may hold "
                f"{MAX_SUMMARIES_BYTES} bytes together",
            )
            first_task_error = first_task_error or result.error
            continue
        room -= len(encoded)
        result.summary_json = encoded
        result.duration_seconds = reported.duration_seconds
        if reported.HasField("error"):
            error_from(result.error, reported.error)
            first_task_error = first_task_error or result.error
    if manifest.HasField("error"):
        job.state = jobs_pb2.FAILED
        error_from(job.error, manifest.error)
    elif first_task_error is not None:
        job.state = jobs_pb2.FAILED
        job.error.CopyFrom(first_task_error)
    else:
        job.state = jobs_pb2.SUCCEEDED
        job.progress.fraction = 1.0


def apply_failure(job: jobs_pb2.Job, exc_string: str, horse_retries: int = 0) -> None:
    """A job whose function raised (or was killed): WORKER_FAILED with the exception's last line, WORKER_LOST
    when its worker died once too often (UNAVAILABLE: submitting it again may well work), or WORK_HORSE_KILLED
    when a signal killed its work-horse after `horse_retries` runs again. (A job stopped at its timeout is not
    here: its function returns a manifest saying so, kernelscope.contract.timed_out.)"""
    lines = [line for line in exc_string.strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else "the worker failed without an exception"
    if (number := horse_signal(exc_string)) is not None:
        _horse_killed(job, number, horse_retries)
    elif WORKER_LOST_MARK in exc_string or "AbandonedJobError" in exc_string:
        message = last.split(WORKER_LOST_MARK, 1)[-1].strip(" :") if WORKER_LOST_MARK in last else (
            "the worker running this job stopped responding and the job was given up"
        )
        set_error(job.error, "UNAVAILABLE", "WORKER_LOST", message)
    else:
        set_error(job.error, "INTERNAL", "WORKER_FAILED", last)


def _horse_killed(job: jobs_pb2.Job, number: int, retries: int) -> None:
    """SIGKILL is most often the out-of-memory killer, on the job's model: RESOURCE_EXHAUSTED; a stop from
    outside (SIGTERM, SIGINT, ...) is UNAVAILABLE; a crash (SIGSEGV, SIGABRT, ...) of the horse is INTERNAL."""
    runs = f"; it ran {retries + 1} times and was killed each time" if retries else ""
    message = f"work-horse {horse_kill_words(number)}{runs}"
    if number == signal.SIGKILL:
        message += "; if the model needs much memory, use a smaller input, batch or model"
        set_error(job.error, "RESOURCE_EXHAUSTED", "WORK_HORSE_KILLED", message)
    elif number in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE):
        set_error(job.error, "INTERNAL", "WORK_HORSE_CRASHED", message)
    else:
        set_error(job.error, "UNAVAILABLE", "WORK_HORSE_KILLED", message)
