"""Uploads through real gRPC: dedupe, limits, hashes, formats, dataset validation, and nothing partial left behind."""

from __future__ import annotations

import io
import threading
import time

import grpc
import numpy as np
import pytest
from kernelscope.v1 import datasets_pb2, models_pb2

from tests.service.helpers import (
    clips,
    dataset_messages,
    model_messages,
    npz_bytes,
    onnx_bytes,
    rpc_error,
    sha256,
    stored_files,
    upload_dataset,
    upload_model,
    zip_bytes,
)

CODE = grpc.StatusCode


def test_same_bytes_twice_is_one_model_stored_once(kernelscope_server, kernelscope_stub) -> None:
    data = onnx_bytes(padding=200_000)  # several chunks
    first = upload_model(kernelscope_stub, data, name="first")
    again = upload_model(kernelscope_stub, data, name="first")
    assert again == first and first.id.startswith("mdl_")
    assert first.size_bytes == len(data) and first.sha256 == sha256(data)
    files = stored_files(kernelscope_server.config.data_dir)
    assert len(files["blobs"]) == 1 and files["blobs"][0].read_bytes() == data
    assert files["blobs"][0].name == sha256(data) and files["blobs"][0].parent.name == sha256(data)[:2]
    assert files["tmp"] == []
    listed = kernelscope_stub.ListModels(models_pb2.ListModelsRequest())
    assert [m.id for m in listed.models] == [first.id]
    assert kernelscope_stub.GetModel(models_pb2.GetModelRequest(model_id=first.id)) == first


def test_other_metadata_over_the_same_bytes_is_another_record_never_ignored(kernelscope_server, kernelscope_stub) -> None:
    """A re-upload with another name, input spec or architecture takes effect as its own record over one blob;
    the earlier record (and what its jobs ran with) is unchanged, and the blob lives while any record uses it."""
    import sdk.client

    data = onnx_bytes(padding=10_000)
    plain = upload_model(kernelscope_stub, data, name="m")
    renamed = upload_model(kernelscope_stub, data, name="m2")
    shaped = upload_model(kernelscope_stub, data, name="m", input_shape=(3, 8, 16, 16))
    weights = upload_model(kernelscope_stub, data, name="m", architecture="c3d_small")
    records = [plain, renamed, shaped, weights]
    assert len({r.id for r in records}) == 4
    assert (renamed.name, list(shaped.input_spec.shape), weights.architecture) == ("m2", [3, 8, 16, 16], "c3d_small")
    assert kernelscope_stub.GetModel(models_pb2.GetModelRequest(model_id=plain.id)) == plain
    assert plain.name == "m" and list(plain.input_spec.shape) == [3, 4, 8, 8] and plain.architecture == ""
    # The SDK derives the same id from the header, so it can skip bytes already held with this exact metadata.
    header = next(model_messages(data, name="m2")).header
    assert sdk.client.model_id(header) == renamed.id
    files = stored_files(kernelscope_server.config.data_dir)
    assert len(files["blobs"]) == 1
    for record in records[:-1]:
        kernelscope_stub.DeleteModel(models_pb2.DeleteModelRequest(model_id=record.id))
    assert len(stored_files(kernelscope_server.config.data_dir)["blobs"]) == 1
    kernelscope_stub.DeleteModel(models_pb2.DeleteModelRequest(model_id=weights.id))
    assert stored_files(kernelscope_server.config.data_dir)["blobs"] == []


def test_hash_mismatch_is_refused_and_leaves_nothing(kernelscope_server, kernelscope_stub) -> None:
    data = onnx_bytes(padding=100_000)
    with rpc_error(CODE.INVALID_ARGUMENT, "HASH_MISMATCH", contains=sha256(data)):
        upload_model(kernelscope_stub, data, digest=sha256(b"something else"))
    assert stored_files(kernelscope_server.config.data_dir) == {"blobs": [], "tmp": []}
    assert not kernelscope_stub.ListModels(models_pb2.ListModelsRequest()).models


