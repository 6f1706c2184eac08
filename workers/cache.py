"""The worker's on-disk cache of model and dataset blobs, keyed by sha256.

Blobs are immutable (content-addressed), so a cached file never needs invalidation; a worker that
analyses the same model twice downloads it once.
"""

from __future__ import annotations

import os
from pathlib import Path

from workers.connection import ServiceConnection

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "kernelscope" / "blobs"


class BlobCache:
    """Directory of blobs named by their sha256 (from KERNELSCOPE_WORKER_CACHE, else ~/.cache/kernelscope/blobs)."""

    def __init__(self, root: Path | None = None) -> None:
        env = os.environ.get("KERNELSCOPE_WORKER_CACHE")
        self.root = Path(root or env or DEFAULT_CACHE_DIR)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.root / sha256

    def fetch(self, sha256: str, connection: ServiceConnection) -> Path:
        """The blob's local path, downloading it on first use."""
        dest = self.path(sha256)
        if not dest.exists():
            connection.fetch_blob(sha256, dest)
        return dest
