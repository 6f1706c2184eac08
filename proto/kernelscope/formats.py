"""What a model file is, told from its bytes alone: one set of rules for the SDK, the service and the worker.

    head_kind(head, total_size) -> "ZIP" | "PICKLE" | "SAFETENSORS" | "SAFETENSORS_TRUNCATED" | "ONNX"
                                   | "ONNX_TRUNCATED" | "UNKNOWN"
    zip_kind(names)             -> "TORCH_EXPORT" | "TORCH_EXPORT_LEGACY" | "TORCHSCRIPT" | "TORCH_SAVE"
                                   | "ONNX_BUNDLE" | "UNKNOWN_ZIP"
    kind_of(bytes | path)       -> either, from the whole file (zip entries listed from the central directory)
    FORMAT_OF[kind]             -> the ModelFormat name that kind of file is uploaded as

The SDK picks the upload format with `kind_of`; the service checks a declared format against the first
HEAD_BYTES (`head_kind`, and `zip_kind` on the entry names those bytes show); the worker checks it again on
the whole file. File names and suffixes are never looked at: a TorchScript archive of a torchvision model
holds `code/__torch__/torchvision/models/...`, which says nothing about torch.export.

An ONNX bundle is how an ONNX model travels with its external data files: a zip (stored) whose first entry
is the `.onnx` model at the top level, followed by exactly the files its tensors' `external_data`
locations name, each under that location. `onnx_bundle` writes one; `external_data_locations` reads the
locations out of a serialized ModelProto with a minimal protobuf wire reader (no onnx import).

Standard library only: the service and the worker import this module, and the SDK must stay thin.
"""

from __future__ import annotations

import io
import posixpath
import re
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterable, Mapping, Sequence

from kernelscope import varint

HEAD_BYTES = 4096

ZIP_KINDS = ("TORCH_EXPORT", "TORCH_EXPORT_LEGACY", "TORCHSCRIPT", "TORCH_SAVE", "ONNX_BUNDLE", "UNKNOWN_ZIP")

# The ModelFormat (proto enum name) each recognisable kind of file is uploaded as.
FORMAT_OF = {
    "TORCH_EXPORT": "TORCH_EXPORT",
    "TORCHSCRIPT": "TORCHSCRIPT",
    "TORCH_SAVE": "STATE_DICT",
    "PICKLE": "STATE_DICT",
    "SAFETENSORS": "SAFETENSORS",
    "ONNX": "ONNX",
    "ONNX_BUNDLE": "ONNX",
}

WORDS = {
    "ZIP": "a zip archive (TORCH_EXPORT, TORCHSCRIPT, STATE_DICT or an ONNX bundle)",
    "TORCH_EXPORT": "a torch.export archive (format TORCH_EXPORT)",
    "TORCH_EXPORT_LEGACY": "a torch.export archive from torch < 2.8 (re-export it with a current torch)",
    "TORCHSCRIPT": "a TorchScript archive (format TORCHSCRIPT)",
    "TORCH_SAVE": "a torch.save checkpoint (format STATE_DICT)",
    "ONNX_BUNDLE": "an ONNX model bundled with its external data (format ONNX)",
    "UNKNOWN_ZIP": "a zip archive that is no PyTorch format",
    "PICKLE": "a pickle (a legacy torch.save file, format STATE_DICT)",
    "SAFETENSORS": "a safetensors file (format SAFETENSORS)",
    "SAFETENSORS_TRUNCATED": "a truncated safetensors file (its header is longer than the file)",
    "ONNX": "an ONNX ModelProto (format ONNX)",
    "ONNX_TRUNCATED": "a truncated ONNX ModelProto (a field runs past the end of the file)",
}

# Truncated kinds, by the format whose truncated file they are.
TRUNCATED_OF = {"SAFETENSORS_TRUNCATED": "SAFETENSORS", "ONNX_TRUNCATED": "ONNX"}

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # an archive with entries; an empty archive
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


# ============================================================== the first bytes

def head_kind(head: bytes, total_size: int) -> str:
    """What the leading bytes of a `total_size`-byte file look like (see the module docstring)."""
    if head.startswith(_ZIP_MAGIC):
        return "ZIP"
    safetensors = _safetensors_header(head)
    if safetensors is not None:
        return "SAFETENSORS" if safetensors + 8 <= total_size else "SAFETENSORS_TRUNCATED"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:  # pickle protocol 2..5 starts with PROTO
        return "PICKLE"
    return _onnx_kind(head, total_size)


def _safetensors_header(head: bytes) -> int | None:
    """The header length when `head` is an 8-byte little-endian length followed by a JSON object."""
    if len(head) < 10 or head[8:9] != b"{":
        return None
    (length,) = struct.unpack("<Q", head[:8])
    return length if 2 <= length <= _SAFETENSORS_MAX_HEADER else None


