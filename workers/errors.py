"""Errors a task or the model loader raises; the job records them with their gRPC code and reason.

    TaskError                 base: code + reason + message
    ├── BadOptions            INVALID_ARGUMENT   the task's options make no sense for this model
    ├── ModelUnusable         FAILED_PRECONDITION the model cannot run this task (format, missing layer, op)
    ├── ModelRejected         FAILED_PRECONDITION the model file is malformed, hostile or disagrees with onnxruntime
    └── DatasetUnusable       FAILED_PRECONDITION the dataset does not fit the model or the task
"""

from __future__ import annotations


class TaskError(Exception):
    """An error a user can act on. `code` is a gRPC status code name, `reason` an UPPER_SNAKE id."""

    code: str = "INTERNAL"
    default_reason: str = "TASK_FAILED"

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
