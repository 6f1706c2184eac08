"""Cheap content check of uploaded models, so a file declared in the wrong format is refused at upload.

This is no validation of the model (the worker does that, in a sandboxed process): it only catches
clear mismatches (an ONNX file declared as TORCH_EXPORT, a torch zip declared as ONNX, a pickle declared as
safetensors) from the first SNIFF_BYTES, before the rest of the upload is accepted. The rules are
kernelscope.formats', which the SDK (to pick the format) and the worker (on the whole file) apply too. From the first
bytes a zip is only an ONNX bundle (its first entry is the .onnx model) or "some zip": which torch archive it
is, the worker tells from the central directory at the end of the file.
"""

from __future__ import annotations

from kernelscope.v1 import models_pb2
from kernelscope import formats as content

from service import errors

# What each declared format must look like: the kinds (kernelscope.formats) it accepts.
ACCEPTED: dict[str, frozenset[str]] = {
    name: frozenset(kind for kind, fmt in content.FORMAT_OF.items() if fmt == name)
    for name in ("TORCH_EXPORT", "TORCHSCRIPT", "STATE_DICT", "SAFETENSORS", "ONNX")
}

_TORCH_ZIPS = frozenset(content.ZIP_KINDS) - {"ONNX_BUNDLE"}

_WHAT = {
    "TORCH_EXPORT": "TORCH_EXPORT files are zip archives",
    "TORCHSCRIPT": "TORCHSCRIPT files are zip archives",
    "STATE_DICT": "STATE_DICT files are zip archives (torch.save's default) or legacy torch.save pickles",
    "SAFETENSORS": "safetensors files start with an 8-byte header length and a JSON header",
    "ONNX": (
        "ONNX files are a serialized ModelProto, or an ONNX bundle (a zip whose first entry is the .onnx model, "
        "followed by its external data files, as the kernelscope SDK uploads a model exported with external data)"
    ),
}


def format_name(fmt: int) -> str:
    return models_pb2.ModelFormat.Name(fmt) if fmt in models_pb2.ModelFormat.values() else str(fmt)


def sniff(head: bytes, total_size: int) -> str:
    """The kind of file the leading bytes show: kernelscope.formats.head_kind, with a zip resolved to ONNX_BUNDLE when its
    first entry says so (else "ZIP")."""
    kind = content.head_kind(head, total_size)
    if kind == "ZIP" and content.zip_kind(content.head_zip_names(head)) == "ONNX_BUNDLE":
        return "ONNX_BUNDLE"
    return kind


def check(declared: int, head: bytes, total_size: int) -> None:
    """INVALID_ARGUMENT reason WRONG_FORMAT when `head` clearly is not a `declared` model file (TRUNCATED when it
    is one whose first fields run past the declared size)."""
    name = format_name(declared)
    accepted = ACCEPTED.get(name)
    if accepted is None:
        raise errors.invalid_argument("BAD_FORMAT", f"model format must be set; got {name}")
    seen = sniff(head, total_size)
    if seen in accepted or (seen == "ZIP" and accepted & _TORCH_ZIPS):
        return
    if content.TRUNCATED_OF.get(seen) == name:
        raise errors.invalid_argument("TRUNCATED", f"the bytes are {content.WORDS[seen]}: upload the complete file")
    looks = f"the bytes look like {content.WORDS[seen]}" if seen in content.WORDS else "the bytes are not recognisable"
    raise errors.invalid_argument("WRONG_FORMAT", f"declared {name}, but {looks}: {_WHAT[name]}")