# ONNX ModelProto fields: number -> protobuf wire type (0 varint, 2 length-delimited).
_ONNX_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


def _onnx_kind(head: bytes, total_size: int) -> str:
    """Walk protobuf fields through `head`: every one must be a ModelProto field with its wire type.

    "ONNX" needs a graph (7) or ir_version (1) among the fields seen, since an ONNX exporter writes
    ir_version first and any real model has a graph; "ONNX_TRUNCATED" when, after such fields, one runs
    past the end of the file.
    """
    pos, seen = 0, set()
    cut = False  # a field runs past the end of the file
    while pos < len(head):
        tag, pos = varint.decode(head, pos)
        if tag is None:
            cut = len(head) >= total_size
            break
        number, wire = tag >> 3, tag & 7
        if _ONNX_MODEL_FIELDS.get(number) != wire:
            return "UNKNOWN"
        seen.add(number)
        value, pos = varint.decode(head, pos)
        if value is None or (wire == 2 and pos + value > total_size):
            cut = value is not None or len(head) >= total_size
            break
        if wire == 2:
            pos += value
    if not seen & {1, 7}:
        return "UNKNOWN"
    return "ONNX_TRUNCATED" if cut else "ONNX"


# ============================================================== zip archives

def zip_root(names: Sequence[str]) -> str:
    """The one top folder torch writes every entry under ("model/"), or "" when there is none."""
    firsts = {n.split("/", 1)[0] for n in names if "/" in n}
    if len(firsts) == 1 and names and all("/" in n for n in names):
        return firsts.pop() + "/"
    return ""


def zip_kind(names: Sequence[str]) -> str:
    """Which kind of zip archive has these entry names (in archive order)?

    - ONNX_BUNDLE: the first entry is a top-level `.onnx` file and no other top-level `.onnx` exists;
    - TORCHSCRIPT: `<root>/code/...` with `<root>/data.pkl` or `<root>/constants.pkl`;
    - TORCH_EXPORT: `<root>/archive_format`, or `<root>/models/<name>.json` beside `<root>/data/...`;
    - TORCH_EXPORT_LEGACY: `<root>/serialized_exported_program.json` (torch < 2.8);
    - TORCH_SAVE: `<root>/data.pkl` without code;
    - UNKNOWN_ZIP: anything else.
    Entries are matched relative to the root, never by a substring: a TorchScript archive of torchvision's
    video ResNet holds `code/__torch__/torchvision/models/video/resnet.py` and is TorchScript.
    """
    if names and _is_top_level_onnx(names[0]) and sum(_is_top_level_onnx(n) for n in names) == 1:
        return "ONNX_BUNDLE"
    root = zip_root(names)
    rel = {n[len(root):] for n in names if n.startswith(root)}
    has_code = any(r.startswith("code/") for r in rel)
    if has_code and ("data.pkl" in rel or "constants.pkl" in rel):
        return "TORCHSCRIPT"
    if "archive_format" in rel or (
        any(re.fullmatch(r"models/[^/]+\.json", r) for r in rel) and any(r.startswith("data/") for r in rel)
    ):
        return "TORCH_EXPORT"
    if "serialized_exported_program.json" in rel:
        return "TORCH_EXPORT_LEGACY"
    if "data.pkl" in rel and not has_code:
        return "TORCH_SAVE"
    return "UNKNOWN_ZIP"


def _is_top_level_onnx(name: str) -> bool:
    return "/" not in name and "\\" not in name and name.lower().endswith(".onnx") and len(name) > len(".onnx")


def head_zip_names(head: bytes) -> list[str]:
    """Entry names of the local file headers that lie wholly inside `head` (the service sees no more).

    Stops at the first entry whose data runs past `head` or whose sizes live in a data descriptor.
    """
    names: list[str] = []
    pos = 0
    while head[pos:pos + 4] == b"PK\x03\x04" and pos + 30 <= len(head):
        flags, compressed, name_len, extra_len = struct.unpack("<H10xI4xHH", head[pos + 6:pos + 30])
        start = pos + 30
        if start + name_len > len(head):
            break
        names.append(head[start:start + name_len].decode("utf-8" if flags & 0x800 else "cp437", errors="replace"))
        if flags & 0x08 or compressed == 0xFFFFFFFF:  # sizes after the data, or in a zip64 extra: stop here
            break
        pos = start + name_len + extra_len + compressed
    return names


# ============================================================== whole files

