"""The upload fast path: lone-chunk messages arrive as memoryviews, every other encoding parses as before,
writes happen on their own thread, a full disk is refused cleanly, and malloc keeps MiB buffers on its heap."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from kernelscope.v1 import datasets_pb2, models_pb2, worker_pb2

import sdk
from kernelscope import chunks as wire_chunks
from service import uploads
from service.server import upload_methods
from tests.service.helpers import onnx_bytes, rpc_error, sha256, stored_files, upload_model

REQUEST_TYPES = (models_pb2.UploadModelRequest, datasets_pb2.UploadDatasetRequest, worker_pb2.WriteArtifactRequest)
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 1 << 20, (1 << 20) + 5])
@pytest.mark.parametrize("request_type", REQUEST_TYPES)
def test_a_lone_chunk_is_a_view_of_the_received_bytes(size: int, request_type: Any) -> None:
    payload = os.urandom(size)
    data = request_type(chunk=payload).SerializeToString()
    view = uploads.chunk_view(data)
    assert view is not None and bytes(view) == payload
    assert view.obj is data  # no copy
    assert wire_chunks.encode(payload) == data  # what the SDK sends is the same wire format


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x12",  # tag without a length
        b"\x12\x05abc",  # shorter than declared
        b"\x12\x02abc",  # longer than declared
        b"\x12" + b"\x80" * 11 + b"\x01",  # varint longer than 10 bytes
        models_pb2.UploadModelRequest(header=models_pb2.ModelHeader(name="h")).SerializeToString(),
        models_pb2.UploadModelRequest(chunk=b"ab").SerializeToString() * 2,  # two fields: parsed normally
        b"\x12\x01a\x0a\x00",  # chunk then header: the oneof's last field wins in protobuf
    ],
)
def test_anything_but_a_lone_chunk_takes_the_protobuf_path(data: bytes) -> None:
    assert uploads.chunk_view(data) is None


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.one_of(st.binary(max_size=64), st.lists(st.sampled_from([b"\x12", b"\x0a", b"\x00", b"\x80", b"\x01", b"\x05", b"ab"]), max_size=12).map(b"".join)))
def test_the_fast_deserializer_agrees_with_protobuf_on_any_bytes(data: bytes) -> None:
    deserialize = uploads.chunk_deserializer(models_pb2.UploadModelRequest)
    try:
        expected = models_pb2.UploadModelRequest.FromString(data)
    except DecodeError:
        with pytest.raises(DecodeError):
            deserialize(data)
        return
    got = deserialize(data)
    if isinstance(got, memoryview):
        assert expected.WhichOneof("payload") == "chunk" and expected.chunk == bytes(got)
    else:
        assert got == expected


def test_the_interceptor_covers_exactly_the_three_upload_methods() -> None:
    methods = upload_methods()
    assert methods == {
        "/kernelscope.v1.KernelScope/UploadModel": models_pb2.UploadModelRequest,
        "/kernelscope.v1.KernelScope/UploadDataset": datasets_pb2.UploadDatasetRequest,
        "/kernelscope.v1.Worker/WriteArtifact": worker_pb2.WriteArtifactRequest,
    }
    interceptor = uploads.ChunkViews(methods)
    plain = grpc.stream_unary_rpc_method_handler(lambda it, ctx: None, request_deserializer=models_pb2.UploadModelRequest.FromString)

    class Details:
        def __init__(self, method: str) -> None:
            self.method = method

    swapped = interceptor.intercept_service(lambda _: plain, Details("/kernelscope.v1.KernelScope/UploadModel"))
    assert isinstance(swapped.request_deserializer(wire_chunks.encode(b"xyz")), memoryview)
    other = interceptor.intercept_service(lambda _: plain, Details("/kernelscope.v1.KernelScope/GetModel"))
    assert other is plain
    assert interceptor.intercept_service(lambda _: None, Details("/kernelscope.v1.KernelScope/UploadModel")) is None


def test_sdk_uploads_reach_the_store_through_the_fast_path(kernelscope_server, monkeypatch) -> None:
    decoded: list[int] = []
    original = uploads.chunk_view

    def counting(data: bytes) -> memoryview | None:
        view = original(data)
        if view is not None:
            decoded.append(len(view))
        return view

    monkeypatch.setattr(uploads, "chunk_view", counting)
    data = onnx_bytes(padding=int(2.5 * wire_chunks.CHUNK_BYTES))
    with sdk.Client(kernelscope_server.address) as client:
        model = client.upload_model(data, format="onnx", input_spec={"shape": [3, 4, 8, 8]}, name="m")
        # the same bytes and header as protobuf-built messages (any other client) are the same record
        assert upload_model(kernelscope_server.stub(), data, name="m").id == model.id
    assert decoded[:3] == [wire_chunks.CHUNK_BYTES, wire_chunks.CHUNK_BYTES, len(data) - 2 * wire_chunks.CHUNK_BYTES]
    assert model.sha256 == sha256(data) and model.size_bytes == len(data)
    blobs = stored_files(kernelscope_server.config.data_dir)["blobs"]
    assert [b.read_bytes() == data for b in blobs] == [True]


def test_a_full_disk_mid_upload_is_storage_full_and_leaves_nothing(kernelscope_server, kernelscope_stub, monkeypatch) -> None:
    import service.blobstore as blobstore

    real_fdopen = os.fdopen

    class FillsUp:
        """A temp file that takes 1.5 MiB and then fails like a full disk (on the writer thread)."""

        def __init__(self, handle: Any) -> None:
            self.handle, self.written = handle, 0

        def write(self, chunk: Any) -> int:
            if self.written + len(chunk) > 1.5 * (1 << 20):
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(chunk)
            return self.handle.write(chunk)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

        def __enter__(self) -> "FillsUp":
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

    monkeypatch.setattr(blobstore.os, "fdopen", lambda fd, mode: FillsUp(real_fdopen(fd, mode)))
    data = onnx_bytes(padding=6 << 20)
    with rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "STORAGE_FULL", contains="full"):
        upload_model(kernelscope_stub, data)
    assert stored_files(kernelscope_server.config.data_dir) == {"blobs": [], "tmp": []}
    monkeypatch.setattr(blobstore.os, "fdopen", real_fdopen)
    assert upload_model(kernelscope_stub, data).size_bytes == len(data)  # the server carries on


def test_a_refused_multi_chunk_upload_stops_its_writer_and_leaves_nothing(kernelscope_server, kernelscope_stub) -> None:
    data = onnx_bytes(padding=3 << 20)
    with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "HASH_MISMATCH"):  # found after the last write
        upload_model(kernelscope_stub, data, digest=sha256(b"other bytes"))
    assert stored_files(kernelscope_server.config.data_dir) == {"blobs": [], "tmp": []}


# What glibc did with two 3 MiB buffers (below the tuned 4 MiB mmap threshold, above glibc's 128 KiB default)
# allocated and freed in a fresh process: its own bookkeeping, the same on every machine. The page faults this
# saves depend on the machine (transparent huge pages, start-up allocations): bench/allocator.py prints them.
_MALLOC_PROBE = """
import ctypes, json, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
from service import allocator
applied = allocator.tune_for_streaming() if sys.argv[1] == "tune" else {}
before = libc.mallinfo2()
a = b"x" * (3 << 20); b = b"y" * (3 << 20)
live = libc.mallinfo2()
del a, b
freed = libc.mallinfo2()
print(json.dumps({"applied": applied, "mmapped": live.hblkhd - before.hblkhd, "trimmed": live.arena - freed.arena}))
"""


def _malloc_after_churn(env: dict[str, str], tune: bool = True) -> dict[str, Any]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **env}
    argv = [sys.executable, "-c", _MALLOC_PROBE, "tune" if tune else "plain"]
    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                    reason="glibc >= 2.33 (mallopt, mallinfo2)")
def test_the_allocator_tuning_keeps_mib_buffers_on_the_heap_and_yields_to_the_environment() -> None:
    both = {"MALLOC_MMAP_THRESHOLD_": 4 << 20, "MALLOC_TRIM_THRESHOLD_": 8 << 20}
    assert _malloc_after_churn({}, tune=False)["mmapped"] >= 6 << 20  # glibc's default: each buffer its own mmap
    tuned = _malloc_after_churn({})
    assert tuned == {"applied": both, "mmapped": 0, "trimmed": 0}  # on the heap, and still mapped once freed
    operator_mmap = _malloc_after_churn({"MALLOC_MMAP_THRESHOLD_": str(128 << 10)})
    assert operator_mmap["applied"] == {"MALLOC_TRIM_THRESHOLD_": 8 << 20}
    assert operator_mmap["mmapped"] >= 6 << 20  # the operator's threshold was kept
    operator_trim = _malloc_after_churn({"MALLOC_TRIM_THRESHOLD_": str(128 << 10)})
    assert operator_trim["applied"] == {"MALLOC_MMAP_THRESHOLD_": 4 << 20}
    assert operator_trim["mmapped"] == 0 and operator_trim["trimmed"] >= 6 << 20  # and so was theirs


def test_a_chunk_thread_consumes_in_order_and_reports_a_failed_write() -> None:
    from service.blobstore import _ChunkThread

    consumed: list[bytes] = []

    def write(chunk: bytes) -> None:
        if chunk == b"bad":
            raise OSError(errno.EIO, "I/O error")
        consumed.append(chunk)

    with pytest.raises(OSError, match="I/O error"):
        with _ChunkThread(write, "test-writer", depth=2) as writer:
            writer.feed(b"a")
            writer.feed(b"bad")
            for _ in range(100):  # the error surfaces at a later feed, or at finish at the latest
                writer.feed(b"after")
            writer.finish()
    assert consumed == [b"a"] and not writer._thread.is_alive()

    with _ChunkThread(consumed.append, "test-writer", depth=2) as in_order:
        for i in range(50):
            in_order.feed(bytes([i]))
        in_order.finish()
    assert consumed[1:] == [bytes([i]) for i in range(50)]


def test_writes_are_pushed_to_disk_as_they_arrive_and_the_blob_is_intact(tmp_path, monkeypatch) -> None:
    from service import defaults
    from service.blobstore import BlobStore

    started: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        assert os.fstat(fd).st_size >= offset + length  # only bytes already handed to the kernel
        started.append((offset, length))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    step = defaults.WRITE_BEHIND_BYTES
    data = os.urandom(2 * step + 3 * (1 << 20))
    store = BlobStore(tmp_path)
    with store.stage(wire_chunks.pieces(data), limit=len(data), expected_sha256=sha256(data)) as staged:
        assert staged.path.read_bytes() == data
        store.commit(staged)
    assert started == [(0, step), (step, step)]
    assert store.path(sha256(data)).read_bytes() == data
