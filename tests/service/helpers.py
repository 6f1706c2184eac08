"""Small builders for service tests: model and dataset bytes, uploads, and status assertions."""

from __future__ import annotations

import contextlib
import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np
from kernelscope.v1 import datasets_pb2, models_pb2

from kernelscope.varint import encode as varint
from service.errors import REASON_METADATA_KEY

CHUNK = 64 * 1024


def onnx_bytes(padding: int = 0) -> bytes:
    """A protobuf that reads as an ONNX ModelProto: ir_version, producer_name, an empty graph, a doc string."""
    doc = b"x" * padding
    return (
        b"\x08\x08"  # ir_version = 8
        + b"\x12\x04test"  # producer_name = "test"
        + b"\x3a\x02\x0a\x00"  # graph { node {} }
        + b"\x32" + varint(len(doc)) + doc  # doc_string
    )


def zip_bytes(payload: bytes = b"weights", entry: str = "archive/data.pkl") -> bytes:
    """A zip archive, which is what torch.export, TorchScript and torch.save files are."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(entry, payload)
    return buffer.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def clips(n_per_class: int = 3, classes: int = 2, shape: tuple[int, ...] = (3, 4, 8, 8), seed: int = 0) -> dict[str, np.ndarray]:
    """x, y, class_names of a tiny labelled set (values in [0, 1])."""
    rng = np.random.default_rng(seed)
    n = n_per_class * classes
    return {
        "x": rng.random((n, *shape), dtype=np.float32),
        "y": np.repeat(np.arange(classes, dtype=np.int64), n_per_class),
        "class_names": np.array([f"class{i}" for i in range(classes)]),
    }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_messages(
    data: bytes,
    fmt: int = models_pb2.ONNX,
    *,
    size: int | None = None,
    digest: str | None = None,
    input_shape: tuple[int, ...] = (3, 4, 8, 8),
    architecture: str = "",
    name: str = "test-model",
) -> Iterator[models_pb2.UploadModelRequest]:
    header = models_pb2.ModelHeader(
        name=name,
        format=fmt,
        size_bytes=len(data) if size is None else size,
        sha256=sha256(data) if digest is None else digest,
        architecture=architecture,
    )
    header.input_spec.shape.extend(input_shape)
    yield models_pb2.UploadModelRequest(header=header)
    for start in range(0, len(data), CHUNK):
        yield models_pb2.UploadModelRequest(chunk=data[start : start + CHUNK])


def upload_model(stub: Any, data: bytes, fmt: int = models_pb2.ONNX, **kwargs: Any) -> models_pb2.Model:
    return stub.UploadModel(model_messages(data, fmt, **kwargs), timeout=30)


def dataset_messages(data: bytes, *, size: int | None = None, digest: str | None = None) -> Iterator[datasets_pb2.UploadDatasetRequest]:
    header = datasets_pb2.DatasetHeader(
        name="test-set", size_bytes=len(data) if size is None else size, sha256=sha256(data) if digest is None else digest
    )
    yield datasets_pb2.UploadDatasetRequest(header=header)
    for start in range(0, len(data), CHUNK):
        yield datasets_pb2.UploadDatasetRequest(chunk=data[start : start + CHUNK])


def upload_dataset(stub: Any, data: bytes, **kwargs: Any) -> datasets_pb2.Dataset:
    return stub.UploadDataset(dataset_messages(data, **kwargs), timeout=30)


def reason(error: grpc.RpcError) -> str:
    return dict(error.trailing_metadata() or ()).get(REASON_METADATA_KEY, "")


@contextlib.contextmanager
def rpc_error(code: grpc.StatusCode, expected_reason: str | None = None, *, contains: str = "") -> Iterator[list[grpc.RpcError]]:
    """Assert the block raises an RpcError with `code` (and `expected_reason`, and `contains` in the details)."""
    caught: list[grpc.RpcError] = []
    try:
        yield caught
    except grpc.RpcError as error:
        caught.append(error)
        assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
        if expected_reason is not None:
            assert reason(error) == expected_reason, f"reason {reason(error)!r}: {error.details()}"
        assert contains in (error.details() or ""), error.details()
    else:
        raise AssertionError(f"expected {code}, but the call succeeded")


def stored_files(data_dir: Path) -> dict[str, list[Path]]:
    """What the blob store holds on disk: committed blobs and leftover temp files."""
    return {
        "blobs": sorted(p for p in (data_dir / "blobs").rglob("*") if p.is_file()),
        "tmp": sorted(p for p in (data_dir / "tmp").rglob("*") if p.is_file()),
    }


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds "authorization: Bearer <token>" to every call (what sdk.Client does)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def _details(self, details: Any) -> Any:
        metadata = [m for m in (details.metadata or ()) if m[0] != "authorization"]
        metadata.append(("authorization", f"Bearer {self.token}"))
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), requests)


def with_token(channel: grpc.Channel, token: str) -> grpc.Channel:
    """`channel` with every call carrying `token` as a bearer token."""
    return grpc.intercept_channel(channel, _BearerToken(token))


# Prometheus samples: (metric name, its labels) -> value.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metric_samples(text: bytes | str) -> Samples:
    """The samples of a Prometheus exposition text."""
    from prometheus_client.parser import text_string_to_metric_families

    text = text.decode() if isinstance(text, bytes) else text
    return {(s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(port: int, timeout: float = 10.0) -> Samples:
    """The samples a scrape of http://127.0.0.1:{port}/metrics returns."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
        return metric_samples(reply.read())
