"""Hostile input (hypothesis, bounded and derandomised): random, truncated and oversized upload streams, raw
bytes that are not protobufs, random CreateJob requests and artifact names full of separators and "..".

Whatever arrives, the server answers with a status (a kernelscope reason, BAD_MESSAGE for bytes that do
not parse, or gRPC's own refusal of an oversized message), never an INTERNAL; it stays SERVING; no temp
file is left; every stored blob is named by the sha256 of its bytes; and an accepted artifact name is a
clean relative path that cannot leave a directory it is joined to.
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
import time
from pathlib import Path
from typing import Any, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernelscope.v1 import common_pb2, datasets_pb2, jobs_pb2, models_pb2, tasks_pb2, worker_pb2, worker_pb2_grpc

from service.tasks import TASK_NAMES
from tests.service.helpers import (
    clips,
    dataset_messages,
    model_messages,
    npz_bytes,
    onnx_bytes,
    reason,
    rpc_error,
    sha256,
    upload_dataset,
    upload_model,
    zip_bytes,
)

CODE = grpc.StatusCode
LIMIT = 4096  # max_upload_bytes and max_artifact_bytes of the fuzzed server
DATASET_LIMIT = 16 * 1024  # its max_dataset_bytes
MESSAGE_LIMIT = 64 * 1024  # max_message_bytes: a bigger chunk is refused by gRPC itself
# gRPC's own refusal (no kernelscope reason): an oversized message. Unparsable bytes are ours: BAD_MESSAGE.
GRPC_REFUSALS = {(CODE.RESOURCE_EXHAUSTED, None)}
OUR_CODES = {CODE.INVALID_ARGUMENT, CODE.NOT_FOUND, CODE.RESOURCE_EXHAUSTED, CODE.FAILED_PRECONDITION}

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture
def server(start_server) -> Any:
    return start_server(
        max_upload_bytes=LIMIT,
        max_dataset_bytes=DATASET_LIMIT,
        max_artifact_bytes=LIMIT,
        max_message_bytes=MESSAGE_LIMIT,
        chunk_bytes=16 * 1024,
        max_jobs_in_flight=10_000,
    )


def outcome(call: Callable[[], Any]) -> str:
    """Run one hostile call; return "OK" or the status code's name, asserting it is an orderly refusal."""
    try:
        call()
        return "OK"
    except grpc.RpcError as error:
        ours = reason(error)
        if not ours:
            key = (error.code(), error.details() if error.code() == CODE.INTERNAL else None)
            assert key in GRPC_REFUSALS, f"unexpected {error.code()}: {error.details()}"
        else:
            assert ours != "INTERNAL" and error.code() in OUR_CODES, f"{error.code()} {ours}: {error.details()}"
        return error.code().name


def assert_store_clean(server: Any) -> None:
    data_dir: Path = server.config.data_dir
    # gRPC answers an unparsable message at once; the handler removes its temp file a moment later.
    deadline = time.monotonic() + 5
    while any((data_dir / "tmp").iterdir()):
        assert time.monotonic() < deadline, "an upload left a temp file"
        time.sleep(0.01)
    for blob in (data_dir / "blobs").rglob("*"):
        if blob.is_file():
            assert blob.parent.parent == data_dir / "blobs" and blob.parent.name == blob.name[:2]
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def assert_serving(server: Any) -> None:
    reply = health_pb2_grpc.HealthStub(server.channel()).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- strategies ------------------------------------------------------------------------------------

