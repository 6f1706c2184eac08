"""Zip archives (torch.export, TorchScript, torch.save files, ONNX bundles) checked before anything reads them.

Every check here works from the central directory alone: no entry is decompressed, so a zip
bomb is refused on what it declares (entry count, sizes, compression ratio) before it can cost
memory, and entry names that would escape a directory are refused before any code sees them.
"""

from __future__ import annotations

import posixpath
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from kernelscope.formats import zip_root
from workers.errors import ModelRejected

ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ArchiveLimits:
    """What an uploaded archive may declare. Sizes in bytes; ratio is uncompressed / compressed."""

    max_entries: int = 10_000
    max_entry_bytes: int = 8 * 2**30
    max_total_bytes: int = 16 * 2**30
    # Weights barely compress (torch stores them uncompressed); text compresses ~10x. A bomb is ~1000x.
    max_ratio: float = 100.0
    # Entries smaller than this may compress at any ratio (a few KiB of zeros is no bomb).
    ratio_floor_bytes: int = 1 * 2**20
    # The whole archive: what all entries declare over the file's size. Thousands of small entries
    # that each stay under ratio_floor_bytes add up to a bomb (3,000 zero-filled 1 MiB entries in 3.7 MB).
    max_archive_ratio: float = 100.0
    # Archives declaring less than this in total may compress at any ratio.
    archive_ratio_floor_bytes: int = 64 * 2**20


DEFAULT_LIMITS = ArchiveLimits()


@dataclass(frozen=True)
class ArchiveListing:
    """The entries of a checked archive. `root` is the common top folder torch writes ("model/")."""

    names: tuple[str, ...]
    root: str
    total_bytes: int
    sizes: dict[str, int] = field(default_factory=dict)  # entry name -> declared uncompressed size

    def has(self, relative: str) -> bool:
        return self.root + relative in self.names

    def under(self, folder: str) -> list[str]:
        """Entry names (relative to the root) inside `folder` (relative, ending with '/')."""
        prefix = self.root + folder
        return [n[len(self.root):] for n in self.names if n.startswith(prefix)]


def is_zip(head: bytes) -> bool:
    return head.startswith(ZIP_MAGIC) or head.startswith(_EMPTY_ZIP_MAGIC)


def check_archive(path: Path, what: str, limits: ArchiveLimits = DEFAULT_LIMITS) -> ArchiveListing:
    """List `path`'s entries after checking them; raise ModelRejected naming the first problem.

    Reasons: WRONG_FORMAT (not a zip), TRUNCATED (a zip whose end is missing),
    ARCHIVE_UNSAFE (bomb-like sizes of an entry or of the whole archive, too many entries, escaping or
    duplicate names).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
    if not is_zip(head):
        raise ModelRejected(f"{what} must be a zip archive; this file is not one", reason="WRONG_FORMAT")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, struct.error, ValueError) as exc:
        raise ModelRejected(
            f"{what} is a damaged or truncated zip archive ({exc}); upload the complete file", reason="TRUNCATED"
        ) from exc

    if len(infos) > limits.max_entries:
        raise _unsafe(f"{len(infos)} entries (limit {limits.max_entries})")
    seen: set[str] = set()
    total = 0
    for info in infos:
        _check_name(info.filename)
        if info.filename in seen:
            raise _unsafe(f"entry {info.filename!r} appears twice")
        seen.add(info.filename)
        if info.file_size > limits.max_entry_bytes:
            raise _unsafe(f"entry {info.filename!r} declares {info.file_size} bytes (limit {limits.max_entry_bytes})")
        total += info.file_size
        if total > limits.max_total_bytes:
            raise _unsafe(f"entries declare more than {limits.max_total_bytes} bytes in total")
        if info.file_size > limits.ratio_floor_bytes:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > limits.max_ratio:
                raise _unsafe(
                    f"entry {info.filename!r} expands {ratio:.0f}x ({info.compress_size} -> {info.file_size} bytes; "
                    f"limit {limits.max_ratio:.0f}x): a zip bomb"
                )
    if total > limits.archive_ratio_floor_bytes and total / max(size, 1) > limits.max_archive_ratio:
        raise _unsafe(
            f"its entries declare {total} bytes in a {size}-byte file ({total / max(size, 1):.0f}x; "
            f"limit {limits.max_archive_ratio:.0f}x): a zip bomb"
        )
    for info in infos:
        if info.header_offset + info.compress_size > size:
            raise ModelRejected(
                f"{what}: entry {info.filename!r} extends past the end of the file: it is truncated", reason="TRUNCATED"
            )
    names = tuple(i.filename for i in infos)
    return ArchiveListing(names=names, root=zip_root(names), total_bytes=total, sizes={i.filename: i.file_size for i in infos})


def _check_name(name: str) -> None:
    """Refuse names that are absolute, climb out with '..', or hide a drive or NUL."""
    unified = name.replace("\\", "/")
    if "\x00" in name or unified.startswith("/") or _DRIVE.match(unified):
        raise _unsafe(f"entry name {name!r} is absolute")
    parts = unified.split("/")
    if ".." in parts or posixpath.normpath(unified).startswith(".."):
        raise _unsafe(f"entry name {name!r} climbs out of the archive with '..'")


def _unsafe(detail: str) -> ModelRejected:
    return ModelRejected(f"archive refused before loading: {detail}", reason="ARCHIVE_UNSAFE")
