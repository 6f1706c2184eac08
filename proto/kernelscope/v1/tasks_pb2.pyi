from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor
TASK_FIELD_NUMBER: _ClassVar[int]
task: _descriptor.FieldDescriptor

class KernelVizOptions(_message.Message):
    __slots__ = ("layers", "channels", "steps", "seed", "objective", "canvas", "tv_weight")
    class Objective(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OBJECTIVE_UNSPECIFIED: _ClassVar[KernelVizOptions.Objective]
        NEURON: _ClassVar[KernelVizOptions.Objective]
        CHANNEL: _ClassVar[KernelVizOptions.Objective]
    OBJECTIVE_UNSPECIFIED: KernelVizOptions.Objective
    NEURON: KernelVizOptions.Objective
    CHANNEL: KernelVizOptions.Objective
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    CANVAS_FIELD_NUMBER: _ClassVar[int]
    TV_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedScalarFieldContainer[str]
    channels: _containers.RepeatedScalarFieldContainer[int]
    steps: int
    seed: int
    objective: KernelVizOptions.Objective
    canvas: _containers.RepeatedScalarFieldContainer[int]
    tv_weight: float
    def __init__(self, layers: _Optional[_Iterable[str]] = ..., channels: _Optional[_Iterable[int]] = ..., steps: _Optional[int] = ..., seed: _Optional[int] = ..., objective: _Optional[_Union[KernelVizOptions.Objective, str]] = ..., canvas: _Optional[_Iterable[int]] = ..., tv_weight: _Optional[float] = ...) -> None: ...

class TConvStatsOptions(_message.Message):
    __slots__ = ("layers", "fit_conv3d", "residual_threshold", "restarts", "fit_steps", "seed", "identity_tolerance")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    FIT_CONV3D_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    FIT_STEPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedScalarFieldContainer[str]
    fit_conv3d: bool
    residual_threshold: float
    restarts: int
    fit_steps: int
    seed: int
    identity_tolerance: float
    def __init__(self, layers: _Optional[_Iterable[str]] = ..., fit_conv3d: _Optional[bool] = ..., residual_threshold: _Optional[float] = ..., restarts: _Optional[int] = ..., fit_steps: _Optional[int] = ..., seed: _Optional[int] = ..., identity_tolerance: _Optional[float] = ...) -> None: ...

class ClassFiltersOptions(_message.Message):
    __slots__ = ("layer", "k", "mass_coverage", "accuracy_retention", "ranking", "mi_estimator", "bootstrap", "seed", "fit_fraction")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MASS_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_RETENTION_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    MI_ESTIMATOR_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FIT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    layer: str
    k: int
    mass_coverage: float
    accuracy_retention: float
    ranking: str
    mi_estimator: str
    bootstrap: int
    seed: int
    fit_fraction: float
    def __init__(self, layer: _Optional[str] = ..., k: _Optional[int] = ..., mass_coverage: _Optional[float] = ..., accuracy_retention: _Optional[float] = ..., ranking: _Optional[str] = ..., mi_estimator: _Optional[str] = ..., bootstrap: _Optional[int] = ..., seed: _Optional[int] = ..., fit_fraction: _Optional[float] = ...) -> None: ...

class DescribeOptions(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("title", "needs_dataset", "needs_module", "schema_version", "analysis")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    NEEDS_DATASET_FIELD_NUMBER: _ClassVar[int]
    NEEDS_MODULE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_FIELD_NUMBER: _ClassVar[int]
    title: str
    needs_dataset: bool
    needs_module: bool
    schema_version: int
    analysis: bool
    def __init__(self, title: _Optional[str] = ..., needs_dataset: _Optional[bool] = ..., needs_module: _Optional[bool] = ..., schema_version: _Optional[int] = ..., analysis: _Optional[bool] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("name", "kernel_viz", "tconv_stats", "class_filters", "describe")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KERNEL_VIZ_FIELD_NUMBER: _ClassVar[int]
    TCONV_STATS_FIELD_NUMBER: _ClassVar[int]
    CLASS_FILTERS_FIELD_NUMBER: _ClassVar[int]
    DESCRIBE_FIELD_NUMBER: _ClassVar[int]
    name: str
    kernel_viz: KernelVizOptions
    tconv_stats: TConvStatsOptions
    class_filters: ClassFiltersOptions
    describe: DescribeOptions
    def __init__(self, name: _Optional[str] = ..., kernel_viz: _Optional[_Union[KernelVizOptions, _Mapping]] = ..., tconv_stats: _Optional[_Union[TConvStatsOptions, _Mapping]] = ..., class_filters: _Optional[_Union[ClassFiltersOptions, _Mapping]] = ..., describe: _Optional[_Union[DescribeOptions, _Mapping]] = ...) -> None: ...