int32 = st.integers(-(2**31), 2**31 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
float32 = st.floats(width=32)
names = st.one_of(st.text(max_size=40), st.text(max_size=300), st.sampled_from(["../../etc/passwd", "a/b", "\x00", ""]))


@functools.cache
def _samples() -> tuple[bytes, ...]:
    """Built once: deterministic, and each draw of `payloads` picks from them."""
    valid_npz = npz_bytes(**clips(n_per_class=2, classes=2))
    broken_zip = bytearray(zip_bytes(b"p" * 200))
    broken_zip[40:60] = b"\xff" * 20
    return (onnx_bytes(), onnx_bytes(padding=LIMIT), zip_bytes(), valid_npz, bytes(broken_zip), b"", b"PK\x03\x04")


@st.composite
def payloads(draw: Any) -> bytes:
    """Known-good bytes, truncated or with garbage appended, or plain random bytes."""
    base = draw(st.sampled_from(_samples()))
    cut = draw(st.integers(0, len(base)))
    return draw(st.one_of(st.just(base), st.just(base[:cut]), st.binary(max_size=600).map(lambda tail: base[:cut] + tail)))


def chunked(data: bytes, draw: Any) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@st.composite
def input_specs(draw: Any) -> common_pb2.InputSpec:
    return common_pb2.InputSpec(
        shape=draw(st.lists(st.integers(-2, 2**40), max_size=6)),
        dtype=draw(st.one_of(st.sampled_from(["", "float32", "int8", "bfloat16"]), st.text(max_size=10))),
        value_min=draw(st.floats()),
        value_max=draw(st.floats()),
        mean=draw(st.lists(st.floats(), max_size=4)),
        std=draw(st.lists(st.floats(), max_size=4)),
    )


@st.composite
def upload_streams(draw: Any, header_type: str) -> tuple[list[Any], bytes]:
    """(messages, bytes) of an UploadModel or UploadDataset stream: random header, truncated or lying."""
    honest = draw(st.integers(0, 3)) == 0  # a quarter of the streams are valid uploads, to be accepted
    if honest and header_type == "model":
        data = onnx_bytes(padding=draw(st.integers(0, LIMIT - 64)))
    elif honest:
        data = npz_bytes(**clips(n_per_class=draw(st.integers(1, 3)), classes=2, shape=(1, 2, 2, 2), seed=draw(st.integers(0, 9))))
    else:
        data = draw(payloads())
    sizes = st.one_of(st.just(len(data)), st.integers(-5, 2**62), st.integers(0, 2 * DATASET_LIMIT))
    digests = st.one_of(st.just(sha256(data)), st.text(max_size=70), st.just(sha256(data[:-1])))
    size = len(data) if honest else draw(sizes)
    digest = sha256(data) if honest else draw(digests)
    if header_type == "model":
        header = models_pb2.ModelHeader(
            name=draw(names),
            format=models_pb2.ONNX if honest else draw(st.integers(-1, 9)),
            size_bytes=size,
            sha256=digest,
            input_spec=common_pb2.InputSpec(shape=[3, 4, 8, 8]) if honest else draw(input_specs()),
            architecture="" if honest else draw(names),
        )
        message = models_pb2.UploadModelRequest
    else:
        header = datasets_pb2.DatasetHeader(name=draw(names), size_bytes=size, sha256=digest)
        message = datasets_pb2.UploadDatasetRequest
    messages = [message(header=header)] + [message(chunk=c) for c in chunked(data, draw)]
    twist = "none" if honest else draw(st.sampled_from(["none", "none", "no header", "header again", "oversized chunk", "empty"]))
    if twist == "no header":
        messages = messages[1:]
    elif twist == "header again":
        messages.insert(draw(st.integers(1, len(messages))), message(header=header))
    elif twist == "oversized chunk":
        messages.append(message(chunk=b"\0" * (MESSAGE_LIMIT + 1)))
    elif twist == "empty":
        messages = []
    return messages, data


option_messages = st.one_of(
    st.builds(
        tasks_pb2.KernelVizOptions,
        layers=st.lists(names, max_size=3),
        channels=st.lists(int32, max_size=3),
        steps=int32,
        seed=int64,
        objective=st.integers(-3, 5),
        canvas=st.lists(int32, max_size=4),
        tv_weight=float32,
    ),
    st.builds(
        tasks_pb2.TConvStatsOptions,
        layers=st.lists(names, max_size=3),
        fit_conv3d=st.booleans(),
        residual_threshold=float32,
        restarts=int32,
        fit_steps=int32,
        seed=int64,
        identity_tolerance=float32,
    ),
    st.builds(
        tasks_pb2.ClassFiltersOptions,
        layer=names,
        k=int32,
        mass_coverage=float32,
        accuracy_retention=float32,
        ranking=names,
        mi_estimator=names,
        bootstrap=int32,
        seed=int64,
        fit_fraction=float32,
    ),
    st.just(tasks_pb2.DescribeOptions()),
    st.none(),
)


@st.composite
def tasks(draw: Any) -> tasks_pb2.Task:
    options = draw(option_messages)
    task = tasks_pb2.Task(name=draw(st.one_of(st.sampled_from(TASK_NAMES), names)))
    if options is not None:
        field = {
            tasks_pb2.KernelVizOptions: "kernel_viz",
            tasks_pb2.TConvStatsOptions: "tconv_stats",
            tasks_pb2.ClassFiltersOptions: "class_filters",
            tasks_pb2.DescribeOptions: "describe",
        }[type(options)]
        getattr(task, field).CopyFrom(options)
    return task


def _named(task: tasks_pb2.Task, name: str) -> tasks_pb2.Task:
    """`task`'s options when they belong to `name`, else none; named `name`."""
    out = tasks_pb2.Task(name=name)
    if task.WhichOneof("options") == name:
        getattr(out, name).CopyFrom(getattr(task, name))
    return out


# --- the tests -------------------------------------------------------------------------------------


def test_hostile_upload_streams_are_refused_in_order(server) -> None:
    stub = server.stub()
    channel = server.channel()
    raw = {
        "model": channel.stream_unary("/kernelscope.v1.KernelScope/UploadModel"),
        "dataset": channel.stream_unary("/kernelscope.v1.KernelScope/UploadDataset"),
    }
    seen: dict[str, int] = {}

    @FUZZ
    @given(kind=st.sampled_from(["model", "dataset"]), stream=st.data(), garbage=st.lists(st.binary(max_size=300), max_size=3))
    def upload(kind: str, stream: Any, garbage: list[bytes]) -> None:
        messages, data = stream.draw(upload_streams(kind))
        method = stub.UploadModel if kind == "model" else stub.UploadDataset
        result = outcome(lambda: method(iter(messages), timeout=20))
        seen[result] = seen.get(result, 0) + 1
        if result == "OK":
            assert len(data) <= (LIMIT if kind == "model" else DATASET_LIMIT)
        # The same stream again as raw bytes, with non-protobuf garbage spliced in.
        frames = [m.SerializeToString() for m in messages] + garbage
        outcome(lambda: raw[kind](iter(frames), timeout=20))
        assert_store_clean(server)

    upload()
    assert_serving(server)
    assert seen.get("OK") and seen.get("INVALID_ARGUMENT") and seen.get("RESOURCE_EXHAUSTED"), seen


def test_hostile_create_job_requests_are_refused_in_order(server) -> None:
    stub = server.stub()
    model = upload_model(stub, onnx_bytes(), input_shape=(3, 4, 8, 8))
    dataset = upload_dataset(stub, npz_bytes(**clips(n_per_class=1, classes=2)))
    raw = server.channel().unary_unary("/kernelscope.v1.KernelScope/CreateJob")
    ids = st.one_of(st.sampled_from([model.id, dataset.id, ""]), names, st.text(max_size=30).map(lambda t: "mdl_" + t))
    honest_tasks = st.lists(
        st.sampled_from(["tconv_stats", "kernel_viz", "describe"]).flatmap(
            lambda name: tasks().map(lambda t: _named(t, name))
        ),
        min_size=1,
        max_size=3,
    )
    requests = st.one_of(
        st.builds(  # valid requests with random options (the worker checks option values, not the service)
            jobs_pb2.CreateJobRequest, model_id=st.just(model.id), dataset_id=st.sampled_from(["", dataset.id]),
            tasks=honest_tasks, request_id=st.text(alphabet="abc123-", max_size=20),
        ),
        st.builds(
            jobs_pb2.CreateJobRequest, model_id=ids, dataset_id=st.one_of(st.just(""), st.just(dataset.id), ids),
            tasks=st.lists(tasks(), max_size=40), request_id=st.one_of(st.just(""), st.text(max_size=200)),
        ),
    )
    seen: dict[str, int] = {}

    @FUZZ
    @given(request=requests, garbage=st.binary(max_size=200))
    def create(request: jobs_pb2.CreateJobRequest, garbage: bytes) -> None:
        result = outcome(lambda: stub.CreateJob(request, timeout=20))
        seen[result] = seen.get(result, 0) + 1
        outcome(lambda: raw(request.SerializeToString() + garbage, timeout=20))
        outcome(lambda: raw(garbage, timeout=20))

    create()
    assert_serving(server)
    assert seen.get("OK") and seen.get("INVALID_ARGUMENT") and seen.get("NOT_FOUND"), seen
    for job in stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=1000), timeout=20).jobs:  # what was accepted is sane
        assert job.model_id == model.id and all(t.name in TASK_NAMES for t in job.tasks)


