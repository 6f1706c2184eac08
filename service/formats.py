"""Cheap magic-byte sniffing of uploaded models, so a file declared in the wrong format is refused at upload.

This is no validation of the model (the worker does that, in a sandboxed process): it only catches
clear mismatches (an ONNX file declared as TORCH_EXPORT, a zip declared as ONNX, a pickle where a
zip archive is required) from the first few KiB, before the rest of the upload is accepted.
"""

from __future__ import annotations

import struct

from kernelscope.v1 import models_pb2

from service import errors

ZIP_FORMATS = frozenset({models_pb2.TORCH_EXPORT, models_pb2.TORCHSCRIPT, models_pb2.STATE_DICT})

_ZIP_MAGIC = (b"PK\x03\x04",)
_PICKLE_MAGIC = b"\x80"  # protocol 2+ pickles start with PROTO (0x80)
# safetensors: u64 little-endian header length, then a JSON object.
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024

# ONNX ModelProto fields: number -> protobuf wire type (0 varint, 2 length-delimited).
_ONNX_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


def format_name(fmt: int) -> str:
    return models_pb2.ModelFormat.Name(fmt) if fmt in models_pb2.ModelFormat.values() else str(fmt)


def sniff(head: bytes, total_size: int) -> str | None:
    """What the leading bytes look like: "zip", "pickle", "safetensors", "onnx", or None when unclear."""
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if _looks_like_safetensors(head, total_size):
        return "safetensors"
    if head[:1] == _PICKLE_MAGIC and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if _looks_like_onnx(head, total_size):
        return "onnx"
    return None


def check(declared: int, head: bytes, total_size: int) -> None:
    """INVALID_ARGUMENT reason WRONG_FORMAT when `head` clearly is not a `declared` model file."""
    seen = sniff(head, total_size)
    name = format_name(declared)
    if declared in ZIP_FORMATS:
        if seen == "zip":
            return
        hint = (
            "; a legacy (non-zip) torch.save file: re-save it with torch.save's default format"
            if seen == "pickle"
            else ""
        )
        raise _wrong(name, seen, f"{name} files are zip archives{hint}")
    if declared == models_pb2.SAFETENSORS:
        if seen == "safetensors":
            return
        raise _wrong(name, seen, "safetensors files start with an 8-byte header length and a JSON header")
    if declared == models_pb2.ONNX:
        if seen == "onnx":
            return
        raise _wrong(name, seen, "ONNX files are a serialized ModelProto")
    raise errors.invalid_argument("BAD_FORMAT", f"model format must be set; got {name}")


def _wrong(name: str, seen: str | None, what: str) -> errors.ServiceError:
    looks = f"the bytes look like {_DESCRIPTION[seen]}" if seen else "the bytes are not recognisable"
    return errors.invalid_argument("WRONG_FORMAT", f"declared {name}, but {looks}: {what}")


_DESCRIPTION = {
    "zip": "a zip archive (TORCH_EXPORT, TORCHSCRIPT or STATE_DICT)",
    "pickle": "a pickle",
    "safetensors": "a safetensors file",
    "onnx": "an ONNX ModelProto",
}


def _looks_like_safetensors(head: bytes, total_size: int) -> bool:
    if len(head) < 10:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    if length < 2 or length > _SAFETENSORS_MAX_HEADER or length + 8 > total_size:
        return False
    return head[8:9] == b"{"


def _looks_like_onnx(head: bytes, total_size: int) -> bool:
    """Walk protobuf fields through `head`: every one must be a ModelProto field with its wire type.

    Needs at least one field and a graph (7) or ir_version (1) among the fields seen, since an
    ONNX exporter writes ir_version first and any real model has a graph.
    """
    pos, seen = 0, set()
    while pos < len(head):
        tag, pos = _varint(head, pos)
        if tag is None:
            break
        number, wire = tag >> 3, tag & 7
        if _ONNX_MODEL_FIELDS.get(number) != wire:
            return False
        seen.add(number)
        if wire == 0:
            value, pos = _varint(head, pos)
            if value is None:
                break
        else:
            length, pos = _varint(head, pos)
            if length is None:
                break
            if pos + length > total_size:
                return False
            pos += length
    return bool(seen & {1, 7})


def _varint(data: bytes, pos: int) -> tuple[int | None, int]:
    """Decode a protobuf varint at `pos`; (None, pos) when `data` ends first or it runs past 10 bytes."""
    value, shift = 0, 0
    for i in range(pos, min(pos + 10, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    return None, pos
