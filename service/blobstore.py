"""Content-addressed blobs on disk: `{data_dir}/blobs/{sha[:2]}/{sha}`.

Bytes arrive into a temp file under `{data_dir}/tmp` while their sha256 is computed; limits are
enforced as they arrive; only a complete, verified file is fsynced and renamed into place, so a
reader never sees a partial blob and a failed upload leaves nothing behind. Blobs never go into
Redis; which records use a blob is tracked by registry.BlobRefs.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import threading
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from service import errors

_SHA256 = re.compile(r"[0-9a-f]{64}")

HeadCheck = Callable[[bytes], None]


def check_sha256(value: str, what: str = "sha256") -> str:
    """`value` if it is 64 lower-case hex digits, else INVALID_ARGUMENT (also keeps paths out of the store)."""
    if not _SHA256.fullmatch(value or ""):
        raise errors.invalid_argument("BAD_SHA256", f"{what} must be 64 lower-case hex digits, got {value!r}")
    return value


@dataclass
class StagedBlob:
    """A complete, verified upload waiting in the temp dir for BlobStore.commit."""

    path: Path
    sha256: str
    size_bytes: int


class BlobStore:
    """Write-once files named by their sha256."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)
        self.blobs_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.blobs_dir / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    @contextmanager
    def stage(
        self,
        chunks: Iterable[bytes],
        *,
        limit: int,
        expected_size: int | None = None,
        expected_sha256: str | None = None,
        check_head: HeadCheck | None = None,
        head_bytes: int = 4096,
        what: str = "upload",
    ) -> Iterator[StagedBlob]:
        """Receive `chunks` into a temp file and yield it verified; the temp file is gone on exit, always.

        Refuses with RESOURCE_EXHAUSTED (reason TOO_LARGE) as soon as more than `limit` bytes arrived,
        INVALID_ARGUMENT SIZE_MISMATCH past or short of `expected_size`, HASH_MISMATCH when the sha256
        differs from `expected_sha256`. `check_head` sees the first `head_bytes` bytes (or all of a
        shorter upload) as soon as they are in, so a wrong file is refused before the rest arrives.
        """
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="upload-", suffix=".part")
        tmp = Path(name)
        try:
            hasher = hashlib.sha256()
            size = 0
            head = bytearray()
            head_checked = check_head is None
            with os.fdopen(fd, "wb") as handle, _Writer(handle) as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise errors.resource_exhausted(
                            "TOO_LARGE", f"{what} exceeds the limit of {limit} bytes"
                        )
                    if expected_size is not None and size > expected_size:
                        raise errors.invalid_argument(
                            "SIZE_MISMATCH", f"{what} sent more than the declared {expected_size} bytes"
                        )
                    if not head_checked:
                        head += chunk[: head_bytes - len(head)]
                        if len(head) >= head_bytes:
                            check_head(bytes(head))  # type: ignore[misc]
                            head_checked = True
                    hasher.update(chunk)
                    out.write(chunk)
                if not head_checked:
                    check_head(bytes(head))  # type: ignore[misc]
                if expected_size is not None and size != expected_size:
                    raise errors.invalid_argument(
                        "SIZE_MISMATCH", f"{what} declared {expected_size} bytes but sent {size}"
                    )
                digest = hasher.hexdigest()
                if expected_sha256 and digest != expected_sha256:
                    raise errors.invalid_argument(
                        "HASH_MISMATCH", f"{what} declared sha256 {expected_sha256} but the bytes hash to {digest}"
                    )
                out.finish()
                handle.flush()
                os.fsync(handle.fileno())
            yield StagedBlob(path=tmp, sha256=digest, size_bytes=size)
        finally:
            tmp.unlink(missing_ok=True)

    def commit(self, staged: StagedBlob) -> bool:
        """Move a staged file into place; False when the blob was already stored (the staged copy is dropped)."""
        final = self.path(staged.sha256)
        if final.is_file():
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, final)
        _fsync_dir(final.parent)
        return True

    def open(self, sha256: str) -> BinaryIO:
        """The stored bytes for reading; NOT_FOUND when the blob is not stored."""
        try:
            return open(self.path(sha256), "rb")
        except FileNotFoundError:
            raise errors.not_found("blob", sha256) from None

    def read_chunks(self, sha256: str, chunk_bytes: int) -> Iterator[bytes]:
        """The blob in pieces of at most `chunk_bytes` (opened before the first yield, so NOT_FOUND comes first)."""
        handle = self.open(sha256)

        def pieces() -> Iterator[bytes]:
            with handle:
                while chunk := handle.read(chunk_bytes):
                    yield chunk

        return pieces()

    def delete(self, sha256: str) -> bool:
        try:
            self.path(sha256).unlink()
            return True
        except FileNotFoundError:
            return False

    def sweep_tmp(self, older_than: float = 3600.0) -> int:
        """Remove temp files a crashed process left behind (older than `older_than` seconds); count them."""
        removed = 0
        cutoff = time.time() - older_than
        for path in self.tmp_dir.glob("upload-*.part"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


class _Writer:
    """Writes on a thread of its own, so that hashing one chunk overlaps writing the one before.

    At most `depth` chunks wait (bounded memory); a write error surfaces at the next `write` or `finish`.
    """

    def __init__(self, handle: BinaryIO, depth: int = 4) -> None:
        self._handle = handle
        self._pending: queue.Queue[bytes | memoryview | None] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="blob-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._pending.get()) is not None:
            if self._error is None:
                try:
                    self._handle.write(chunk)
                except BaseException as exc:  # noqa: BLE001 - handed to the receiving thread
                    self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, chunk: bytes | memoryview) -> None:
        self._raise()
        self._pending.put(chunk)

    def finish(self) -> None:
        """Wait until every chunk is written; raise what the writer met."""
        if self._thread.is_alive():
            self._pending.put(None)
            self._thread.join()
        self._raise()

    def __enter__(self) -> "_Writer":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._pending.put(None)
            self._thread.join()


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: fsync the directory that holds the new name."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