CORRUPT = b"\xff\xff\xff"  # a field tag whose varint never ends: DecodeError for every message type


@pytest.mark.parametrize(
    "method, shape",
    [
        ("/kernelscope.v1.KernelScope/GetModel", "unary_unary"),
        ("/kernelscope.v1.KernelScope/CreateJob", "unary_unary"),
        ("/kernelscope.v1.KernelScope/WatchJob", "unary_stream"),
        ("/kernelscope.v1.KernelScope/ReadArtifact", "unary_stream"),
        ("/kernelscope.v1.KernelScope/UploadModel", "stream_unary"),
        ("/kernelscope.v1.KernelScope/UploadDataset", "stream_unary"),
        ("/kernelscope.v1.Worker/FetchBlob", "unary_stream"),
        ("/kernelscope.v1.Worker/WriteArtifact", "stream_unary"),
    ],
)
def test_bytes_that_do_not_parse_are_bad_message_not_internal(server, method: str, shape: str) -> None:
    call = getattr(server.channel(), shape)(method)
    metadata = server.worker_metadata if method.startswith("/kernelscope.v1.Worker/") else ()
    if shape.startswith("stream"):
        attempts = [iter([CORRUPT])]  # where the header should be
        valid = {
            "UploadModel": model_messages(onnx_bytes()),
            "UploadDataset": dataset_messages(npz_bytes(**clips(n_per_class=1, classes=2, shape=(1, 2, 2, 2)))),
        }
        first = valid.get(method.rsplit("/", 1)[1])
        if first is not None:  # after a valid header, among the chunks
            attempts.append(iter([next(first).SerializeToString(), CORRUPT]))
    else:
        attempts = [CORRUPT]
    for request in attempts:
        with rpc_error(CODE.INVALID_ARGUMENT, "BAD_MESSAGE", contains=method):
            reply = call(request, timeout=10, metadata=metadata)
            if shape == "unary_stream":
                list(reply)
    assert_store_clean(server)
    assert_serving(server)


