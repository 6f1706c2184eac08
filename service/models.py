"""What the service checks about a model before accepting its bytes: the upload header and its input spec."""

from __future__ import annotations

import math

from kernelscope import ids
from kernelscope.v1 import common_pb2, models_pb2

from service import errors, uploads
from service.blobstore import check_sha256

# Formats that hold only weights: activation tasks need a registered architecture to load them into.
WEIGHTS_ONLY_FORMATS = frozenset({models_pb2.STATE_DICT, models_pb2.SAFETENSORS})
_MAX_NAME = 255


def is_runnable(model: models_pb2.Model) -> bool:
    """Whether a worker can build a module for activations and gradients from this model."""
    return model.format not in WEIGHTS_ONLY_FORMATS or bool(model.architecture)


def check_header(header: models_pb2.ModelHeader, max_bytes: int) -> models_pb2.Model:
    """The Model an upload would create (without create_time), or the error that refuses it at once."""
    if header.format == models_pb2.MODEL_FORMAT_UNSPECIFIED or header.format not in models_pb2.ModelFormat.values():
        names = ", ".join(n for n in models_pb2.ModelFormat.keys() if n != "MODEL_FORMAT_UNSPECIFIED")
        raise errors.invalid_argument("FORMAT_REQUIRED", f"the header's format must be set to one of {names}")
    check_sha256(header.sha256, "header.sha256")
    uploads.check_size(header.size_bytes, max_bytes, "model")
    if len(header.name) > _MAX_NAME:
        raise errors.invalid_argument("BAD_NAME", f"name is longer than {_MAX_NAME} characters")
    if len(header.architecture) > _MAX_NAME:
        raise errors.invalid_argument("BAD_ARCHITECTURE", f"architecture is longer than {_MAX_NAME} characters")
    check_input_spec(header.input_spec)
    return models_pb2.Model(
        id=ids.model_id(header),
        name=header.name,
        format=header.format,
        size_bytes=header.size_bytes,
        sha256=header.sha256,
        input_spec=header.input_spec,
        architecture=header.architecture,
    )


def check_input_spec(spec: common_pb2.InputSpec) -> None:
    """Refuse an input spec a worker could not honour; an empty spec is fine (the worker infers it)."""
    if any(s <= 0 for s in spec.shape):
        raise _bad_spec(f"shape entries must be positive, got {list(spec.shape)}")
    channels = spec.shape[0] if spec.shape else None
    for name, values in (("mean", spec.mean), ("std", spec.std)):
        if values and channels is not None and len(values) not in (1, channels):
            raise _bad_spec(f"{name} has {len(values)} entries but the input has {channels} channels")
        if any(not math.isfinite(v) for v in values):
            raise _bad_spec(f"{name} must be finite")
    if any(v <= 0 for v in spec.std):
        raise _bad_spec("std entries must be positive")
    if not (math.isfinite(spec.value_min) and math.isfinite(spec.value_max)):
        raise _bad_spec("value_min and value_max must be finite")
    if (spec.value_min or spec.value_max) and spec.value_min >= spec.value_max:
        raise _bad_spec(f"value_min ({spec.value_min}) must be below value_max ({spec.value_max})")
    if spec.dtype and spec.dtype not in ("float16", "bfloat16", "float32", "float64"):
        raise _bad_spec(f"dtype must be a float type such as float32, got {spec.dtype!r}")


def _bad_spec(message: str) -> errors.ServiceError:
    return errors.invalid_argument("BAD_INPUT_SPEC", f"input_spec: {message}")