@pytest.mark.parametrize("sent_delta", [-10, +10])
def test_size_mismatch_is_refused_and_leaves_nothing(kernelscope_server, kernelscope_stub, sent_delta: int) -> None:
    data = onnx_bytes(padding=5000)
    with rpc_error(CODE.INVALID_ARGUMENT, "SIZE_MISMATCH"):
        upload_model(kernelscope_stub, data, size=len(data) - sent_delta)
    assert stored_files(kernelscope_server.config.data_dir) == {"blobs": [], "tmp": []}


def test_declared_size_over_the_limit_is_refused_at_once(start_server) -> None:
    server = start_server(max_upload_bytes=10_000)
    with rpc_error(CODE.RESOURCE_EXHAUSTED, "TOO_LARGE", contains="10000"):
        upload_model(server.stub(), onnx_bytes(padding=20_000))
    assert stored_files(server.config.data_dir) == {"blobs": [], "tmp": []}


def test_bytes_past_the_declared_size_are_refused_while_the_client_still_streams(kernelscope_server, kernelscope_stub) -> None:
    data = onnx_bytes(padding=1000)
    never = threading.Event()

    def endless():
        yield from model_messages(data)
        yield models_pb2.UploadModelRequest(chunk=b"extra bytes")
        never.wait(20)  # a client that would go on sending

    started = time.monotonic()
    with rpc_error(CODE.INVALID_ARGUMENT, "SIZE_MISMATCH"):
        kernelscope_stub.UploadModel(endless(), timeout=30)
    never.set()
    assert time.monotonic() - started < 10, "the server waited for the end of the stream before refusing"
    assert stored_files(kernelscope_server.config.data_dir) == {"blobs": [], "tmp": []}


def onnx_bundle_bytes() -> bytes:
    """An ONNX bundle as the SDK writes it: the .onnx first, then its data file."""
    from kernelscope import formats

    buffer = io.BytesIO()
    formats.onnx_bundle(buffer, "model.onnx", onnx_bytes(), {"model.onnx.data": bytes(64)})
    return buffer.getvalue()


@pytest.mark.parametrize(
    "declared, data, looks_like",
    [
        (models_pb2.ONNX, zip_bytes(), "zip archive"),
        (models_pb2.TORCH_EXPORT, onnx_bytes(), "ONNX"),
        (models_pb2.SAFETENSORS, b"\x80\x04\x95" + bytes(64), "pickle"),
        (models_pb2.SAFETENSORS, zip_bytes(), "zip archive"),
        (models_pb2.TORCH_EXPORT, onnx_bundle_bytes(), "ONNX model bundled with its external data"),
        (models_pb2.ONNX, zip_bytes(entry="model.onnx.data"), "zip archive"),  # a bundle starts with its .onnx
        (models_pb2.TORCHSCRIPT, b"just some text, not a model", "not recognisable"),
    ],
)
def test_a_clearly_wrong_format_is_refused(kernelscope_server, kernelscope_stub, declared, data, looks_like) -> None:
    with rpc_error(CODE.INVALID_ARGUMENT, "WRONG_FORMAT", contains=looks_like):
        upload_model(kernelscope_stub, data, declared)
    assert stored_files(kernelscope_server.config.data_dir) == {"blobs": [], "tmp": []}


