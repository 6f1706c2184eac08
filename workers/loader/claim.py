"""What an uploaded file really is, from its bytes: its format claim checked before any loader reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kernelscope import formats as content
from workers.archive import ArchiveListing, check_archive
from workers.errors import ModelRejected
from workers.loader.pickles import _pickle_globals, _refuse_pickle, _scan_torch_save


FORMATS: tuple[str, ...] = ("TORCH_EXPORT", "ONNX", "TORCHSCRIPT", "STATE_DICT", "SAFETENSORS")


def _format_name(format: Any) -> str:
    """Accept the enum name ("ONNX"), its number (2) or a prefixed name ("ModelFormat.ONNX")."""
    if isinstance(format, int) and 1 <= format <= len(FORMATS):
        return FORMATS[format - 1]
    text = str(format).rsplit(".", 1)[-1].upper()
    if text.isdigit() and 1 <= int(text) <= len(FORMATS):
        return FORMATS[int(text) - 1]
    if text not in FORMATS:
        raise ModelRejected(f"unknown model format {format!r}; one of {', '.join(FORMATS)}", reason="WRONG_FORMAT")
    return text


def _sniff(path: Path) -> str:
    """The kind of file at `path`, from its first bytes (kernelscope.formats.head_kind: the SDK's and the service's rules)."""
    with open(path, "rb") as f:
        return content.head_kind(f.read(content.HEAD_BYTES), path.stat().st_size)


def _zip_kind(listing: ArchiveListing) -> str:
    """The kind of a checked zip archive, from its entry names (kernelscope.formats.zip_kind)."""
    return content.zip_kind(listing.names)


_ARCHIVE_WORDS = {
    "TORCH_EXPORT": "a torch.export archive",
    "TORCHSCRIPT": "a TorchScript archive",
    "STATE_DICT": "a torch.save checkpoint",
    "ONNX": "an ONNX bundle",
}
_NOT_WHAT = {
    "TORCH_EXPORT": "not a zip archive (a torch.export .pt2 is one)",
    "TORCHSCRIPT": "not a zip archive (a TorchScript .pt is one)",
    "STATE_DICT": "neither a zip archive nor a pickle (torch.save writes one of those)",
    "SAFETENSORS": "not a safetensors file (no JSON header after the 8-byte length)",
    "ONNX": "not an ONNX protobuf",
}


def _check_claim(path: Path, fmt: str) -> None:
    """Refuse a file whose bytes are not the format it was uploaded as (or that is a pickled module).

    Kinds and the format each is uploaded as are kernelscope.formats'; an unrecognisable file uploaded as ONNX goes on
    to the ONNX parser, which says whether it is truncated or no protobuf at all.
    """
    kind = _sniff(path)
    if kind == "ZIP":
        listing = check_archive(path, _ARCHIVE_WORDS.get(fmt, "the archive"))
        kind = _zip_kind(listing)
        if kind == "TORCH_SAVE":
            _scan_torch_save(path, listing)
    elif kind == "PICKLE":
        with open(path, "rb") as f:
            _refuse_pickle(_pickle_globals(f, "the file"), "the file")
    elif kind in content.TRUNCATED_OF:
        if content.TRUNCATED_OF[kind] == fmt:
            raise ModelRejected(f"the file is {content.WORDS[kind]}: upload the complete file", reason="TRUNCATED")
        kind = "UNKNOWN"
    accepted = {k for k, f in content.FORMAT_OF.items() if f == fmt} | ({"UNKNOWN"} if fmt == "ONNX" else set())
    if kind in accepted:
        return
    is_what = content.WORDS.get(kind)
    if is_what is None:
        what = _NOT_WHAT[fmt]
    elif kind in content.ZIP_KINDS:
        what = is_what
    else:
        what = f"{is_what}, {_NOT_WHAT[fmt]}"
    raise ModelRejected(f"uploaded as {fmt}, but the file is {what}", reason="WRONG_FORMAT")
