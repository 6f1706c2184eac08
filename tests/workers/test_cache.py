"""The worker's blob cache never hands out a file whose content no longer matches its name."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

import pytest

from workers.cache import BlobCache


class FakeService:
    """Stands in for ServiceConnection.fetch_blob: serves known blobs and counts downloads."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.fetches = 0

    def fetch_blob(self, sha256: str, dest: Path) -> None:
        self.fetches += 1
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(self.blobs[sha256])
        os.replace(tmp, dest)


@pytest.fixture()
def blob() -> tuple[str, bytes]:
    data = b"model weights " * 1000
    return hashlib.sha256(data).hexdigest(), data


def test_a_cached_blob_is_fetched_once_and_read_only(tmp_path: Path, blob: tuple[str, bytes]) -> None:
    sha, data = blob
    service = FakeService({sha: data})
    cache = BlobCache(tmp_path / "cache")
    first = cache.fetch(sha, service)  # type: ignore[arg-type]
    again = cache.fetch(sha, service)  # type: ignore[arg-type]
    assert first == again and first.read_bytes() == data
    assert service.fetches == 1
    assert stat.S_IMODE(first.stat().st_mode) == 0o444
    assert stat.S_IMODE(cache.root.stat().st_mode) & 0o077 == 0


def test_a_blob_corrupted_in_place_is_refetched_and_logged(
    tmp_path: Path, blob: tuple[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    sha, data = blob
    service = FakeService({sha: data})
    cache = BlobCache(tmp_path / "cache")
    path = cache.fetch(sha, service)  # type: ignore[arg-type]
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:  # what a hostile model with a write primitive did to another tenant's entry
        f.seek(100)
        f.write(b"EVIL")
    with caplog.at_level(logging.WARNING, logger="workers.cache"):
        again = cache.fetch(sha, service)  # type: ignore[arg-type]
    assert again.read_bytes() == data
    assert service.fetches == 2
    assert any("corrupt" in r.getMessage() and sha in r.getMessage() for r in caplog.records)
