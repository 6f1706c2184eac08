"""Errors the SDK raises. Every API error keeps the gRPC status code and the service's reason.

    KernelscopeError
    ├── ApiError                 an RPC failed; .code (grpc.StatusCode), .reason ("HASH_MISMATCH"), .message
    │   ├── InvalidArgument      bad request: unknown task, malformed upload, bad options
    │   ├── NotFound             unknown model, dataset, job or artifact
    │   ├── AlreadyExists
    │   ├── FailedPrecondition   the model cannot run this task, the job is in the wrong state
    │   ├── ResourceExhausted    a limit was hit; the message names it
    │   ├── Unauthenticated
    │   ├── PermissionDenied
    │   ├── Unavailable          service or Redis down (the client already retried)
    │   ├── DeadlineExceeded
    │   └── Internal             anything else
    ├── JobFailed                the job ran and failed; .job, .result (partial results), .reason
    └── ModelSourceError         the SDK could not turn the given object into an uploadable model
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from sdk.result import Result


class KernelscopeError(Exception):
    """Base of every error the SDK raises."""


class ApiError(KernelscopeError):
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, reason: str = "", code: grpc.StatusCode | None = None) -> None:
        super().__init__(f"{message} [{reason}]" if reason else message)
        self.message = message
        self.reason = reason
        if code is not None:
            self.code = code


class InvalidArgument(ApiError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ApiError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ApiError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ApiError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ApiError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(ApiError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ApiError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(ApiError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ApiError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(ApiError):
    code = grpc.StatusCode.INTERNAL


class JobFailed(KernelscopeError):
    """The job ended FAILED or CANCELLED. `result` holds whatever tasks did finish."""

    def __init__(self, result: "Result") -> None:
        error = result.job.error
        super().__init__(f"job {result.job.id} failed: {error.message} [{error.reason}]")
        self.result = result
        self.job = result.job
        self.reason = error.reason
        self.code = error.code


class ModelSourceError(KernelscopeError):
    """The object passed as a model could not be exported or read."""


# The class raised for each status code (sdk.transport maps a gRPC error through it; others raise ApiError).
BY_CODE: dict[grpc.StatusCode, type[ApiError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        Unavailable,
        DeadlineExceeded,
        Internal,
    )
}