def test_every_format_accepts_its_own_bytes(kernelscope_stub) -> None:
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    safetensors = len(header).to_bytes(8, "little") + header + bytes(4)
    for fmt, data in [
        (models_pb2.ONNX, onnx_bytes()),
        (models_pb2.TORCH_EXPORT, zip_bytes(b"pt2")),
        (models_pb2.TORCHSCRIPT, zip_bytes(b"ts")),
        (models_pb2.STATE_DICT, zip_bytes(b"sd")),
        (models_pb2.SAFETENSORS, safetensors),
        (models_pb2.ONNX, onnx_bundle_bytes()),  # an ONNX model with its external data files
        (models_pb2.STATE_DICT, b"\x80\x02}q\x00." + bytes(16)),  # a legacy torch.save pickle: the worker scans it
    ]:
        assert upload_model(kernelscope_stub, data, fmt).format == fmt
    with rpc_error(CODE.INVALID_ARGUMENT, "TRUNCATED", contains="complete file"):
        upload_model(kernelscope_stub, safetensors[:20], models_pb2.SAFETENSORS)  # the header is cut
    with rpc_error(CODE.INVALID_ARGUMENT, "TRUNCATED", contains="truncated ONNX"):
        upload_model(kernelscope_stub, onnx_bytes(padding=100)[:-10])  # the doc string is cut


def test_upload_without_header_or_format_is_refused(kernelscope_stub) -> None:
    data = onnx_bytes()
    with rpc_error(CODE.INVALID_ARGUMENT, "HEADER_REQUIRED", contains="first message"):
        kernelscope_stub.UploadModel(iter([models_pb2.UploadModelRequest(chunk=data)]), timeout=10)
    with rpc_error(CODE.INVALID_ARGUMENT, "FORMAT_REQUIRED", contains="ONNX"):
        upload_model(kernelscope_stub, data, models_pb2.MODEL_FORMAT_UNSPECIFIED)
    with rpc_error(CODE.INVALID_ARGUMENT, "BAD_SHA256"):
        upload_model(kernelscope_stub, data, digest="abc")


def test_delete_model_removes_record_and_blob(kernelscope_server, kernelscope_stub) -> None:
    model = upload_model(kernelscope_stub, onnx_bytes())
    kernelscope_stub.DeleteModel(models_pb2.DeleteModelRequest(model_id=model.id))
    with rpc_error(CODE.NOT_FOUND, "MODEL_NOT_FOUND", contains=model.id):
        kernelscope_stub.GetModel(models_pb2.GetModelRequest(model_id=model.id))
    assert stored_files(kernelscope_server.config.data_dir)["blobs"] == []


def test_list_models_pages_newest_first(kernelscope_stub) -> None:
    ids = [upload_model(kernelscope_stub, onnx_bytes(padding=i)).id for i in range(5)]
    seen, token = [], ""
    for _ in range(5):
        page = kernelscope_stub.ListModels(models_pb2.ListModelsRequest(page_size=2, page_token=token))
        seen += [m.id for m in page.models]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]


def test_a_valid_dataset_is_described(kernelscope_server, kernelscope_stub) -> None:
    arrays = clips(n_per_class=4, classes=3, shape=(3, 4, 8, 8))
    data = npz_bytes(**arrays)
    dataset = upload_dataset(kernelscope_stub, data)
    assert dataset.id == "ds_" + sha256(data)[:24]
    assert (dataset.num_samples, dataset.num_classes) == (12, 3)
    assert list(dataset.class_names) == ["class0", "class1", "class2"]
    assert list(dataset.sample_shape) == [3, 4, 8, 8]
    assert upload_dataset(kernelscope_stub, data).id == dataset.id
    assert kernelscope_stub.GetDataset(datasets_pb2.GetDatasetRequest(dataset_id=dataset.id)) == dataset
    files = stored_files(kernelscope_server.config.data_dir)
    assert len(files["blobs"]) == 1 and files["tmp"] == []


