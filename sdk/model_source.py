"""Whatever the caller calls a model, turned into bytes the service accepts.

A path, raw bytes, an `onnx.ModelProto`, a `torch.onnx.ONNXProgram`, a `torch.export.ExportedProgram`, or
a `torch.nn.Module` with an example input (exported with torch.export). torch and onnx are never imported
here unless the caller already imported them and handed us one of their objects: the SDK stays thin.

The format is told from the content (kernelscope.formats), never from the file name. An `.onnx` file whose tensors
keep their data in external files (PyTorch's default ONNX export writes `model.onnx.data`) is sent together
with exactly those files, as one ONNX bundle; the worker accepts external data only from inside the upload.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from kernelscope import chunks, formats
from kernelscope.v1 import common_pb2, models_pb2
from sdk.errors import ModelSourceError

FORMAT_NAMES = {
    "torch_export": models_pb2.TORCH_EXPORT,
    "pt2": models_pb2.TORCH_EXPORT,
    "onnx": models_pb2.ONNX,
    "torchscript": models_pb2.TORCHSCRIPT,
    "state_dict": models_pb2.STATE_DICT,
    "safetensors": models_pb2.SAFETENSORS,
}


@dataclass
class ModelSource:
    """Bytes to upload (from memory or a file) with their declared format, size and sha256."""

    name: str
    format: int
    size: int
    sha256: str
    input_spec: common_pb2.InputSpec = field(default_factory=common_pb2.InputSpec)
    architecture: str = ""
    data: bytes | None = None
    path: Path | None = None

    def header(self) -> models_pb2.ModelHeader:
        return models_pb2.ModelHeader(
            name=self.name,
            format=self.format,
            size_bytes=self.size,
            sha256=self.sha256,
            input_spec=self.input_spec,
            architecture=self.architecture,
        )

    def chunks(self) -> Iterator[bytes | memoryview]:
        """The bytes in upload-sized pieces (views when they are in memory); can be called again for a retry."""
        if self.data is not None:
            return chunks.pieces(self.data)
        assert self.path is not None
        return chunks.read_pieces(self.path)


def input_spec_message(spec: Any) -> common_pb2.InputSpec:
    """An InputSpec proto from a proto, a mapping with proto field names, or an object with those attributes."""
    if spec is None:
        return common_pb2.InputSpec()
    if isinstance(spec, common_pb2.InputSpec):
        return spec
    if not isinstance(spec, Mapping):
        spec = {k: getattr(spec, k) for k in ("shape", "dtype", "value_min", "value_max", "mean", "std") if hasattr(spec, k)}
    message = common_pb2.InputSpec()
    for key, value in spec.items():
        if key in ("shape", "mean", "std"):
            getattr(message, key).extend(value or ())
        elif value is not None:
            setattr(message, key, value)
    return message


def prepare(
    model: Any,
    *,
    example_input: Any = None,
    format: str | None = None,
    input_spec: Any = None,
    name: str | None = None,
    architecture: str = "",
) -> ModelSource:
    """Read `model` into a ModelSource. `format` overrides detection ("onnx", "torchscript", "state_dict", ...)."""
    spec = input_spec_message(input_spec)
    fmt = FORMAT_NAMES[format.lower()] if format else None
    if isinstance(model, (str, os.PathLike)):
        return _from_path(Path(model), fmt, name, spec, architecture)
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        kind = formats.kind_of(data)
        fmt = fmt or _format_of(kind, "the bytes")
        if fmt == models_pb2.ONNX and kind != "ONNX_BUNDLE":
            _refuse_external(data, "the ONNX bytes", "give the .onnx file's path (with its data files beside it) instead of its bytes")
        return _from_bytes(data, fmt, name or "model", spec, architecture)
    proto = _onnx_model_proto(model)
    if proto is not None:
        data = proto.SerializeToString()
        _refuse_external(
            data,
            "the onnx.ModelProto",
            "read the data in first (onnx.load(path) does; or onnx.load_external_data_for_model(model, folder)), "
            "or give the .onnx file's path",
        )
        return _from_bytes(data, models_pb2.ONNX, name or proto.graph.name or "model.onnx", spec, architecture)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, (torch.nn.Module, torch.export.ExportedProgram)):
        data, spec = _export_torch(torch, model, example_input, spec)
        default = type(model).__name__ if isinstance(model, torch.nn.Module) else "exported_program"
        return _from_bytes(data, models_pb2.TORCH_EXPORT, name or f"{default}.pt2", spec, architecture)
    raise ModelSourceError(
        f"cannot upload a {type(model).__name__}: give a file path, bytes, an onnx.ModelProto, a torch.onnx.ONNXProgram, "
        "a torch.export.ExportedProgram or a torch.nn.Module with example_input"
    )


def _from_path(path: Path, fmt: int | None, name: str | None, spec: common_pb2.InputSpec, architecture: str) -> ModelSource:
    if not path.is_file():
        raise ModelSourceError(f"no model file at {path}")
    kind = formats.kind_of(path)
    fmt = fmt or _format_of(kind, str(path))
    if fmt == models_pb2.ONNX and kind != "ONNX_BUNDLE":
        locations = _external_locations(path)
        if locations:
            bundle = _bundle(path, locations)
            return _from_bytes(bundle, fmt, name or path.name, spec, architecture)
    digest, size = _hash_file(path)
    return ModelSource(
        name=name or path.name,
        format=fmt,
        size=size,
        sha256=digest,
        input_spec=spec,
        architecture=architecture,
        path=path,
    )


def _format_of(kind: str, what: str) -> int:
    """The upload format of a kind of file (kernelscope.formats), or a ModelSourceError saying what it looks like."""
    name = formats.FORMAT_OF.get(kind)
    if kind in formats.TRUNCATED_OF:
        raise ModelSourceError(f"{what} is {formats.WORDS[kind]}: give the complete file")
    if name is None:
        looks = formats.WORDS.get(kind, "no model format kernelscope knows")
        raise ModelSourceError(
            f"cannot tell the format of {what}: it looks like {looks}; give format= "
            "(torch_export, onnx, torchscript, state_dict or safetensors) if it is a model"
        )
    return models_pb2.ModelFormat.Value(name)


def _external_locations(path: Path) -> list[str]:
    """The external data files an .onnx file names ([] when it names none or does not parse: the worker judges)."""
    if path.stat().st_size == 0:
        return []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        try:
            return formats.external_data_locations(mapped)
        except ValueError:
            return []


def _bundle(path: Path, locations: list[str]) -> bytes:
    """The .onnx and exactly the data files it names, from its folder, as one ONNX bundle (kernelscope.formats)."""
    files: dict[str, Path] = {}
    for location in locations:
        if not formats.is_plain_relative(location):
            raise ModelSourceError(
                f"{path.name} points its external data at {location!r}, which is not a plain relative file name "
                "in the model's folder; the service takes only data files that lie beside the model (it never reads "
                "a path outside the upload): re-save the model with its data beside it"
            )
        data_file = path.parent / location
        if not data_file.is_file():
            raise ModelSourceError(
                f"{path.name} keeps tensor data in the data file {location!r}, which is not beside it ({data_file} is "
                "missing): the data file must be uploaded with the model; put it in the model's folder, or save the "
                "model with its weights inline (onnx.save(model, path, save_as_external_data=False), < 2 GB)"
            )
        files[location] = data_file
    member = path.name if path.name.lower().endswith(".onnx") and path.name not in files else "model.onnx"
    out = io.BytesIO()
    with open(path, "rb") as f:
        formats.onnx_bundle(out, member, f.read(), files)
    return out.getvalue()


def _refuse_external(data: bytes, what: str, instead: str) -> None:
    """ModelSourceError when serialized ONNX `data` names external data files, which bytes alone cannot carry."""
    try:
        locations = formats.external_data_locations(data)
    except ValueError:
        return  # not well-formed: the service and the worker say what is wrong with it
    if locations:
        shown = ", ".join(repr(loc) for loc in locations[:4])
        raise ModelSourceError(
            f"{what} keep tensor data in external files ({shown}), which would not be uploaded; {instead}"
        )


def _onnx_model_proto(model: Any) -> Any:
    """An onnx.ModelProto for a ModelProto or a torch.onnx.ONNXProgram (torch.onnx.export's result), else None."""
    onnx = sys.modules.get("onnx")
    if onnx is not None and isinstance(model, onnx.ModelProto):
        return model
    torch = sys.modules.get("torch")
    program_type = getattr(getattr(torch, "onnx", None), "ONNXProgram", None) if torch is not None else None
    if program_type is not None and isinstance(model, program_type):
        return model.model_proto
    return None


def _from_bytes(data: bytes, fmt: int, name: str, spec: common_pb2.InputSpec, architecture: str) -> ModelSource:
    return ModelSource(
        name=name,
        format=fmt,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        input_spec=spec,
        architecture=architecture,
        data=data,
    )


def _hash_file(path: Path) -> tuple[str, int]:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")  # one reused buffer, no allocation per block
        return digest.hexdigest(), f.tell()


def _export_torch(torch: Any, model: Any, example_input: Any, spec: common_pb2.InputSpec) -> tuple[bytes, common_pb2.InputSpec]:
    if isinstance(model, torch.nn.Module):
        if example_input is None:
            raise ModelSourceError(
                "a torch.nn.Module needs example_input= (one batch, e.g. torch.zeros(1, 3, 16, 112, 112)) to be exported"
            )
        args = example_input if isinstance(example_input, tuple) else (example_input,)
        try:
            program = torch.export.export(model.eval(), args)
        except Exception as exc:  # noqa: BLE001 - export errors are many and all the caller's to fix
            raise ModelSourceError(f"torch.export failed: {exc}") from exc
        if not spec.shape:
            filled = common_pb2.InputSpec()
            filled.CopyFrom(spec)
            filled.shape.extend(int(s) for s in args[0].shape[1:])
            filled.dtype = filled.dtype or str(args[0].dtype).replace("torch.", "")
            spec = filled
    else:
        program = model
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue(), spec
