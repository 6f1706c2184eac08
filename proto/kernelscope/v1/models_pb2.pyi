import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from kernelscope.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_FORMAT_UNSPECIFIED: _ClassVar[ModelFormat]
    TORCH_EXPORT: _ClassVar[ModelFormat]
    ONNX: _ClassVar[ModelFormat]
    TORCHSCRIPT: _ClassVar[ModelFormat]
    STATE_DICT: _ClassVar[ModelFormat]
    SAFETENSORS: _ClassVar[ModelFormat]
MODEL_FORMAT_UNSPECIFIED: ModelFormat
TORCH_EXPORT: ModelFormat
ONNX: ModelFormat
TORCHSCRIPT: ModelFormat
STATE_DICT: ModelFormat
SAFETENSORS: ModelFormat

class Model(_message.Message):
    __slots__ = ("id", "name", "format", "size_bytes", "sha256", "input_spec", "create_time", "architecture")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    INPUT_SPEC_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    format: ModelFormat
    size_bytes: int
    sha256: str
    input_spec: _common_pb2.InputSpec
    create_time: _timestamp_pb2.Timestamp
    architecture: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., format: _Optional[_Union[ModelFormat, str]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., input_spec: _Optional[_Union[_common_pb2.InputSpec, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., architecture: _Optional[str] = ...) -> None: ...

class ModelHeader(_message.Message):
    __slots__ = ("name", "format", "size_bytes", "sha256", "input_spec", "architecture")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    INPUT_SPEC_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: ModelFormat
    size_bytes: int
    sha256: str
    input_spec: _common_pb2.InputSpec
    architecture: str
    def __init__(self, name: _Optional[str] = ..., format: _Optional[_Union[ModelFormat, str]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., input_spec: _Optional[_Union[_common_pb2.InputSpec, _Mapping]] = ..., architecture: _Optional[str] = ...) -> None: ...

class UploadModelRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ModelHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[ModelHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class DescribeModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class Layer(_message.Message):
    __slots__ = ("name", "kind", "kernel_shape", "stride", "receptive_field", "output_shape", "parameters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SHAPE_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    RECEPTIVE_FIELD_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    kernel_shape: _containers.RepeatedScalarFieldContainer[int]
    stride: _containers.RepeatedScalarFieldContainer[int]
    receptive_field: _containers.RepeatedScalarFieldContainer[int]
    output_shape: _containers.RepeatedScalarFieldContainer[int]
    parameters: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., kernel_shape: _Optional[_Iterable[int]] = ..., stride: _Optional[_Iterable[int]] = ..., receptive_field: _Optional[_Iterable[int]] = ..., output_shape: _Optional[_Iterable[int]] = ..., parameters: _Optional[int] = ...) -> None: ...

class ModelDescription(_message.Message):
    __slots__ = ("model_id", "input_spec", "layers", "supported_tasks")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_SPEC_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_TASKS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    input_spec: _common_pb2.InputSpec
    layers: _containers.RepeatedCompositeFieldContainer[Layer]
    supported_tasks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_id: _Optional[str] = ..., input_spec: _Optional[_Union[_common_pb2.InputSpec, _Mapping]] = ..., layers: _Optional[_Iterable[_Union[Layer, _Mapping]]] = ..., supported_tasks: _Optional[_Iterable[str]] = ...) -> None: ...
