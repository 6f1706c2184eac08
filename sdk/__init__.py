"""kernelscope SDK: a thin client for the kernelscope analysis service.

    import sdk
    with sdk.Client.local() as client:
        result = client.analyze("model.pt2", tasks=["tconv_stats"])
        print(result["tconv_stats"]["layers"][0])

Imports only grpcio and protobuf; torch is touched only when you hand the client a torch object.
"""

from sdk.client import Client
from sdk.errors import (
    AlreadyExists,
    ApiError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    JobFailed,
    KernelscopeError,
    ModelSourceError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from sdk.job import Job
from sdk.result import Artifact, Result, TaskOutcome
from sdk.tasks import TASK_NAMES
from sdk.transport import GrpcTransport, MockTransport, Transport

__all__ = [
    "Client",
    "Job",
    "Result",
    "TaskOutcome",
    "Artifact",
    "TASK_NAMES",
    "Transport",
    "GrpcTransport",
    "MockTransport",
    "KernelscopeError",
    "ApiError",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "FailedPrecondition",
    "ResourceExhausted",
    "Unauthenticated",
    "PermissionDenied",
    "Unavailable",
    "DeadlineExceeded",
    "Internal",
    "JobFailed",
    "ModelSourceError",
]