def _broken(name: str) -> dict[str, np.ndarray]:
    arrays = clips(n_per_class=3, classes=2)
    if name == "nan":
        arrays["x"][4, 0, 0, 0, 0] = np.nan
    elif name == "inf":
        arrays["x"][0, 1, 2, 3, 4] = np.inf
    elif name == "lengths":
        arrays["y"] = arrays["y"][:-1]
    elif name == "one class":
        arrays["y"][:] = 1
        arrays["class_names"] = np.array(["a", "b"])
    elif name == "names":
        arrays["class_names"] = np.array(["only one"])
    elif name == "float labels":
        arrays["y"] = arrays["y"].astype(np.float32)
    elif name == "int x":
        arrays["x"] = (arrays["x"] * 255).astype(np.uint8)
    elif name == "no y":
        del arrays["y"]
    elif name == "negative label":
        arrays["y"][0] = -1
    return arrays


@pytest.mark.parametrize(
    "broken, words",
    [
        ("nan", "NaN"),
        ("inf", "infinite"),
        ("lengths", "6 samples but y has 5"),
        ("one class", "at least 2 classes"),
        ("names", "class_names has 1 entries"),
        ("float labels", "y must be an integer"),
        ("int x", "x must be a float"),
        ("no y", "'x' and 'y'"),
        ("negative label", ">= 0"),
    ],
)
def test_a_broken_dataset_is_refused_with_a_clear_message(kernelscope_server, kernelscope_stub, broken, words) -> None:
    with rpc_error(CODE.INVALID_ARGUMENT, contains=words):
        upload_dataset(kernelscope_stub, npz_bytes(**_broken(broken)))
    assert stored_files(kernelscope_server.config.data_dir) == {"blobs": [], "tmp": []}


def test_datasets_that_need_pickle_or_are_no_npz_are_refused(kernelscope_stub) -> None:
    arrays = clips()
    arrays["class_names"] = np.array(["a", None], dtype=object)
    with rpc_error(CODE.INVALID_ARGUMENT, contains="Python objects"):
        upload_dataset(kernelscope_stub, npz_bytes(**arrays))
    with rpc_error(CODE.INVALID_ARGUMENT, "DATASET_UNREADABLE"):
        upload_dataset(kernelscope_stub, b"not a zip at all")


def test_dataset_limits(start_server) -> None:
    server = start_server(max_dataset_samples=5, max_dataset_bytes=200_000)
    stub = server.stub()
    with rpc_error(CODE.RESOURCE_EXHAUSTED, "TOO_MANY_SAMPLES", contains="limit of 5"):
        upload_dataset(stub, npz_bytes(**clips(n_per_class=3, classes=2)))
    # Compressed zeros: a small file whose arrays decode past the limit.
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.zeros((4, 3, 16, 32, 32), np.float32), y=np.array([0, 1, 0, 1]))
    assert len(buffer.getvalue()) < 200_000
    with rpc_error(CODE.RESOURCE_EXHAUSTED, "TOO_LARGE", contains="decode to"):
        upload_dataset(stub, buffer.getvalue())
    with rpc_error(CODE.RESOURCE_EXHAUSTED, "TOO_LARGE"):
        stub.UploadDataset(dataset_messages(b"x" * 10, size=300_000), timeout=10)
    assert stored_files(server.config.data_dir) == {"blobs": [], "tmp": []}


def test_an_upload_the_client_abandons_leaves_nothing(kernelscope_server, kernelscope_stub) -> None:
    data = onnx_bytes(padding=300_000)
    sent_some = threading.Event()
    never = threading.Event()

    def abandoned():
        messages = model_messages(data)
        yield next(messages)
        yield next(messages)
        sent_some.set()
        never.wait(20)

    future = kernelscope_stub.UploadModel.future(abandoned(), timeout=30)
    assert sent_some.wait(10)
    deadline = time.monotonic() + 10
    while not stored_files(kernelscope_server.config.data_dir)["tmp"] and time.monotonic() < deadline:
        time.sleep(0.01)  # the server is receiving into its temp file
    assert stored_files(kernelscope_server.config.data_dir)["tmp"]
    future.cancel()
    never.set()
    while stored_files(kernelscope_server.config.data_dir)["tmp"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stored_files(kernelscope_server.config.data_dir) == {"blobs": [], "tmp": []}
