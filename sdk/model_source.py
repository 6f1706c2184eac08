"""Whatever the caller calls a model, turned into bytes the service accepts.

A path, raw bytes, an `onnx.ModelProto`, a `torch.export.ExportedProgram`, or a `torch.nn.Module` with an
example input (exported with torch.export). torch and onnx are never imported here unless the caller
already imported them and handed us one of their objects: the SDK stays thin.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from kernelscope.v1 import common_pb2, models_pb2
from sdk import chunks
from sdk.errors import ModelSourceError

FORMAT_BY_SUFFIX = {
    ".pt2": models_pb2.TORCH_EXPORT,
    ".onnx": models_pb2.ONNX,
    ".safetensors": models_pb2.SAFETENSORS,
}
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
        path = Path(model)
        if not path.is_file():
            raise ModelSourceError(f"no model file at {path}")
        digest, size = _hash_file(path)
        return ModelSource(
            name=name or path.name,
            format=fmt or FORMAT_BY_SUFFIX.get(path.suffix.lower()) or _sniff(path),
            size=size,
            sha256=digest,
            input_spec=spec,
            architecture=architecture,
            path=path,
        )
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        return _from_bytes(data, fmt or _sniff(data), name or "model", spec, architecture)
    if _is_onnx_model(model):
        data = model.SerializeToString()
        return _from_bytes(data, models_pb2.ONNX, name or (model.graph.name or "model.onnx"), spec, architecture)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, (torch.nn.Module, torch.export.ExportedProgram)):
        data, spec = _export_torch(torch, model, example_input, spec)
        default = type(model).__name__ if isinstance(model, torch.nn.Module) else "exported_program"
        return _from_bytes(data, models_pb2.TORCH_EXPORT, name or f"{default}.pt2", spec, architecture)
    raise ModelSourceError(
        f"cannot upload a {type(model).__name__}: give a file path, bytes, an onnx.ModelProto, "
        "a torch.export.ExportedProgram or a torch.nn.Module with example_input"
    )


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


def _sniff(source: bytes | Path) -> int:
    """Guess the format from the content: torch zips differ by their entries; safetensors by its header."""
    try:
        opened = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except zipfile.BadZipFile:
        head = source[:16] if isinstance(source, bytes) else source.open("rb").read(16)
        if len(head) >= 9 and head[8:9] == b"{":
            return models_pb2.SAFETENSORS
        return models_pb2.ONNX
    with opened:
        names = opened.namelist()
    if any(n.endswith("archive_format") or "/models/" in n for n in names):
        return models_pb2.TORCH_EXPORT
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        return models_pb2.TORCHSCRIPT
    return models_pb2.STATE_DICT


def _is_onnx_model(model: Any) -> bool:
    onnx = sys.modules.get("onnx")
    return onnx is not None and isinstance(model, onnx.ModelProto)


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
