"""Errors a task or the model loader raises; the job records them with their gRPC code and reason.

    TaskError                 base: code + reason + message
    ├── BadOptions            INVALID_ARGUMENT   the task's options make no sense for this model
    ├── ModelUnusable         FAILED_PRECONDITION the model cannot run this task (format, missing layer, op)
    ├── ModelRejected         FAILED_PRECONDITION the model file is malformed, hostile or disagrees with onnxruntime
    ├── DatasetUnusable       FAILED_PRECONDITION the dataset does not fit the model or the task
    └── ResourceExhausted     RESOURCE_EXHAUSTED  the model needed more memory than the job may use (MEMORY_LIMIT)

memory_error(exc) turns the allocator's failures (MemoryError, torch.OutOfMemoryError, torch's CPU
allocator RuntimeError under the job's address-space limit) into ResourceExhausted, so that a model
that asks for 20 GB is told so instead of being reported as a crash.
"""

from __future__ import annotations

import re
import sys


class JobCancelled(Exception):
    """The service cancelled the job while this worker runs it: the horse stops.

    A cancel that reaches a job in the moment a worker takes it off the queue cancels the queued copy (before or
    after the worker marks it started), so RQ's stop command is never sent and the service already shows
    CANCELLED; the job would run on, holding the worker, until it ended. The horse reads the service's cancel
    flag (kernelscope.states.CANCEL_FIELD) at each progress write.
    """


class TaskError(Exception):
    """An error a user can act on. `code` is a gRPC status code name, `reason` an UPPER_SNAKE id."""

    code: str = "INTERNAL"
    default_reason: str = "TASK_FAILED"  # kernelscope.contract.TASK_FAILED: the model process imports no protobuf

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "reason": self.reason, "message": self.message}


class BadOptions(TaskError):
    code = "INVALID_ARGUMENT"
    default_reason = "BAD_TASK_OPTIONS"


class ModelUnusable(TaskError):
    code = "FAILED_PRECONDITION"
    default_reason = "MODEL_UNUSABLE_FOR_TASK"


class ModelRejected(TaskError):
    code = "FAILED_PRECONDITION"
    default_reason = "MODEL_REJECTED"


class DatasetUnusable(TaskError):
    code = "FAILED_PRECONDITION"
    default_reason = "DATASET_UNUSABLE"


class ResourceExhausted(TaskError):
    code = "RESOURCE_EXHAUSTED"
    default_reason = "MEMORY_LIMIT"


# What torch's allocators say when an allocation fails (CPU under RLIMIT_AS, CUDA when the card is full).
_ALLOCATOR_FAILURE = re.compile(r"can't allocate memory|CUDA out of memory|out of memory|Cannot allocate memory", re.IGNORECASE)


def memory_error(exc: BaseException) -> ResourceExhausted | None:
    """The ResourceExhausted for an allocation failure, or None when `exc` is something else."""
    if isinstance(exc, ResourceExhausted):
        return exc
    if isinstance(exc, TaskError):
        return None
    torch_oom = getattr(sys.modules.get("torch"), "OutOfMemoryError", MemoryError)  # no torch import for this
    if isinstance(exc, (MemoryError, torch_oom)) or (isinstance(exc, RuntimeError) and _ALLOCATOR_FAILURE.search(str(exc))):
        return ResourceExhausted(
            "the model tried to allocate more memory than a job may use (the job's memory limit); "
            "use a smaller input, batch or model",
            reason="MEMORY_LIMIT",
        )
    return None


def first_line(exc: BaseException) -> str:
    """An exception's first line (its type when it says nothing), at most 300 characters: for refusals that quote
    a library's error without its traceback or its pages of detail."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
