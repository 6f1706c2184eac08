from kernelscope.v1 import common_pb2 as _common_pb2
from kernelscope.v1 import datasets_pb2 as _datasets_pb2
from kernelscope.v1 import jobs_pb2 as _jobs_pb2
from kernelscope.v1 import models_pb2 as _models_pb2
from kernelscope.v1 import tasks_pb2 as _tasks_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FetchBlobRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class ArtifactHeader(_message.Message):
    __slots__ = ("job_id", "name", "media_type", "size_bytes", "sha256", "task")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    media_type: str
    size_bytes: int
    sha256: str
    task: str
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., media_type: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., task: _Optional[str] = ...) -> None: ...

class WriteArtifactRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ArtifactHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[ArtifactHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("job_id", "model", "dataset", "tasks")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model: _models_pb2.Model
    dataset: _datasets_pb2.Dataset
    tasks: _containers.RepeatedCompositeFieldContainer[_tasks_pb2.Task]
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[_Union[_models_pb2.Model, _Mapping]] = ..., dataset: _Optional[_Union[_datasets_pb2.Dataset, _Mapping]] = ..., tasks: _Optional[_Iterable[_Union[_tasks_pb2.Task, _Mapping]]] = ...) -> None: ...

class SandboxLayers(_message.Message):
    __slots__ = ("landlock_abi", "landlock", "network", "seccomp", "no_new_privs", "rlimits", "environment_scrubbed", "warnings")
    LANDLOCK_ABI_FIELD_NUMBER: _ClassVar[int]
    LANDLOCK_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    SECCOMP_FIELD_NUMBER: _ClassVar[int]
    NO_NEW_PRIVS_FIELD_NUMBER: _ClassVar[int]
    RLIMITS_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_SCRUBBED_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    landlock_abi: int
    landlock: bool
    network: str
    seccomp: bool
    no_new_privs: bool
    rlimits: _containers.RepeatedScalarFieldContainer[str]
    environment_scrubbed: bool
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, landlock_abi: _Optional[int] = ..., landlock: _Optional[bool] = ..., network: _Optional[str] = ..., seccomp: _Optional[bool] = ..., no_new_privs: _Optional[bool] = ..., rlimits: _Optional[_Iterable[str]] = ..., environment_scrubbed: _Optional[bool] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class JobManifest(_message.Message):
    __slots__ = ("results", "error", "worker", "sandbox")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_jobs_pb2.TaskResult]
    error: _common_pb2.ErrorDetail
    worker: str
    sandbox: SandboxLayers
    def __init__(self, results: _Optional[_Iterable[_Union[_jobs_pb2.TaskResult, _Mapping]]] = ..., error: _Optional[_Union[_common_pb2.ErrorDetail, _Mapping]] = ..., worker: _Optional[str] = ..., sandbox: _Optional[_Union[SandboxLayers, _Mapping]] = ...) -> None: ...
