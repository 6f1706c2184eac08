"""Content-addressed blobs on disk: `{data_dir}/blobs/{sha[:2]}/{sha}`.

Bytes arrive into a temp file under `{data_dir}/tmp` while their sha256 is computed (hashing and
writing each on a thread of their own, overlapping the receipt of the next chunk); limits are
enforced as they arrive; only a complete, verified file is fsynced and renamed into place, so a
reader never sees a partial blob and a failed upload leaves nothing behind. Blobs never go into
Redis; which records use a blob is tracked by registry.BlobRefs.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from service import defaults, errors

_SHA256 = re.compile(r"[0-9a-f]{64}")

HeadCheck = Callable[[bytes], None]


def check_sha256(value: str, what: str = "sha256") -> str:
    """`value` if it is 64 lower-case hex digits, else INVALID_ARGUMENT (also keeps paths out of the store)."""
    if not _SHA256.fullmatch(value or ""):
        raise errors.invalid_argument("BAD_SHA256", f"{what} must be 64 lower-case hex digits, got {value[:80]!r}")
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
            with (
                os.fdopen(fd, "wb") as handle,
                _ChunkThread(_WriteBehind(handle), "blob-writer") as out,
                _ChunkThread(hasher.update, "blob-hasher") as hashing,
            ):
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
                    hashing.feed(chunk)
                    out.feed(chunk)
                if not head_checked:
                    check_head(bytes(head))  # type: ignore[misc]
                if expected_size is not None and size != expected_size:
                    raise errors.invalid_argument(
                        "SIZE_MISMATCH", f"{what} declared {expected_size} bytes but sent {size}"
                    )
                hashing.finish()
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


class _WriteBehind:
    """Writes chunks to `handle` and has the kernel start putting each `every` bytes on disk at once.

    Left alone, Linux holds an upload's pages dirty until the final fsync (they stay under its
    background threshold, 10% of RAM), so the whole file hits the disk after the last byte arrived:
    on this project's test machine 0.5-0.9 s per GiB of waiting at the end. POSIX_FADV_DONTNEED
    starts writeback of the range without waiting for it, and drops those pages from the cache once
    clean (a blob is read again only when a worker fetches it). A no-op where the call is missing.
    """

    def __init__(self, handle: BinaryIO, every: int = defaults.WRITE_BEHIND_BYTES) -> None:
        self._handle = handle
        self._every = every
        self._written = 0
        self._started = 0
        self._advise = getattr(os, "posix_fadvise", None)

    def __call__(self, chunk: bytes | memoryview) -> None:
        self._handle.write(chunk)
        self._written += len(chunk)
        if self._advise is not None and self._written - self._started >= self._every:
            self._handle.flush()
            self._advise(self._handle.fileno(), self._started, self._written - self._started, os.POSIX_FADV_DONTNEED)
            self._started = self._written


class _ChunkThread:
    """Runs `consume(chunk)` for each fed chunk on a thread of its own, in order.

    The blob store runs two, hashing and writing, so that both overlap each other and the receiving
    of the next chunk (sha256 and file writes release the GIL). At most `depth` chunks wait (bounded
    memory); an error of `consume` surfaces at the next `feed` or at `finish`, and later chunks are
    dropped instead of consumed, as are those still waiting when the `with` block ends in an error.
    """

    def __init__(self, consume: Callable[[Any], object], name: str, depth: int = 4) -> None:
        self._consume = consume
        self._pending: queue.Queue[Any] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._dropping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._pending.get()) is not None:
            if self._error is None and not self._dropping:
                try:
                    self._consume(chunk)
                except BaseException as exc:  # noqa: BLE001 - handed to the feeding thread
                    self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def feed(self, chunk: bytes | memoryview) -> None:
        self._raise()
        self._pending.put(chunk)

    def finish(self) -> None:
        """Wait until every fed chunk is consumed; raise what `consume` met."""
        self._stop()
        self._raise()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._pending.put(None)
            self._thread.join()

    def __enter__(self) -> "_ChunkThread":
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._dropping = exc_type is not None
        self._stop()


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