HOSTILE_NAMES = [
    "../escape.png", "a/../../b", "/etc/passwd", "a//b", "./a", "a/.", "..", "a\\..\\b", "C:\\x", "a/\x00/b",
    "k/" + "x" * 300, "", "%2e%2e/x", "\u2025/x", "task/ok.png",
]


def test_artifact_names_never_leave_the_store(server, tmp_path: Path) -> None:
    stub = server.stub()
    model = upload_model(stub, onnx_bytes())
    job = stub.CreateJob(jobs_pb2.CreateJobRequest(model_id=model.id, tasks=[tasks_pb2.Task(name="tconv_stats")]), timeout=10)
    worker = worker_pb2_grpc.WorkerStub(server.channel())
    outside = tmp_path / "outside"
    root = tmp_path / "downloads"
    accepted: list[str] = []

    @FUZZ
    @given(name=st.one_of(st.sampled_from(HOSTILE_NAMES), st.text(alphabet="ab./\\\x00:", max_size=12), st.text(max_size=20)))
    def write(name: str) -> None:
        data = name.encode("utf-8", "surrogatepass")[:LIMIT]
        header = worker_pb2.ArtifactHeader(job_id=job.id, name=name, size_bytes=len(data), sha256=sha256(data))
        messages = [worker_pb2.WriteArtifactRequest(header=header), worker_pb2.WriteArtifactRequest(chunk=data)]
        if outcome(lambda: worker.WriteArtifact(iter(messages), metadata=server.worker_metadata, timeout=10)) != "OK":
            return
        accepted.append(name)
        parts = name.split("/")
        assert posixpath.normpath(name) == name and not name.startswith("/") and ".." not in parts and "\\" not in name
        assert (root / name).resolve().is_relative_to(root.resolve())
        read = stub.ReadArtifact(jobs_pb2.ReadArtifactRequest(job_id=job.id, name=name), timeout=10)
        assert b"".join(c.data for c in read) == data
        assert_store_clean(server)

    write()
    assert_serving(server)
    assert "task/ok.png" in accepted and not outside.exists()
    assert not [n for n in accepted if n in HOSTILE_NAMES and n != "task/ok.png" and not n.startswith(("%2e", "\u2025"))]
    assert not any(p.name.startswith("..") for p in server.config.data_dir.rglob("*"))