def kind_of(source: bytes | Path) -> str:
    """The kind of a whole file: `head_kind`, with zips resolved to their `zip_kind`."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        kind = head_kind(data[:HEAD_BYTES], len(data))
        opener = lambda: zipfile.ZipFile(io.BytesIO(data))  # noqa: E731
    else:
        path = Path(source)
        with open(path, "rb") as f:
            kind = head_kind(f.read(HEAD_BYTES), path.stat().st_size)
        opener = lambda: zipfile.ZipFile(path)  # noqa: E731
    if kind != "ZIP":
        return kind
    try:
        with opener() as archive:
            return zip_kind(archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error):
        return "UNKNOWN_ZIP"


# ============================================================== ONNX external data

# The wire schema of the ONNX messages that can hold a TensorProto: field number -> message it holds.
_SCHEMA: dict[str, dict[int, str]] = {
    "ModelProto": {7: "GraphProto", 20: "TrainingInfoProto", 25: "FunctionProto"},
    "TrainingInfoProto": {1: "GraphProto", 2: "GraphProto"},
    "GraphProto": {1: "NodeProto", 5: "TensorProto", 15: "SparseTensorProto"},
    "FunctionProto": {7: "NodeProto", 11: "AttributeProto"},
    "NodeProto": {5: "AttributeProto"},
    "AttributeProto": {5: "TensorProto", 6: "GraphProto", 10: "TensorProto", 11: "GraphProto", 22: "SparseTensorProto", 23: "SparseTensorProto"},
    "SparseTensorProto": {1: "TensorProto", 2: "TensorProto"},
}
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_EXTERNAL = 1
_MAX_DEPTH = 64


def external_data_locations(model: bytes | memoryview) -> list[str]:
    """The `location` of every tensor in a serialized ModelProto that keeps its data in an external file.

    In order of first appearance, each once; "" for an external tensor that names no location. Tensors are
    found wherever ONNX allows them (initializers, sparse initializers, node attributes, subgraphs, functions,
    training info). Raises ValueError when the bytes are no well-formed protobuf.
    """
    found: dict[str, None] = {}
    _walk(memoryview(model), "ModelProto", found, 0)
    return list(found)


def _walk(data: memoryview, message: str, found: dict[str, None], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("ONNX messages nested too deep")
    children = _SCHEMA.get(message, {})
    external, location = False, None
    for number, wire, value in _fields(data):
        if message == "TensorProto":
            if number == _TENSOR_DATA_LOCATION and wire == 0:
                external = value == _EXTERNAL
            elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
                entry = {n: bytes(v) for n, w, v in _fields(value) if w == 2}  # type: ignore[arg-type]
                if entry.get(1) == b"location":
                    location = entry.get(2, b"").decode("utf-8", errors="replace")
        elif number in children and wire == 2:
            _walk(value, children[number], found, depth + 1)  # type: ignore[arg-type]
    if external or location is not None:
        found.setdefault(location or "", None)


def _fields(data: memoryview) -> Iterable[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of every field: ints for varints and fixed, views for length-delimited."""
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = varint.decode(data, pos)
        if tag is None:
            raise ValueError("protobuf ends inside a field tag")
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = varint.decode(data, pos)
            if value is None:
                raise ValueError("protobuf ends inside a varint")
            yield number, wire, value
        elif wire == 2:
            length, pos = varint.decode(data, pos)
            if length is None or pos + length > end:
                raise ValueError("a length-delimited protobuf field runs past the end")
            yield number, wire, data[pos:pos + length]
            pos += length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise ValueError("a fixed-size protobuf field runs past the end")
            yield number, wire, int.from_bytes(data[pos:pos + size], "little")
            pos += size
        else:
            raise ValueError(f"protobuf wire type {wire} does not occur in ONNX")




def is_plain_relative(location: str) -> bool:
    """A location that names a file inside the model's folder: relative, normalised, no '..', no drive, no NUL."""
    if not location or "\x00" in location or "\\" in location or location.startswith("/") or _DRIVE.match(location):
        return False
    parts = location.split("/")
    return all(p not in ("", ".", "..") for p in parts) and posixpath.normpath(location) == location


_BUNDLE_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so the same files make the same bytes (and the same model id)


def onnx_bundle(out: BinaryIO, model_name: str, model: bytes | memoryview, data_files: Mapping[str, Path | bytes]) -> None:
    """Write an ONNX bundle to `out`: `model` as `model_name` first, then each data file under its location.

    Stored, not deflated (weights barely compress, and the worker reads them in place); deterministic.
    """
    if not _is_top_level_onnx(model_name) or model_name in data_files:
        raise ValueError(f"an ONNX bundle's model needs a top-level name ending in .onnx, apart from its data files: {model_name!r}")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.writestr(_entry(model_name), bytes(model))
        for location, content in data_files.items():
            if not is_plain_relative(location):
                raise ValueError(f"external data location {location!r} is not a plain relative file name")
            if isinstance(content, (bytes, bytearray, memoryview)):
                archive.writestr(_entry(location), bytes(content))
            else:
                with open(content, "rb") as src, archive.open(_entry(location), "w", force_zip64=True) as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_BUNDLE_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
    return info
