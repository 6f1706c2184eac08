"""The worker's on-disk cache of model and dataset blobs, keyed by sha256.

Blobs are content-addressed, so a cached file never needs invalidation, but the cache is shared by
every tenant whose jobs this worker runs: a file changed on disk (by a hostile model that escaped its
box, a disk fault, an operator) must never be used as another tenant's model. So every reuse re-hashes
the file (sha256 streams at ~1 GB/s, far below a model's load time) and a mismatch is logged, deleted and
fetched again. The files are made read-only (0444) and the directory 0700; the sandboxed model process
cannot read the directory at all (workers/sandbox.py leaves it out of its Landlock rules) and gets its
model as an already-verified file descriptor.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from workers.connection import ServiceConnection

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "kernelscope" / "blobs"
HASH_CHUNK = 1 << 20

log = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class BlobCache:
    """Directory of blobs named by their sha256 (from KERNELSCOPE_WORKER_CACHE, else ~/.cache/kernelscope/blobs)."""

    def __init__(self, root: Path | None = None) -> None:
        env = os.environ.get("KERNELSCOPE_WORKER_CACHE")
        self.root = Path(root or env or DEFAULT_CACHE_DIR)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.root / sha256

    def fetch(self, sha256: str, connection: ServiceConnection) -> Path:
        """The blob's local path, verified against its hash; downloaded on first use or when the copy is bad."""
        dest = self.path(sha256)
        if dest.exists():
            actual = file_sha256(dest)
            if actual == sha256:
                return dest
            log.warning("cached blob %s is corrupt (its content hashes to %s): deleted, fetching it again", sha256, actual)
            dest.unlink(missing_ok=True)
        connection.fetch_blob(sha256, dest)  # verifies the hash of what arrives before it lands at dest
        os.chmod(dest, 0o444)
        return dest
