"""Hand-encoded upload chunks: byte-for-byte the protobuf encoding, sent by the gRPC transport only to stubs that
take them."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import grpc
import pytest
from kernelscope.v1 import datasets_pb2, models_pb2, worker_pb2

import sdk
from kernelscope import chunks
from sdk.transport import GrpcTransport, KernelScopeStub

REQUEST_TYPES = (models_pb2.UploadModelRequest, datasets_pb2.UploadDatasetRequest, worker_pb2.WriteArtifactRequest)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 16384, 2_097_151, 2_097_152])
@pytest.mark.parametrize("request_type", REQUEST_TYPES)
def test_encode_is_the_protobuf_encoding_of_a_chunk_message(size: int, request_type: Any) -> None:
    piece = os.urandom(size)
    expected = request_type(chunk=piece).SerializeToString()
    assert chunks.encode(piece) == expected
    assert chunks.encode(memoryview(b"pad" + piece)[3:]) == expected
    assert request_type.FromString(chunks.encode(piece)).chunk == piece


def test_serialize_passes_encoded_chunks_and_serializes_messages() -> None:
    header = models_pb2.UploadModelRequest(header=models_pb2.ModelHeader(name="m", size_bytes=3))
    assert chunks.serialize(header) == header.SerializeToString()
    encoded = chunks.encode(b"abc")
    assert chunks.serialize(encoded) is encoded


def test_pieces_are_views_that_cover_the_bytes_once(tmp_path) -> None:
    data = os.urandom(2 * chunks.CHUNK_BYTES + 7)
    views = list(chunks.pieces(data))
    assert [len(v) for v in views] == [chunks.CHUNK_BYTES, chunks.CHUNK_BYTES, 7]
    assert all(v.obj is data for v in views) and b"".join(views) == data
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert b"".join(chunks.read_pieces(path)) == data
    assert list(chunks.pieces(b"")) == []


class RecordingStub:
    """In place of GrpcTransport's stub: records each call; GetModel knows no such bytes (an empty record),
    UploadModel answers a new record."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def rpc(request: Any, **kwargs: Any) -> Any:
            self.calls.append((name, request, kwargs))
            return models_pb2.Model(id="new") if name == "UploadModel" else models_pb2.Model()

        return rpc


def _uploaded_requests(stub: RecordingStub, data: bytes) -> list[Any]:
    """The requests the gRPC transport streams for `data` (the service does not know the bytes yet)."""
    transport = GrpcTransport("127.0.0.1:1")
    transport.stub = stub
    with sdk.Client(transport=transport, retry_seconds=5) as client:
        assert client.upload_model(data, format="onnx").id == "new"
    name, requests, _ = stub.calls[-1]
    assert name == "UploadModel"
    return list(requests)


def test_the_transport_sends_encoded_chunks_only_to_a_stub_that_takes_them() -> None:
    data = b"\x08\x07" + os.urandom(chunks.CHUNK_BYTES + 10)

    class Plain(RecordingStub):
        pass

    class Encoding(RecordingStub):
        takes_encoded_chunks = True

    plain = _uploaded_requests(Plain(), data)
    encoded = _uploaded_requests(Encoding(), data)
    assert plain[0] == encoded[0] and plain[0].header.sha256 == hashlib.sha256(data).hexdigest()
    assert all(isinstance(r, models_pb2.UploadModelRequest) for r in plain[1:])
    assert all(isinstance(r, bytes) for r in encoded[1:])
    assert [r.SerializeToString() for r in plain[1:]] == encoded[1:]


def test_the_grpc_transport_stub_takes_encoded_chunks() -> None:
    channel = grpc.insecure_channel("127.0.0.1:1")
    try:
        stub = KernelScopeStub(channel)
        assert stub.takes_encoded_chunks and hasattr(stub, "GetModel") and hasattr(stub, "UploadDataset")
    finally:
        channel.close()


def test_the_upload_bar_counts_each_piece_once_handed_on_and_restarts_for_a_retry() -> None:
    from sdk.progress import UploadBar

    bar = UploadBar(10, "m.onnx", enabled=True)
    first = bar.track([b"abc", b"defgh", b"ij"])
    assert next(first) == b"abc" and bar._bar.n == 0  # not counted until gRPC asks for the next piece
    assert next(first) == b"defgh" and bar._bar.n == 3
    assert list(bar.track([b"abc", b"defgh", b"ij"])) == [b"abc", b"defgh", b"ij"]  # a retry starts over
    assert bar._bar.n == 10
    bar.close()
    assert list(UploadBar(10, "quiet", enabled=False).track([b"abc"])) == [b"abc"]


def test_upload_progress_reaches_the_whole_size_through_a_real_server(kernelscope_server, capsys) -> None:
    from tests.service.helpers import onnx_bytes

    data = onnx_bytes(padding=3 * chunks.CHUNK_BYTES)
    with sdk.Client(kernelscope_server.address) as client:
        model = client.upload_model(data, format="onnx", name="bar-test.onnx", progress=True)
        assert client.upload_model(data, format="onnx", name="bar-test.onnx", progress=True).id == model.id  # known: no bar
    err = capsys.readouterr().err
    assert err.count("upload bar-test.onnx") >= 1 and "100%" in err and "3.00M/3.00M" in err, err[-300:]
